"""Loading models: model specs, torchvision and the demo CNN, weights I/O, the cache, the expected input, parameter groups and unfreezing cuts."""

from diagnose.models.adapters import (
    ADAPTER_CONFIG,
    LORA_EXTRA,
    adapter_dir_for,
    apply_lora,
    bias_and_norm,
    import_peft,
    is_adapter_dir,
    lora_targets,
    peft_available,
    plain_pointwise_convs,
    save_adapter,
    saved_targets,
)
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
from diagnose.models.memory_layout import Layout, choose_layout, forget_layouts
from diagnose.models.new_head import BODY, NEW_HEAD, NewHead, unprefixed, with_new_head
from diagnose.models.peft_view import (
    base_model_of,
    effective_parameters,
    is_lora_parameter,
    is_original_copy,
    merged_state_dict,
)
from diagnose.models.timm_zoo import load_timm, timm_cached_file
from diagnose.models.torchvision_zoo import load_torchvision, torchvision_weights_path
from diagnose.models.weights_io import extract_state_dict, load_state_dict_checked, torch_load

__all__ = [
    "ADAPTER_CONFIG",
    "adapter_dir_for",
    "apply_lora",
    "apply_weights",
    "base_model_of",
    "BATCH_SIZE",
    "bias_and_norm",
    "BODY",
    "cache_file",
    "choose_layout",
    "cut_description",
    "demo_model",
    "demo_model_info",
    "DemoCNN",
    "describe_model",
    "effective_parameters",
    "EPOCHS",
    "expected_size_hint",
    "extract_state_dict",
    "find_head",
    "forget_layouts",
    "HEAD",
    "import_peft",
    "is_adapter_dir",
    "is_lora_parameter",
    "is_original_copy",
    "Layout",
    "load_model",
    "load_or_pretrain",
    "load_state_dict_checked",
    "load_timm",
    "load_torchvision",
    "load_weights",
    "LoadedModel",
    "LORA_EXTRA",
    "lora_targets",
    "LR",
    "MAX_SHIFT",
    "merged_state_dict",
    "module_groups",
    "network_units",
    "NEW_HEAD",
    "NewHead",
    "parameter_groups",
    "peft_available",
    "plain_pointwise_convs",
    "pretrain",
    "random_init_copy",
    "RECIPE_VERSION",
    "replace_module",
    "resolve_cache_dir",
    "resolve_preprocessing",
    "save_adapter",
    "saved_targets",
    "timm_cached_file",
    "torch_load",
    "torchvision_weights_path",
    "trainable_groups_at_depth",
    "trainable_modules",
    "unprefixed",
    "with_new_head",
]
