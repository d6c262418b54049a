"""Forgetting checks in your own fine-tuning loop: diagnose.ForgettingTracker.

Fine-tunes the demo CNN (pretrained on demo:digits) on demo:digits-relabel in
a plain PyTorch loop, with a new head (LR 0.05) and the backbone at LR 0.005, measures
what it forgets every few steps, and writes results.json and report.html.

python examples/track_own_loop.py [OUT_DIR]
"""

from __future__ import annotations

import sys

import torch
from torch import nn

import diagnose
from diagnose.models import replace_module


def run(out: str = "track-report", epochs: int = 2, every: int = 5, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    pretrained = diagnose.load_model("demo", progress=False)
    model = pretrained.model
    # Built before training: it keeps its own copy of the pretrained model and source images.
    tracker = diagnose.ForgettingTracker(
        pretrained, "demo:digits", n_images=64, max_forgetting=0.10, seed=seed
    )

    # The user's own data and loop: a new 10-class head on the target, SGD on everything.
    target = diagnose.load_domain("demo:digits-relabel")
    images = diagnose.preprocess(
        target.dataset,
        image_size=pretrained.input_size or target.native_size,
        mean=pretrained.mean,
        std=pretrained.std,
    )
    x = torch.stack([images[i][0] for i in range(len(images))])
    y = torch.as_tensor([images[i][1] for i in range(len(images))])
    head = pretrained.head  # "head" on the demo CNN
    new_head = nn.Linear(model.get_submodule(head).in_features, 10)
    replace_module(model, head, new_head)
    backbone = [p for n, p in model.named_parameters() if not n.startswith(head + ".")]
    opt = torch.optim.SGD(
        [{"params": backbone, "lr": 0.005}, {"params": new_head.parameters(), "lr": 0.05}],
        momentum=0.9,
    )
    loss_fn = nn.CrossEntropyLoss()

    step = 0
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(x)).split(32):
            opt.zero_grad()
            loss_fn(model(x[batch]), y[batch]).backward()
            opt.step()
            step += 1
            if step % every == 0:
                m = tracker.measure(model, step=step)
                print(
                    f"step {step:3d}: agreement {m['agreement']:.3f}  "
                    f"source accuracy {m['source_accuracy']:.3f}"
                )
    results_path, report_path = tracker.save(out)
    print(
        f"budget exceeded: {tracker.exceeded} (first at step {tracker.exceeded_at})\n"
        f"{results_path}\n{report_path}"
    )
    return tracker.to_dict()


if __name__ == "__main__":
    run(sys.argv[1] if len(sys.argv) > 1 else "track-report")
