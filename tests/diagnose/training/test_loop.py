"""The Fitter against SGD transcribed from its definition, and the fused-kernel choice."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from diagnose.training.loop import Fitter, fused_sgd_supported, iterate_batches
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


def test_the_fused_kernel_is_used_where_torch_supports_it():
    head = nn.Linear(4, 2)
    assert fused_sgd_supported(list(head.parameters()))
    fitter = Fitter(
        root=head,
        groups={"head": list(head.parameters())},
        stages=[Stage(trainable=("head",), lr={"head": 0.1})],
        total_steps=1,
        momentum=0.9,
        weight_decay={},
        device=CPU,
        use_autocast=False,
    )
    assert fitter.opt.defaults["fused"] is True
    assert not fused_sgd_supported([])
    assert not fused_sgd_supported([torch.zeros(2, dtype=torch.long)])
    assert not fused_sgd_supported([torch.zeros(2, device="meta")])
