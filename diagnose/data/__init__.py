"""Loading data: domains (demo, ImageFolder, user datasets), splits and subsamples, preprocessing, evaluation-image choice, image statistics and sample thumbnails."""

from diagnose.data.batches import same_shape_groups
from diagnose.data.demo_data import (
    DEMO_DOMAINS,
    NOISE_BLUR_SIGMA,
    NOISE_STD,
    SHIFT_SEED,
    SIZE,
    SPLIT_SEED,
    TensorImageDataset,
    demo_arrays,
)
from diagnose.data.domains import Domain, load_domain, undecodable_note
from diagnose.data.evalset import MAX_TENSOR_BYTES, materialize, materialize_readable, pick_eval
from diagnose.data.imagefolder import (
    GRAY_MODES,
    IMAGE_EXTENSIONS,
    ImageFolderDataset,
    ImageFolderScan,
    UndecodableImage,
    pil_to_tensor,
    scan_image_folder,
)
from diagnose.data.imagestats import ImageStats, RecordingDataset, drift_table, normalization_check
from diagnose.data.preprocessing import (
    Preprocessing,
    parse_normalize,
    prepared_dataset,
    preprocess,
    upscale_warnings,
)
from diagnose.data.samples import sample_thumbnails
from diagnose.data.splits import (
    check_two_classes,
    domain_info,
    drop_positions,
    restricted_splits,
    subsample,
)
from diagnose.data.userdata import callable_domain_fields, size_facts

__all__ = [
    "DEMO_DOMAINS",
    "Domain",
    "GRAY_MODES",
    "IMAGE_EXTENSIONS",
    "ImageFolderDataset",
    "ImageFolderScan",
    "ImageStats",
    "MAX_TENSOR_BYTES",
    "NOISE_BLUR_SIGMA",
    "NOISE_STD",
    "Preprocessing",
    "RecordingDataset",
    "SHIFT_SEED",
    "SIZE",
    "SPLIT_SEED",
    "TensorImageDataset",
    "UndecodableImage",
    "callable_domain_fields",
    "check_two_classes",
    "demo_arrays",
    "domain_info",
    "drift_table",
    "drop_positions",
    "load_domain",
    "materialize",
    "materialize_readable",
    "normalization_check",
    "parse_normalize",
    "pick_eval",
    "pil_to_tensor",
    "prepared_dataset",
    "preprocess",
    "restricted_splits",
    "same_shape_groups",
    "sample_thumbnails",
    "scan_image_folder",
    "size_facts",
    "subsample",
    "undecodable_note",
    "upscale_warnings",
]
