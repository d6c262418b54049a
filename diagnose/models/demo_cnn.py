"""The demo CNN and its pretraining recipe on ``demo:digits``.

``DemoCNN`` is a four-block convolutional network for 1 x 32 x 32 inputs in
[0, 1]. Its top-level children are the blocks a user would probe or unfreeze
(``block1`` .. ``block4``), a parameter-free ``pool`` and the linear ``head``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from diagnose.core import atomic_torch_save
from diagnose.models.cache import resolve_cache_dir

__all__ = [
    "BATCH_SIZE",
    "DemoCNN",
    "EPOCHS",
    "LR",
    "MAX_SHIFT",
    "RECIPE_VERSION",
    "cache_file",
    "load_or_pretrain",
    "pretrain",
]

# Bump when the architecture or the training recipe changes: it is part of the
# cache file name, so an old cached model is never loaded into a new recipe.
RECIPE_VERSION = 1
EPOCHS = 12
BATCH_SIZE = 64
LR = 3e-3
MAX_SHIFT = 3  # pixels of random translation, so features do not memorise positions


def _block(c_in: int, c_out: int, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class DemoCNN(nn.Module):
    """Four conv blocks (16, 32, 64, 128 channels), global average pool, linear head.

    Input: (N, 1, 32, 32) in [0, 1]. Output: (N, num_classes) logits.

    Example:
        >>> model = DemoCNN()
        >>> model(torch.zeros(2, 1, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.block1 = _block(in_channels, 16, pool=True)  # 32 -> 16
        self.block2 = _block(16, 32, pool=True)  # 16 -> 8
        self.block3 = _block(32, 64, pool=True)  # 8 -> 4
        self.block4 = _block(64, 128, pool=False)  # 4 -> 4
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block4(self.block3(self.block2(self.block1(x))))
        return self.head(self.pool(x))


def _random_shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels, filling with zeros (background)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    offsets = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=gen)
    rows = (offsets[:, 0:1] + torch.arange(h))[:, :, None]  # (n, h, 1)
    cols = (offsets[:, 1:2] + torch.arange(w))[:, None, :]  # (n, 1, w)
    batch = torch.arange(n)[:, None, None]
    # Advanced indexing puts the indexed dims first: (n, h, w, c) -> (n, c, h, w).
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


def _random_stroke_weight(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Thicken or thin the strokes of each image by a random fraction of one pixel.

    A blend towards a 3x3 dilation (a > 0) or erosion (a < 0), ``a`` uniform
    in [-1, 1]. Like handwriting pens, stroke weight says nothing about the
    digit, and this teaches the top layers to ignore it (early layers still
    see it: that is what ``demo:digits-relabel`` is built on).
    """
    a = torch.rand(x.shape[0], 1, 1, 1, generator=gen) * 2 - 1
    dilated = F.max_pool2d(x, 3, stride=1, padding=1)
    eroded = -F.max_pool2d(-x, 3, stride=1, padding=1)
    return torch.where(a > 0, x + a * (dilated - x), x - a * (eroded - x))


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(x), 256):
        logits = model(x[start : start + 256])
        correct += int((logits.argmax(1) == y[start : start + 256]).sum())
    return correct / max(len(x), 1)


def pretrain(
    seed: int = 0,
    *,
    epochs: int = EPOCHS,
    progress: bool = True,
    losses: list[float] | None = None,
) -> tuple[DemoCNN, dict]:
    """Train ``DemoCNN`` on the source half of the digits; return it and its metadata.

    Trains on the train+val split of ``demo:digits`` (``Domain.splits(seed)``)
    with Adam, random shifts and random stroke weight, and measures accuracy on its test split.
    Deterministic given ``seed``; the caller's global RNG state is restored.
    ``losses``, when given, receives the training loss of every batch.
    """
    from diagnose.data import load_domain

    domain = load_domain("demo:digits")
    splits = domain.splits(seed=seed)
    train_idx = np.concatenate([splits["train"], splits["val"]])
    images = domain.dataset.images
    labels = torch.from_numpy(domain.labels)
    x_train, y_train = images[train_idx], labels[train_idx]
    x_test, y_test = images[splits["test"]], labels[splits["test"]]

    start = time.perf_counter()
    model = _train(x_train, y_train, seed, epochs, progress, losses)
    seconds = time.perf_counter() - start
    accuracy = _accuracy(model, x_test, y_test)
    meta = {
        "seed": int(seed),
        "recipe_version": RECIPE_VERSION,
        "epochs": int(epochs),
        "n_train": int(len(x_train)),
        "n_test": int(len(x_test)),
        "source_test_accuracy": accuracy,
        "train_seconds": round(seconds, 3),
        "torch_version": str(torch.__version__),  # TorchVersion is not weights_only-safe
    }
    return model, meta


def _train(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    seed: int,
    epochs: int,
    progress: bool,
    losses: list[float] | None,
) -> DemoCNN:
    from tqdm.auto import tqdm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        model = DemoCNN()
        opt = torch.optim.Adam(model.parameters(), lr=LR)
        steps = epochs * ((len(x_train) + BATCH_SIZE - 1) // BATCH_SIZE)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=max(steps, 1))
        bar = tqdm(range(epochs), desc="pretraining demo CNN", disable=not progress, leave=False)
        for _ in bar:
            model.train()
            order = torch.randperm(len(x_train), generator=gen)
            for b in range(0, len(order), BATCH_SIZE):
                idx = order[b : b + BATCH_SIZE]
                xb = _random_stroke_weight(_random_shift(x_train[idx], MAX_SHIFT, gen), gen)
                loss = F.cross_entropy(model(xb), y_train[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                if losses is not None:
                    losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
    model.eval()
    return model


def cache_file(cache_dir: str | os.PathLike | None, seed: int) -> Path:
    """Path of the cached pretrained demo model for ``seed`` under the cache directory."""
    return resolve_cache_dir(cache_dir) / f"demo_cnn_recipe{RECIPE_VERSION}_seed{int(seed)}.pt"


def load_or_pretrain(
    cache_dir: str | os.PathLike | None = None, seed: int = 0, progress: bool = True
) -> tuple[DemoCNN, dict, list[str]]:
    """The pretrained demo CNN (eval mode), its metadata and notes; trains and caches on a miss.

    The metadata has the recipe's keys (``source_test_accuracy``,
    ``train_seconds``, ...) plus ``cache_path`` and ``from_cache``. A cache
    file that cannot be read or does not fit is retrained, with a note; a
    cache directory that cannot be written only costs a note.
    """
    path = cache_file(cache_dir, seed)
    notes: list[str] = []
    if path.exists():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            meta = dict(blob["meta"])
            if meta.get("recipe_version") != RECIPE_VERSION or meta.get("seed") != int(seed):
                raise ValueError("recipe version or seed differ")
            model = DemoCNN()
            model.load_state_dict(blob["state_dict"])
            model.eval()
            meta.update(cache_path=str(path), from_cache=True)
            return model, meta, notes
        except Exception as exc:  # any unreadable cache is rebuilt, never fatal
            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            notes.append(
                f"cached demo model {path} could not be used ({type(exc).__name__}: {reason}); "
                "retrained"
            )
    model, meta = pretrain(seed, progress=progress)
    try:
        atomic_torch_save({"state_dict": model.state_dict(), "meta": meta}, path)
    except OSError as exc:
        notes.append(f"could not write the demo model cache {path} ({exc}); it was not cached")
    meta = dict(meta, cache_path=str(path), from_cache=False)
    return model, meta, notes
