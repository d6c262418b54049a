"""Model-agnostic measurements for transfer learning.

``probes`` never imports ``diagnose``. Every function takes numpy arrays or
torch tensors (rows are examples) and validates its inputs.

Capture:          :func:`discover_layers`, :func:`resolve_layers`, :func:`capture`,
                  :class:`CapturedFeatures`, :class:`UnreadableExample`
Model outputs:    :func:`logits_of`
Linear probes:    :func:`linear_probe`, :class:`ProbeResult`
Similarity:       :func:`cka`, :class:`MinibatchCKA`
Domain gap:       :func:`domain_gap`, :class:`DomainGap`, :func:`mmd2`,
                  :func:`proxy_a_distance`, :func:`frechet_distance`
Transferability:  :func:`logme`, :func:`leep`, :func:`nce`, :func:`h_score`
"""

from probes._capture_data import UnreadableExample
from probes._forward import logits_of
from probes._layers import resolve_layers
from probes.capture import CapturedFeatures, capture, discover_layers
from probes.gap import DomainGap, domain_gap, frechet_distance, mmd2, proxy_a_distance
from probes.linear import ProbeResult, linear_probe
from probes.similarity import MinibatchCKA, cka
from probes.transfer import h_score, leep, logme, nce

__all__ = [
    "CapturedFeatures",
    "DomainGap",
    "MinibatchCKA",
    "ProbeResult",
    "UnreadableExample",
    "capture",
    "cka",
    "discover_layers",
    "domain_gap",
    "frechet_distance",
    "h_score",
    "leep",
    "linear_probe",
    "logits_of",
    "logme",
    "mmd2",
    "nce",
    "proxy_a_distance",
    "resolve_layers",
]
