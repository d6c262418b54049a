"""Training: strategies and their plans, the per-strategy run, the loop, activation caches, curves, cost, executors and seeds."""

from diagnose.training.activations import (
    DEFAULT_MAX_CACHE_BYTES,
    PrefixCache,
    build_prefix_cache,
    capture_head_inputs,
)
from diagnose.training.adapted import FROZEN_NORMS, select_trained
from diagnose.training.batches import iterate_batches, make_loader, steps_per_epoch
from diagnose.training.config import BN_MODES, TrainConfig, check_config
from diagnose.training.cost import (
    FLOP_FORMULAS,
    PeakMemory,
    count_train_step_flops,
    current_rss_bytes,
    trainable_params,
)
from diagnose.training.curves import BestState, detect_overfitting, finite_or_none
from diagnose.training.entry import build_entry
from diagnose.training.executor import (
    EXECUTORS,
    RAY_MISSING,
    Job,
    Outcome,
    RaySession,
    Unit,
    check_executor,
    execute,
    import_ray,
    pin_worker_threads,
    run_unit,
)
from diagnose.training.head_stages import HeadStages, cpu_state
from diagnose.training.loop import Fitter, Phase, evaluate, fused_sgd_supported
from diagnose.training.runner import TargetData, run_strategy
from diagnose.training.seeds import (
    AVERAGED,
    RUN_KEYS,
    finished,
    finished_units,
    read_previous,
    resumed_text,
    strategy_entries,
    strategy_entry,
)
from diagnose.training.strategies import ROUTES, Plan, Stage, plan
from diagnose.training.strategy_run import StrategyRun, planned_epochs

__all__ = [
    "AVERAGED",
    "BestState",
    "BN_MODES",
    "build_entry",
    "build_prefix_cache",
    "capture_head_inputs",
    "check_config",
    "check_executor",
    "count_train_step_flops",
    "cpu_state",
    "current_rss_bytes",
    "DEFAULT_MAX_CACHE_BYTES",
    "detect_overfitting",
    "evaluate",
    "execute",
    "EXECUTORS",
    "finished",
    "finished_units",
    "finite_or_none",
    "Fitter",
    "FLOP_FORMULAS",
    "FROZEN_NORMS",
    "fused_sgd_supported",
    "HeadStages",
    "import_ray",
    "iterate_batches",
    "Job",
    "make_loader",
    "Outcome",
    "PeakMemory",
    "Phase",
    "pin_worker_threads",
    "Plan",
    "plan",
    "planned_epochs",
    "PrefixCache",
    "RAY_MISSING",
    "RaySession",
    "read_previous",
    "resumed_text",
    "ROUTES",
    "RUN_KEYS",
    "run_strategy",
    "run_unit",
    "select_trained",
    "Stage",
    "steps_per_epoch",
    "strategy_entries",
    "strategy_entry",
    "StrategyRun",
    "TargetData",
    "trainable_params",
    "TrainConfig",
    "Unit",
]
