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
    "CapturedFeatures",
    "DEFAULT_L2_GRID",
    "DomainGap",
    "MMDResult",
    "MinibatchCKA",
    "ProbeResult",
    "ProxyADistance",
    "UnreadableExample",
    "capture",
    "cka",
    "coral",
    "discover_layers",
    "domain_gap",
    "frechet_distance",
    "free_device_memory",
    "gram_linear",
    "gram_rbf",
    "h_score",
    "hsic",
    "is_out_of_memory",
    "leep",
    "linear_probe",
    "logits_of",
    "logme",
    "mmd2",
    "nce",
    "parse_size",
    "proxy_a_distance",
    "resolve_layers",
    "fetch_items",
    "skipping_batches",
    "wilson_interval",
]
