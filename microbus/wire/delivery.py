"""Delivery times: when a message is due, carried in its ``opaqueData`` as ``x-microbus-deliver-at``.

SNS has no per-message delay and an SNS→SQS subscription passes none on (``DelaySeconds`` exists only on
SendMessage straight to a queue, and only up to 15 minutes), so the due time travels with the message
(ISO 8601, UTC) and the consumer holds a message that arrives early (see :mod:`microbus.consume.dispatch`).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from microbus.errors import DueTimeError, MessageValidationError
from microbus.wire.sanitize import log_repr

DELIVER_AT_KEY = "x-microbus-deliver-at"
MAX_DELAY = timedelta(days=365)
"""The longest delay accepted (a year); a due time further out is almost surely a unit mistake."""


def due_time(*, deliver_at: datetime | None, delay: timedelta | None, now: datetime) -> datetime | None:
    """The due time of a message from ``deliver_at`` or ``delay`` (at most one), or None for at once.

    Raises:
        MessageValidationError: both are given, ``deliver_at`` has no time zone, ``delay`` is negative, or the
            due time is more than :data:`MAX_DELAY` away.
    """
    if deliver_at is not None and delay is not None:
        raise MessageValidationError("Give deliver_at or delay, not both")
    if delay is not None:
        if delay < timedelta(0):
            raise MessageValidationError(f"delay must not be negative, got {delay}")
        deliver_at = now + delay
    if deliver_at is None:
        return None
    if deliver_at.tzinfo is None or deliver_at.utcoffset() is None:
        raise MessageValidationError("deliver_at needs a time zone (e.g. datetime.now(UTC) + timedelta(hours=2))")
    if deliver_at - now > MAX_DELAY:
        raise MessageValidationError(f"deliver_at {deliver_at.isoformat()} is more than {MAX_DELAY.days} days away")
    return deliver_at.astimezone(UTC)


def format_due(moment: datetime) -> str:
    """The wire form of a due time: ISO 8601 in UTC, to the millisecond."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")


def parse_due(value: Any) -> datetime:
    """Read a due time from the wire.

    Raises:
        DueTimeError: not an ISO 8601 time with a UTC offset.
    """
    if isinstance(value, str) and len(value) <= 64:
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            moment = None
        if moment is not None and moment.tzinfo is not None and moment.utcoffset() is not None:
            return moment
    raise DueTimeError(f"{DELIVER_AT_KEY} is not an ISO 8601 time with an offset: {log_repr(value, 80)}")
