"""diagnose.ForgettingCallback in a tiny Lightning fit, and audit of the .ckpt it saves.

Runs only with the optional extra (``pip install '.[lightning]'``); without it
every test here is skipped, with that reason.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from tiny_models import single_thread
from torch import nn

import diagnose
from diagnose.cli import main

pl = pytest.importorskip(
    "pytorch_lightning", reason="PyTorch Lightning is not installed (pip install '.[lightning]')"
)


class LitClassifier(pl.LightningModule):
    """The demo CNN under ``self.net`` with a new 10-class head, as a user's module would be."""

    def __init__(self, net: nn.Module, head: str, lr: float = 0.05):
        super().__init__()
        self.net = net
        diagnose.models.replace_module(
            self.net, head, nn.Linear(self.net.get_submodule(head).in_features, 10)
        )
        self.lr = lr

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self.net(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


class Recorder(pl.loggers.logger.Logger):
    """A logger that keeps what it is given."""

    def __init__(self):
        super().__init__()
        self.rows: list[tuple[int, dict]] = []

    name, version = "recorder", "0"

    def log_metrics(self, metrics, step=None):
        self.rows.append((step, dict(metrics)))

    def log_hyperparams(self, params, *args, **kwargs):
        pass


def _loaders(n: int = 96):
    torch.manual_seed(0)
    target = diagnose.load_domain("demo:digits-relabel")
    data = diagnose.preprocess(target.dataset, image_size=(8, 8))
    xs = torch.stack([data[i][0] for i in range(n)])
    ys = torch.as_tensor([data[i][1] for i in range(n)])
    ds = torch.utils.data.TensorDataset(xs, ys)
    return torch.utils.data.DataLoader(ds, batch_size=16), torch.utils.data.DataLoader(ds, 32)


def _fit(demo, tmp_path, budget=0.05, lr=0.05, wrap=None, **callback_kwargs):
    tracker = diagnose.ForgettingTracker(demo, "demo:digits", n_images=32, max_forgetting=budget)
    callback = diagnose.ForgettingCallback(tracker, **callback_kwargs)
    logger = Recorder()
    trainer = pl.Trainer(
        max_epochs=3,
        callbacks=[callback],
        logger=logger,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        num_sanity_val_steps=1,
    )
    lit = LitClassifier(copy.deepcopy(demo.model), demo.head, lr=lr)
    if wrap is not None:  # the user's own wrapping (peft), after the head is replaced
        lit.net = wrap(lit.net)
    train, val = _loaders()
    with single_thread():
        trainer.fit(lit, train, val)
    return tracker, trainer, logger


@pytest.fixture(scope="module")
def demo():
    return diagnose.load_model("demo", progress=False)


def test_callback_measures_every_n_steps_and_at_validation_and_logs(demo, tmp_path):
    tracker, trainer, logger = _fit(demo, tmp_path, every_n_steps=2, out_dir=tmp_path / "track")
    steps = [r["step"] for r in tracker.history]
    # 6 steps per epoch x 3 epochs: steps 2, 4, ..., 18; each validation epoch ends on a step
    # already measured (6, 12, 18), which is measured once; the sanity check is not measured.
    assert steps == list(range(2, 19, 2))
    logged = [(step, m) for step, m in logger.rows if "forgetting/agreement" in m]
    assert [s for s, _ in logged] == steps
    assert logged[-1][1]["forgetting/agreement"] == pytest.approx(tracker.history[-1]["agreement"])
    saved = json.loads((tmp_path / "track" / "results.json").read_text())
    assert saved["kind"] == "track" and len(saved["history"]) == len(steps)
    assert (tmp_path / "track" / "report.html").exists()


def test_stop_on_budget_stops_the_fit(demo, tmp_path):
    tracker, trainer, _ = _fit(demo, tmp_path, every_n_steps=1, stop_on_budget=True)
    assert tracker.exceeded  # LR 0.05 on every layer forgets well past 5% quickly
    assert trainer.global_step < 18  # stopped before the 3 epochs were done
    assert tracker.history[-1]["over_budget"]


def test_a_lightning_checkpoint_audits_as_a_state_dict(demo, tmp_path):
    _, trainer, _ = _fit(demo, tmp_path, on_validation=True)
    ckpt = tmp_path / "fine_tuned.ckpt"
    trainer.save_checkpoint(str(ckpt))
    out = tmp_path / "audit"
    code = main(
        ["audit", "--model", "demo", "--finetuned", str(ckpt), "--source", "demo:digits",
         "--out", str(out), "--quiet"]
    )  # fmt: skip
    assert code == 0
    data = json.loads((out / "results.json").read_text())
    assert data["kind"] == "audit"
    assert 0.0 <= data["agreement"] < 1.0  # three epochs on relabelled digits moved it


def test_a_diverging_fit_is_stopped_and_logged_without_a_budget(demo, tmp_path):
    """No forgetting budget at all: divergence alone is total forgetting and stops the fit."""
    tracker, trainer, logger = _fit(demo, tmp_path, budget=None, lr=1e4, every_n_steps=1,
                                    stop_on_budget=True)  # fmt: skip
    assert tracker.exceeded and tracker.history[-1]["diverged"]
    assert trainer.global_step < 18
    assert any(m.get("forgetting/diverged") == 1.0 for _, m in logger.rows)
    assert any("diverged" in w for w in tracker.to_dict()["warnings"])


def test_the_callback_tracks_a_peft_model_unchanged(demo, tmp_path):
    peft = pytest.importorskip("peft")

    def wrap(net):
        config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["block3.0", "block4.0"],
                                 modules_to_save=[demo.head])  # fmt: skip
        return peft.get_peft_model(net, config)

    tracker, _, logger = _fit(demo, tmp_path, budget=None, lr=0.02, wrap=wrap, every_n_steps=6)
    assert [r["step"] for r in tracker.history] == [6, 12, 18]
    # The base weights are frozen under LoRA: blocks without an adapter do not drift at all,
    # adapted ones do, through their merged update.
    last = tracker.history[-1]["drift"]
    assert last["block1"] == 0.0 and last["block2"] == 0.0
    assert last["block3"] > 0 and last["block4"] > 0
    assert any("forgetting/agreement" in m for _, m in logger.rows)
