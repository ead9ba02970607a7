"""Polling helpers: wait on a condition against a deadline instead of sleeping."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(condition: Callable[[], T], *, timeout_s: float = 30.0, interval_s: float = 0.05, what: str = "") -> T:
    """Poll ``condition`` until it returns something truthy, and return that.

    Raises:
        TimeoutError: the deadline passed first.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"Timed out after {timeout_s}s waiting for {what or condition!r}")
        time.sleep(interval_s)
