"""The base of the typed results: frozen dataclasses that read and write results.json's dicts.

Every section of results.json that more than one stage reads (a layer of the
assessment, a strategy's entry, the recommendation, an audit) is a frozen
dataclass built on :class:`Record`. Its ``to_dict()`` is what results.json
holds, and its ``from_dict()`` is the one place that defends against the
shape of a file written by another version, by hand or by an interrupted
run: a number that is missing, text, a bool, NaN or inf reads as None, a
section that is missing or null reads as None, and a key this version does
not know is kept in ``extra`` and written back unchanged. Readers then use
attributes (``entry.target.val_accuracy``) and test for None, nothing else.

``Record.from_dict(d).to_dict() == d`` for every dict the toolkit writes
(tested on real runs), so typing the results changes no file.

Example:
    >>> @dataclass(frozen=True)
    ... class Point(Record):
    ...     x: float | None = read_as(as_number)
    >>> Point.from_dict({"x": float("nan"), "note": "kept"}).to_dict()
    {'x': None, 'note': 'kept'}
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, TypeVar

import numpy as np

__all__ = [
    "Record",
    "json_form",
    "as_integer",
    "as_dict",
    "as_number",
    "as_number_map",
    "read_as",
    "as_record",
    "as_record_or_empty",
    "as_records",
    "as_tuple",
    "as_text",
    "as_bool",
    "as_is",
]

R = TypeVar("R", bound="Record")


def as_number(v: Any) -> float | int | None:
    """A finite int or float as it is (an int stays an int, so the JSON text is unchanged), else None."""
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        return None
    if isinstance(v, (int, np.integer)):
        return int(v)
    return float(v) if math.isfinite(v) else None


def as_integer(v: Any) -> int | None:
    """An integral number as an int (``3.0`` reads as 3), else None."""
    n = as_number(v)
    return int(n) if n is not None and float(n).is_integer() else None


def as_text(v: Any) -> str | None:
    """A string, else None."""
    return v if isinstance(v, str) else None


def as_bool(v: Any) -> bool | None:
    """A bool, else None."""
    return v if isinstance(v, bool) else None


def as_dict(v: Any) -> dict | None:
    """A dict (copied), else None."""
    return dict(v) if isinstance(v, Mapping) else None


def as_number_map(v: Any) -> dict[str, float | None] | None:
    """A dict of numbers by name (each read with :func:`as_number`), else None."""
    return {str(k): as_number(x) for k, x in v.items()} if isinstance(v, Mapping) else None


def as_tuple(v: Any) -> tuple | None:
    """A list as a tuple (its items as they are), else None."""
    return tuple(v) if isinstance(v, (list, tuple)) else None


def as_is(v: Any) -> Any:
    """Anything, as it is."""
    return v


def as_record(cls: type[R]) -> Callable[[Any], R | None]:
    """A reader of a nested record: ``cls.from_dict`` of a dict, else None."""
    return lambda v: cls.from_dict(v) if isinstance(v, Mapping) else None


def as_record_or_empty(cls: type[R]) -> Callable[[Any], R]:
    """A reader of a nested record that is always there: ``cls()`` (every field None) when
    the value is not a dict, so readers test the fields, never the section."""
    return lambda v: cls.from_dict(v) if isinstance(v, Mapping) else cls()


def as_records(cls: type[R]) -> Callable[[Any], tuple[R, ...] | None]:
    """A reader of a list of nested records (items that are not dicts are dropped)."""
    return lambda v: (
        tuple(cls.from_dict(x) for x in v if isinstance(x, Mapping))
        if isinstance(v, (list, tuple))
        else None
    )


def read_as(reader: Callable[[Any], Any], default: Any = None) -> Any:
    """A dataclass field read from results.json by ``reader`` (None when the key is absent)."""
    return field(default=default, metadata={"read": reader})


def json_form(v: Any) -> Any:
    """``v`` in its JSON form: records by ``to_dict()``, tuples as lists, recursively."""
    if isinstance(v, Record):
        return v.to_dict()
    if isinstance(v, (list, tuple)):
        return [json_form(x) for x in v]
    if isinstance(v, dict):
        return {k: json_form(x) for k, x in v.items()}
    return v


@dataclass(frozen=True)
class Record:
    """A typed section of results.json (subclasses declare fields with :func:`read_as`).

    ``extra`` holds the keys of the dict it was read from that the class does not
    declare, in their order; ``to_dict()`` writes them after the declared fields.
    A record read by ``from_dict`` writes back the declared keys its dict had (so
    a hand-written or older file round-trips exactly); one built directly writes
    the fields its :meth:`emits` allows.
    """

    extra: Mapping[str, Any] = field(default_factory=dict, kw_only=True, compare=False)
    present: frozenset[str] | None = field(default=None, kw_only=True, compare=False, repr=False)

    @classmethod
    def from_dict(cls: type[R], d: Any) -> R:
        """The record of dict ``d``; anything that is not a dict reads as an empty one."""
        d = d if isinstance(d, Mapping) else {}
        declared = [f for f in fields(cls) if f.name not in ("extra", "present")]
        names = {f.name for f in declared}
        kwargs = {f.name: f.metadata["read"](d[f.name]) for f in declared if f.name in d}
        return cls(
            **kwargs,
            extra={k: v for k, v in d.items() if k not in names},
            present=frozenset(kwargs),
        )

    def with_fields(self: R, **changes: Any) -> R:
        """A copy with ``changes`` set; a record read by ``from_dict`` then writes those
        fields too, as if its dict had held them."""
        present = None if self.present is None else self.present | frozenset(changes)
        return replace(self, **changes, present=present)

    def emits(self, name: str) -> bool:
        """Whether a record built directly writes field ``name`` (every field, unless a
        subclass says otherwise)."""
        return True

    def to_dict(self) -> dict:
        """The plain-JSON dict results.json holds."""
        keep = self.emits if self.present is None else self.present.__contains__
        out = {
            f.name: json_form(getattr(self, f.name))
            for f in fields(self)
            if f.name not in ("extra", "present") and keep(f.name)
        }
        out.update({k: v for k, v in self.extra.items() if k not in out})
        return out
