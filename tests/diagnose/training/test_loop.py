"""The Fitter against SGD transcribed from its definition, and the fused-kernel choice."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from diagnose.training.batches import iterate_batches
from diagnose.training.loop import Fitter, fused_sgd_supported
from diagnose.training.strategies import Stage

CPU = torch.device("cpu")


def _problem(n=70, d=6, classes=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return x, y % classes


def _transcribed(w, b, x, y, epochs, batch, lr, momentum, wd, seed):
    """SGD as PyTorch defines it (float64): g = grad + wd w; buf = g at the first step,
    else momentum buf + g; w -= lr_t buf, with lr_t = lr (1 + cos(pi t / T)) / 2 over the
    T steps of every epoch. Also each epoch's running loss and accuracy (pre-step logits)."""
    w, b = w.double().clone(), b.double().clone()
    x = x.double()
    n = len(y)
    steps_per_epoch = n // batch + (1 if n % batch > 1 else 0)
    total = epochs * steps_per_epoch
    gen = torch.Generator().manual_seed(seed)
    bufs, t, epochs_out = [None, None], 0, []
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        stop = n - 1 if n % batch == 1 else n
        loss_sum, correct, count = 0.0, 0, 0
        for start in range(0, stop, batch):
            idx = order[start : min(start + batch, stop)]
            xb, yb = x[idx], y[idx]
            logits = xb @ w.T + b
            p = torch.softmax(logits, dim=1)
            p[torch.arange(len(yb)), yb] -= 1.0
            grads = [p.T @ xb / len(yb), p.mean(0)]
            loss = -torch.log_softmax(logits, 1)[torch.arange(len(yb)), yb].mean()
            loss_sum += float(loss) * len(yb)
            correct += int((logits.argmax(1) == yb).sum())
            count += len(yb)
            lr_t = lr * 0.5 * (1.0 + math.cos(math.pi * t / total))
            for i, (param, g) in enumerate(zip((w, b), grads)):
                g = g + wd * param
                bufs[i] = g.clone() if bufs[i] is None else momentum * bufs[i] + g
                param -= lr_t * bufs[i]
            t += 1
        epochs_out.append((loss_sum / count, correct / count))
    return w, b, epochs_out


@pytest.mark.parametrize("n", [70, 65])  # 65 = 64 + 1: the final batch of one is dropped
def test_fitter_is_sgd_with_momentum_weight_decay_and_a_cosine_schedule(n):
    x, y = _problem(n)
    torch.manual_seed(0)
    head = nn.Linear(x.shape[1], 3)
    w0, b0 = head.weight.detach().clone(), head.bias.detach().clone()
    epochs, batch, lr, momentum, wd, seed = 4, 16, 0.3, 0.9, 1e-2, 5
    fitter = Fitter(
        root=head,
        groups={"head": list(head.parameters())},
        stages=[Stage(trainable=("head",), lr={"head": lr})],
        total_steps=epochs * (n // batch + (1 if n % batch > 1 else 0)),
        momentum=momentum,
        weight_decay={"head": wd},
        device=CPU,
        use_autocast=False,
    )
    gen = torch.Generator().manual_seed(seed)
    got = [
        fitter.run_epoch(iterate_batches((x, y), batch, gen), lambda b: (head(b[0]), b[1]), e)
        for e in range(1, epochs + 1)
    ]
    w, b, want = _transcribed(w0, b0, x, y, epochs, batch, lr, momentum, wd, seed)
    # float32 against float64 over ~20 steps of a well-conditioned problem: a few float32
    # ulps (1.2e-7) per step compound to well under 1e-5 relative.
    torch.testing.assert_close(head.weight.detach().double(), w, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(head.bias.detach().double(), b, rtol=1e-5, atol=1e-6)
    for res, (loss, acc) in zip(got, want):
        assert res["train_loss"] == pytest.approx(loss, rel=1e-5)
        assert res["train_accuracy"] == acc  # counts of the same argmaxes: exact
    assert got[-1]["steps"] == fitter.step == fitter.total


def _fitter(root, groups, stages, total, **kw):
    return Fitter(
        root=root,
        groups=groups,
        stages=stages,
        total_steps=total,
        momentum=0.9,
        weight_decay=dict.fromkeys(groups, 1e-2),
        device=CPU,
        use_autocast=False,
        **kw,
    )


def test_the_fused_kernel_is_used_only_where_it_is_safe():
    head = nn.Linear(4, 2)
    fitter = _fitter(head, {"head": list(head.parameters())}, [Stage(("head",), {"head": 0.1})], 1)
    assert fitter.opt.defaults["fused"] is True
    assert not fused_sgd_supported([])
    assert not fused_sgd_supported([torch.zeros(2, dtype=torch.long)])
    assert not fused_sgd_supported([torch.zeros(2, device="meta")])
    # The kernel walks memory flat: a strided view would be updated wrongly.
    assert not fused_sgd_supported([nn.Parameter(torch.zeros(4, 6)[:, ::2])])
    assert fused_sgd_supported([nn.Parameter(torch.zeros(2, 3, 4, 4)).to(memory_format=CL)])
    # The kernel refuses sparse gradients.
    emb = nn.Embedding(5, 3, sparse=True)
    assert not fused_sgd_supported(list(emb.parameters()), emb)
    assert fused_sgd_supported(list(emb.parameters()), nn.Embedding(5, 3))


CL = torch.channels_last


class _Two(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(6, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        return self.head(torch.relu(self.body(x)))


def test_fused_and_default_kernels_train_alike_through_stages_and_a_penalty(monkeypatch):
    """Head only, then everything (a group thawed mid-schedule), with L2-SP on the body."""
    import diagnose.training.loop as loop

    x, y = _problem(64)
    finals = []
    for fused in (True, False):
        monkeypatch.setattr(loop, "fused_sgd_supported", lambda *a, fused=fused: fused)
        torch.manual_seed(0)
        net = _Two()
        groups = {"body": list(net.body.parameters()), "head": list(net.head.parameters())}
        stages = [
            Stage(("head",), {"head": 0.2}, until_step_fraction=0.5),
            Stage(("body", "head"), {"body": 0.05, "head": 0.2}),
        ]
        w0 = [(p, p.detach().clone()) for p in groups["body"]]
        fitter = _fitter(net, groups, stages, 3 * 4, penalty=(0.5, w0))
        assert fitter.opt.defaults.get("fused", None) is (True if fused else None)
        gen = torch.Generator().manual_seed(1)
        for e in range(1, 4):
            fitter.run_epoch(iterate_batches((x, y), 16, gen), lambda b, n=net: (n(b[0]), b[1]), e)
        finals.append(torch.cat([p.detach().flatten() for p in net.parameters()]))
    # The same float32 arithmetic in another order: a few ulps per step over 12 steps.
    torch.testing.assert_close(finals[0], finals[1], rtol=1e-5, atol=1e-6)
