"""The assessment's measurements on a loaded model and data: per-layer probes and gaps, the LR range test, Auto-RGN and forgetting."""

from diagnose.measure.drift import WeightDrift, weight_drift
from diagnose.measure.forgetting import (
    MEASURE_SHARE,
    TOKEN_POOLS,
    ForgettingMeter,
    forgetting_interval,
    suggest_source_samples,
)
from diagnose.measure.layers import (
    CKA_BATCH,
    GAP_MAX_SAMPLES,
    RGN_IMAGES,
    TRANSFER_MAX_SAMPLES,
    control_cka,
    layer_measurements,
    safe,
    storage_summary,
    target_rgn,
    transferability,
)
from diagnose.measure.lr_find import (
    LR_TEST_MOMENTUM,
    MAX_SPREAD,
    MIN_DISTINCT_BATCHES,
    RANGE_REPEATS,
    LRFindResult,
    consensus_lr,
    lr_find_head,
    lr_range_test,
    suggest_lr,
)
from diagnose.measure.rgn import relative_gradient_norms

__all__ = [
    "CKA_BATCH",
    "consensus_lr",
    "control_cka",
    "forgetting_interval",
    "ForgettingMeter",
    "GAP_MAX_SAMPLES",
    "layer_measurements",
    "lr_find_head",
    "lr_range_test",
    "LR_TEST_MOMENTUM",
    "LRFindResult",
    "MAX_SPREAD",
    "MEASURE_SHARE",
    "MIN_DISTINCT_BATCHES",
    "RANGE_REPEATS",
    "relative_gradient_norms",
    "RGN_IMAGES",
    "safe",
    "storage_summary",
    "suggest_lr",
    "suggest_source_samples",
    "target_rgn",
    "TOKEN_POOLS",
    "TRANSFER_MAX_SAMPLES",
    "transferability",
    "weight_drift",
    "WeightDrift",
]
