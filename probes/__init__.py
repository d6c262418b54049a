"""Model-agnostic measurements for transfer learning.

``probes`` never imports ``diagnose``. Every function takes numpy arrays or
torch tensors (rows are examples) and validates its inputs.

Capture:          :func:`discover_layers`, :func:`resolve_layers`, :func:`capture`,
                  :class:`CapturedFeatures`, :class:`UnreadableExample`
                  :func:`parse_size`, :func:`skipping_batches` (a loader that skips
                  images which fail to decode), :func:`fetch_items` (a dataset's
                  batched fetch, where it has one)
Model outputs:    :func:`logits_of`
Devices:          :func:`is_out_of_memory`, :func:`free_device_memory`
Memory format:    :class:`PassLayout`, :class:`FormatChoice`, :class:`SwappedWeights`,
                  :func:`memory_format_applied`, :func:`in_format`, :func:`outputs_agree`,
                  :func:`forget_memory_formats`, :func:`time_memory_formats`,
                  :data:`MEMORY_FORMATS`
Linear probes:    :func:`linear_probe`, :class:`ProbeResult`, :func:`wilson_interval`,
                  :data:`DEFAULT_L2_GRID`
Similarity:       :func:`cka`, :class:`MinibatchCKA`, :func:`gram_linear`,
                  :func:`gram_rbf`, :func:`hsic`
Domain gap:       :func:`domain_gap`, :class:`DomainGap`, :func:`mmd2`, :class:`MMDResult`,
                  :func:`proxy_a_distance`, :class:`ProxyADistance`, :func:`frechet_distance`,
                  :func:`coral`
Transferability:  :func:`logme`, :func:`leep`, :func:`nce`, :func:`h_score`
"""

from probes._capture_data import UnreadableExample, fetch_items, skipping_batches
from probes._forward import free_device_memory, is_out_of_memory, logits_of
from probes._layers import resolve_layers
from probes._layout import FormatChoice, SwappedWeights, in_format, memory_format_applied
from probes._memory_format import (
    MEMORY_FORMATS,
    PassLayout,
    forget_memory_formats,
    outputs_agree,
    time_memory_formats,
)
from probes.capture import CapturedFeatures, capture, discover_layers, parse_size
from probes.gap import (
    DomainGap,
    MMDResult,
    ProxyADistance,
    coral,
    domain_gap,
    frechet_distance,
    mmd2,
    proxy_a_distance,
)
from probes.linear import DEFAULT_L2_GRID, ProbeResult, linear_probe, wilson_interval
from probes.similarity import MinibatchCKA, cka, gram_linear, gram_rbf, hsic
from probes.transfer import h_score, leep, logme, nce

__all__ = [
    "MEMORY_FORMATS",
    "CapturedFeatures",
    "DEFAULT_L2_GRID",
    "DomainGap",
    "FormatChoice",
    "MMDResult",
    "MinibatchCKA",
    "PassLayout",
    "ProbeResult",
    "ProxyADistance",
    "SwappedWeights",
    "UnreadableExample",
    "capture",
    "cka",
    "coral",
    "discover_layers",
    "domain_gap",
    "forget_memory_formats",
    "frechet_distance",
    "free_device_memory",
    "gram_linear",
    "gram_rbf",
    "h_score",
    "hsic",
    "in_format",
    "is_out_of_memory",
    "leep",
    "linear_probe",
    "logits_of",
    "logme",
    "memory_format_applied",
    "mmd2",
    "nce",
    "outputs_agree",
    "parse_size",
    "proxy_a_distance",
    "resolve_layers",
    "fetch_items",
    "skipping_batches",
    "time_memory_formats",
    "wilson_interval",
]
