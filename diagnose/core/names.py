"""The one display name per strategy, used by every report, plot and prose reason.

The machine names (``diagnose.training.strategies.STRATEGY_NAMES``) are what a user types
(``--strategies lp_ft,l2_sp``) and what results.json stores; these labels are what
a reader sees. Example::

    strategy_label("lp_ft")            # "LP-FT"
    strategy_label("lp_ft", typed=True)  # "LP-FT (lp_ft)"
    strategy_label("partial", start=True)  # "Partial fine-tuning"
    strategy_label("my_thing")         # "my_thing": an unknown name is shown as it is
"""

from __future__ import annotations

__all__ = [
    "STRATEGY_LABELS",
    "STRATEGY_NAMES",
    "join_labels",
    "strategy_label",
]

STRATEGY_LABELS: dict[str, str] = {
    "feature_extraction": "feature extraction",
    "partial": "partial fine-tuning",
    "full_low_lr": "full fine-tuning, low LR",
    "discriminative": "discriminative LRs",
    "gradual_unfreeze": "gradual unfreezing",
    "lp_ft": "LP-FT",
    "l2_sp": "L2-SP",
    "bitfit": "BitFit",
    "lora": "LoRA",
    "scratch": "from scratch",
}


def strategy_label(name, typed: bool = False, start: bool = False) -> str:
    """The display name of strategy ``name``; ``typed`` adds the machine name in brackets,
    ``start`` capitalises it to open a sentence ("Feature extraction reached ...").

    A name without a label (a hand-edited or future results file) is returned as
    text unchanged, and then gets no brackets nor capital: it is the machine name.
    """
    text = str(name) if name is not None else "?"
    base, _, depth = text.partition("@")
    if depth.isdigit() and base in STRATEGY_LABELS:  # a compare row "partial@2"
        label = f"{STRATEGY_LABELS[base]}, last {depth}"
        return f"{label} ({text})" if typed else label
    if depth[:1] == "r" and depth[1:].isdigit() and base in STRATEGY_LABELS:  # "lora@r8"
        label = f"{STRATEGY_LABELS[base]}, rank {depth[1:]}"
        return f"{label} ({text})" if typed else label
    label = STRATEGY_LABELS.get(text)
    if label is None:
        return text
    if start:
        label = label[0].upper() + label[1:]
    return f"{label} ({text})" if typed else label


def join_labels(items) -> str:
    """``items`` as one list in prose: ``", "`` between them, or ``"; "`` as soon as one
    holds a comma itself ("full fine-tuning, low LR"), so the list still reads as one."""
    items = [str(i) for i in items]
    return ("; " if any("," in i for i in items) else ", ").join(items)


STRATEGY_NAMES = (
    "feature_extraction",
    "partial",
    "full_low_lr",
    "discriminative",
    "gradual_unfreeze",
    "lp_ft",
    "l2_sp",
    "bitfit",
    "lora",
    "scratch",
)
