"""The assessment's measurements on a loaded model and data: per-layer probes and gaps, the LR range test, Auto-RGN and forgetting."""

from diagnose.measure.forgetting import (
    MEASURE_SHARE,
    TOKEN_POOLS,
    ForgettingMeter,
    WeightDrift,
    forgetting_interval,
    suggest_source_samples,
    weight_drift,
)
from diagnose.measure.layers import (
    CKA_BATCH,
    GAP_MAX_SAMPLES,
    LR_TEST_MOMENTUM,
    RGN_IMAGES,
    TRANSFER_MAX_SAMPLES,
    control_cka,
    layer_measurements,
    lr_find_head,
    safe,
    storage_summary,
    target_rgn,
    transferability,
)
from diagnose.measure.lr_find import LRFindResult, lr_range_test, suggest_lr
from diagnose.measure.rgn import relative_gradient_norms

__all__ = [
    "CKA_BATCH",
    "ForgettingMeter",
    "GAP_MAX_SAMPLES",
    "LRFindResult",
    "LR_TEST_MOMENTUM",
    "MEASURE_SHARE",
    "RGN_IMAGES",
    "TOKEN_POOLS",
    "TRANSFER_MAX_SAMPLES",
    "WeightDrift",
    "control_cka",
    "forgetting_interval",
    "layer_measurements",
    "lr_find_head",
    "lr_range_test",
    "relative_gradient_norms",
    "safe",
    "storage_summary",
    "suggest_lr",
    "suggest_source_samples",
    "target_rgn",
    "transferability",
    "weight_drift",
]
