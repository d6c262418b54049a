"""Auto-RGN per block: against a direct computation, normalisation and no side effects."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import Tiny, single_thread
from torch import nn

from diagnose.measure.rgn import relative_gradient_norms
from diagnose.models.groups import parameter_groups

BLOCKS = ["block1", "block2", "block3"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(40, 1, 8, 8, generator=g), torch.arange(40) % 3


def test_matches_a_direct_computation_and_leaves_the_model_alone():
    torch.manual_seed(0)
    model = Tiny(classes=4).eval()
    before = copy.deepcopy(model.state_dict())
    x, y = _data()
    rgn = relative_gradient_norms(
        model, head="head", blocks=BLOCKS, x=x, y=y, num_classes=3, batch_size=16
    )
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert max(rgn.values()) == pytest.approx(1.0) and min(rgn.values()) > 0

    # direct: same new head (seeded the same way), summed loss over the same batches
    net = copy.deepcopy(model).eval()
    gen = torch.Generator().manual_seed(0)
    head = nn.Linear(8, 3)
    with torch.no_grad():
        head.weight.copy_(torch.empty(3, 8).uniform_(-(8**-0.5), 8**-0.5, generator=gen))
        head.bias.zero_()
    net.head = head
    nn.functional.cross_entropy(net(x), y, reduction="sum").backward()
    params = dict(net.named_parameters())
    groups = parameter_groups(net, BLOCKS, "head")
    raw = {}
    for b in BLOCKS:  # zero-norm tensors (zero-initialised BN biases) have no relative norm
        ratios = [
            float(params[n].grad.norm() / params[n].detach().norm())
            for n in groups[b]
            if params[n].detach().norm() > 0
        ]
        raw[b] = sum(ratios) / len(ratios)
    top = max(raw.values())
    for b in BLOCKS:
        assert rgn[b] == pytest.approx(raw[b] / top, rel=1e-4)


def test_rejects_bad_input():
    model = Tiny()
    with pytest.raises(ValueError, match="non-empty"):
        relative_gradient_norms(
            model,
            head="head",
            blocks=BLOCKS,
            x=torch.zeros(0, 1, 8, 8),
            y=torch.zeros(0, dtype=torch.long),
            num_classes=2,
        )
    with pytest.raises(ValueError, match="not an nn.Linear"):
        relative_gradient_norms(
            model,
            head="pool",
            blocks=BLOCKS,
            x=torch.zeros(2, 1, 8, 8),
            y=torch.zeros(2, dtype=torch.long),
            num_classes=2,
        )


def test_channels_last_gives_the_same_values_and_bad_layouts_are_named():
    # The layouts differ by float rounding only: float32 gradient norms summed over 40
    # images agree to a few hundred ulps (rtol 1e-4 leaves room for other kernels).
    torch.manual_seed(0)
    model = Tiny(classes=4).eval()
    x, y = _data()
    kw = {"head": "head", "blocks": BLOCKS, "x": x, "y": y, "num_classes": 3}
    plain = relative_gradient_norms(model, **kw)
    last = relative_gradient_norms(model, memory_format="channels_last", **kw)
    assert last == pytest.approx(plain, rel=1e-4)
    assert all(p.is_contiguous() for p in model.parameters())  # the model is left alone
    with pytest.raises(ValueError, match="'memory_format' parameter of relative_gradient_norms"):
        relative_gradient_norms(model, memory_format="nhwc", **kw)
