"""Loading models: model specs, torchvision and the demo CNN, weights I/O, the cache, the expected input, parameter groups and unfreezing cuts."""

from diagnose.models.cache import resolve_cache_dir
from diagnose.models.cuts import (
    cut_description,
    network_units,
    trainable_groups_at_depth,
    trainable_modules,
)
from diagnose.models.demo_cnn import (
    BATCH_SIZE,
    EPOCHS,
    LR,
    MAX_SHIFT,
    RECIPE_VERSION,
    DemoCNN,
    cache_file,
    load_or_pretrain,
    pretrain,
)
from diagnose.models.expected_input import expected_size_hint, resolve_preprocessing
from diagnose.models.groups import HEAD, module_groups, parameter_groups
from diagnose.models.loaded import (
    LoadedModel,
    apply_weights,
    describe_model,
    find_head,
    load_weights,
    random_init_copy,
    replace_module,
)
from diagnose.models.loading import demo_model, demo_model_info, load_model
from diagnose.models.new_head import BODY, NEW_HEAD, NewHead, unprefixed, with_new_head
from diagnose.models.timm_zoo import load_timm, timm_cached_file
from diagnose.models.torchvision_zoo import load_torchvision, torchvision_weights_path
from diagnose.models.weights_io import extract_state_dict, load_state_dict_checked, torch_load

__all__ = [
    "BATCH_SIZE",
    "BODY",
    "DemoCNN",
    "EPOCHS",
    "HEAD",
    "LR",
    "LoadedModel",
    "MAX_SHIFT",
    "NEW_HEAD",
    "NewHead",
    "RECIPE_VERSION",
    "apply_weights",
    "cache_file",
    "cut_description",
    "demo_model",
    "demo_model_info",
    "describe_model",
    "expected_size_hint",
    "extract_state_dict",
    "find_head",
    "load_model",
    "load_or_pretrain",
    "load_state_dict_checked",
    "load_timm",
    "load_torchvision",
    "load_weights",
    "module_groups",
    "network_units",
    "parameter_groups",
    "pretrain",
    "random_init_copy",
    "replace_module",
    "resolve_cache_dir",
    "resolve_preprocessing",
    "timm_cached_file",
    "torch_load",
    "torchvision_weights_path",
    "trainable_groups_at_depth",
    "trainable_modules",
    "unprefixed",
    "with_new_head",
]
