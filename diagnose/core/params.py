"""Declared constraints of the public entry points' parameters: one table, three uses.

Each entry point (``assess``, ``compare``, ``audit``, ``demo``) declares its
scalar parameters once, as :class:`Param` rows of :data:`PARAMS`, in the spirit
of scikit-learn's ``validate_params``. From a row come:

- the API's check and its error, in one form (:class:`ParamError`):
  ``The 'batch_size' parameter of assess must be an int >= 1. Got 0.``;
- the CLI's argparse ``type=`` (the same check on the flag's text) and ``choices=``;
- the parameter's flag, so the CLI words an API error with the flag:
  ``--batch-size must be an int >= 1. Got 0.``

Parameters that are data or specs (a model, a folder, a strategy list) keep their
own checks and their own words; an error that names a public parameter in those
words is a :class:`UsageError` whose parts say which words are the parameter
(:class:`Arg`), so the CLI says ``--out DIR`` where the API says ``out=DIR``.

Example:
    >>> check_params("assess", batch_size=64, trial_budget=0.2)
    >>> PARAMS["batch_size"].rule
    'an int >= 1'
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any

__all__ = ["PARAMS", "Arg", "Param", "ParamError", "UsageError", "check_params"]


@dataclass(frozen=True)
class Param:
    """One public parameter: its type and range, and its CLI flag.

    Attributes:
        name: the Python parameter.
        kind: ``"int"``, ``"float"`` or ``"choice"``.
        low, high: the closed range (None: unbounded on that side).
        positive: the value must be above 0 (a float's open lower bound).
        choices: the allowed values of a ``"choice"``.
        optional: None is allowed (the parameter's "not given").
        meaning: a few words after the rule, for the error (``"(0 skips the race)"``).
    """

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    positive: bool = False
    choices: tuple[str, ...] = ()
    optional: bool = False
    meaning: str = ""

    @property
    def flag(self) -> str:
        """The CLI flag: ``batch_size`` -> ``--batch-size``."""
        return _flag(self.name)

    @property
    def rule(self) -> str:
        """What a value must be, as the error says it (``"an int >= 1"``)."""
        if self.kind == "choice":
            return "one of " + ", ".join(map(repr, self.choices))
        what = "an int" if self.kind == "int" else "a number"
        if self.low is not None and self.high is not None:
            return f"{what} in [{self.low:g}, {self.high:g}]"
        if self.positive:
            return f"{what} > 0"
        return f"{what} >= {self.low:g}" if self.low is not None else what

    def ok(self, value: Any) -> bool:
        """True when ``value`` is allowed."""
        if value is None:
            return self.optional
        if self.kind == "choice":
            return isinstance(value, str) and value in self.choices
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind == "int" and not float(value).is_integer():
            return False
        return (
            math.isfinite(value)
            and (self.low is None or value >= self.low)
            and (self.high is None or value <= self.high)
            and (not self.positive or value > 0)
        )

    def parse(self, text: str) -> int | float:
        """A number flag's text as a value (argparse's ``type=``; a choice's flag takes
        ``choices=`` instead), checked against the rule."""
        try:
            value: Any = int(text) if self.kind == "int" else float(text)
        except ValueError:
            value = None
        if value is None or not self.ok(value):
            raise argparse.ArgumentTypeError(f"must be {self.rule}, got {text!r}")
        return value


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class Arg:
    """A public parameter named in an error's words.

    Attributes:
        name: the Python parameter; its flag is ``--`` and the name with dashes.
        value: what to pass: ``Arg("out", "DIR")`` is ``out=DIR`` in the API and
            ``--out DIR`` on the CLI; ``True`` a switch (``trust_checkpoint=True``,
            ``--trust-checkpoint``); None the name alone (``'out'``, ``--out``).
        of: the entry point of a sentence's subject: ``The 'epochs' parameter of
            compare`` in the API, ``--epochs`` on the CLI.
    """

    name: str
    value: str | bool | None = None
    of: str | None = None

    def api(self) -> str:
        """The parameter in the Python API's words."""
        if self.of is not None:
            return f"The '{self.name}' parameter of {self.of}"
        return f"'{self.name}'" if self.value is None else f"{self.name}={self.value}"

    def cli(self) -> str:
        """The parameter in the CLI's words: its flag, and the value it takes."""
        if self.value is None or self.value is True:
            return _flag(self.name)
        return f"{_flag(self.name)} {self.value}"


class UsageError(ValueError):
    """A bad public parameter, in words that name it: text and :class:`Arg` parts.

    ``str(error)`` says it in the API's words; :meth:`in_flag_words` in the CLI's.

    Example:
        >>> e = UsageError("output directory x is a file; pass ", Arg("out", "DIR"), ".")
        >>> str(e), e.in_flag_words()
        ('output directory x is a file; pass out=DIR.', 'output directory x is a file; pass --out DIR.')
    """

    def __init__(self, *parts: str | Arg):
        self.parts = parts
        super().__init__("".join(p.api() if isinstance(p, Arg) else p for p in parts))

    def in_flag_words(self) -> str:
        """The error as the CLI says it, with flags for the parameters."""
        return "".join(p.cli() if isinstance(p, Arg) else p for p in self.parts)


class ParamError(UsageError):
    """A public parameter outside its declared range: names the parameter, the entry
    point, the rule and the value (``--batch-size must be an int >= 1. Got 0.`` on the
    CLI)."""

    def __init__(self, param: Param, where: str, value: Any):
        self.param, self.where, self.value = param, where, value
        meaning = f" {param.meaning}" if param.meaning else ""
        super().__init__(
            Arg(param.name, of=where), f" must be {param.rule}{meaning}. Got {value!r}."
        )

    def __reduce__(self):  # rebuilt from its own arguments in another process (Ray, spawn)
        return type(self), (self.param, self.where, self.value), self.__dict__


def _table(*rows: Param) -> dict[str, Param]:
    return {row.name: row for row in rows}


PARAMS: dict[str, Param] = _table(
    Param("batch_size", "int", low=1),
    Param("max_samples", "int", low=1, optional=True),
    Param("image_size", "int", low=1, optional=True),
    Param("seed", "int"),
    Param("pool", "choice", choices=("mean", "cls"), meaning="(token pooling)"),
    Param(
        "max_forgetting", "float", low=0, high=1, optional=True, meaning="(a source-accuracy drop)"
    ),  # fmt: skip
    Param(
        "trial_budget",
        "float",
        low=0,
        high=1,
        meaning="(a fraction of the full sweep's FLOPs; 0 skips the race)",
    ),  # fmt: skip
    Param("executor", "choice", choices=("local", "ray")),
    Param("epochs", "int", low=1),
    Param("lr", "float", positive=True, optional=True, meaning="(the head LR)"),
    Param("bn", "choice", choices=("frozen", "train")),
    Param("seeds", "int", low=1, meaning="(training runs per strategy)"),
    Param("lora_rank", "int", low=1),
    Param("lora_alpha", "float", positive=True),
    Param("threads", "int", low=1, optional=True),
)

# Which entry point takes which declared parameter.
_ENTRY_POINTS = {
    "assess": ("batch_size", "max_samples", "image_size", "seed", "pool", "max_forgetting",
               "trial_budget", "executor"),
    "compare": ("batch_size", "max_samples", "image_size", "seed", "pool", "max_forgetting",
                "executor", "epochs", "lr", "bn", "seeds", "lora_rank", "lora_alpha"),
    "audit": ("batch_size", "max_samples", "image_size", "seed", "pool"),
    "demo": ("seed", "epochs", "trial_budget"),
    "recommend": ("max_forgetting",),
    "select_strategy": ("max_forgetting",),
}  # fmt: skip


def check_params(where: str, **values: Any) -> None:
    """:class:`ParamError` for the first of ``values`` outside its declared rule.

    Args:
        where: the entry point (``"assess"``, ``"compare"``, ``"audit"``, ``"demo"``,
            ``"recommend"``).
        **values: the parameters to check, by name; each must be declared for ``where``.
    """
    for name, value in values.items():
        if name not in _ENTRY_POINTS[where]:
            raise KeyError(f"{where} declares no parameter {name!r}")
        param = PARAMS[name]
        if not param.ok(value):
            raise ParamError(param, where, value)
