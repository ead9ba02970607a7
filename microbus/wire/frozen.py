"""Frozen dataclass values built without their ``__init__``, for the per-message path."""

from __future__ import annotations

from typing import Any, TypeVar

T = TypeVar("T")

_new = object.__new__


def frozen_value(cls: type[T], /, **fields: Any) -> T:
    """``cls(**fields)`` for a frozen dataclass with a ``__dict__`` (no slots, no ``__post_init__``), every field
    given in field order: the same immutable value, its fields set straight into its ``__dict__``. A frozen
    dataclass's ``__init__`` sets each field through ``object.__setattr__``, 1–2 µs of every message."""
    value = _new(cls)
    value.__dict__.update(fields)
    return value
