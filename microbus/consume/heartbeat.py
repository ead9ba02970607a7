"""Visibility heartbeat: keep the messages a worker holds invisible while their handlers run.

A message received with the queue's visibility timeout ``V`` is extended (ChangeMessageVisibility,
batched by 10) to ``V`` from now whenever less than ``(1 - fraction) * V`` of its visibility is left,
that is every ``fraction * V`` seconds while it is held. Extension stops the moment the message is
untracked (its handler finished), when the heartbeat stops (the worker shuts down), or with the
process (the thread is a daemon thread: a killed daemon's messages reappear within ``V``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from microbus.errors import TransportError

if TYPE_CHECKING:
    from microbus.consume.consumer import SQSConsumer
    from microbus.consume.message import SQSMessage

logger = logging.getLogger(__name__)

SQS_MAX_HOLD_S = 43_200
_IDLE_WAIT_S = 1.0
_RETRY_WAIT_S = 1.0


@dataclass
class Lease:
    """One held message: when it was received and when it becomes visible again (monotonic seconds)."""

    receipt_handle: str
    message_id: str
    held_since: float
    visible_until: float


def due_for_extension(
    leases: Iterable[Lease], *, now: float, visibility_timeout_s: float, fraction: float
) -> list[Lease]:
    """The leases whose remaining visibility fell to ``(1 - fraction) * visibility_timeout_s`` or less."""
    threshold = visibility_timeout_s * (1.0 - fraction)
    return [lease for lease in leases if lease.visible_until - now <= threshold]


def seconds_until_due(
    leases: Iterable[Lease], *, now: float, visibility_timeout_s: float, fraction: float, idle_s: float = _IDLE_WAIT_S
) -> float:
    """How long the heartbeat may sleep before a lease is due (``idle_s`` when nothing is held)."""
    threshold = visibility_timeout_s * (1.0 - fraction)
    waits = [lease.visible_until - threshold - now for lease in leases]
    return max(0.0, min(waits, default=idle_s))


def extension_s(lease: Lease, *, now: float, visibility_timeout_s: int, max_hold_s: float = SQS_MAX_HOLD_S) -> int:
    """The visibility timeout to set now: ``visibility_timeout_s``, cut so the hold stays under ``max_hold_s``.

    Returns 0 or less when the message may not be held any longer.
    """
    return int(min(visibility_timeout_s, max_hold_s - (now - lease.held_since)))


class VisibilityHeartbeat:
    """Extends the visibility of tracked messages from a background thread.

    Parameters:
        consumer: changes visibility on the message's queue.
        visibility_timeout_seconds: the queue's visibility timeout; each extension sets it again.
        fraction: extend once this fraction of the timeout has passed (0 < fraction < 1; 0 disables).
        max_hold_s: never hold a message longer than this in total (SQS refuses more than 12 h).
    """

    def __init__(
        self,
        *,
        consumer: SQSConsumer,
        visibility_timeout_seconds: int,
        fraction: float = 0.5,
        max_hold_s: float = SQS_MAX_HOLD_S,
    ) -> None:
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"heartbeat fraction must be in [0, 1), got {fraction}")
        self.consumer = consumer
        self.visibility_timeout_seconds = visibility_timeout_seconds
        self.fraction = fraction
        self.max_hold_s = max_hold_s
        self.extensions = 0
        self._leases: dict[str, Lease] = {}
        self._sending: set[str] = set()
        self._cond = threading.Condition()
        self._stopped = False
        self._failing = False
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        """False when the fraction is 0 or the queue has no visibility timeout."""
        return self.fraction > 0 and self.visibility_timeout_seconds > 0

    def start(self) -> None:
        """Start the background thread (a no-op when disabled)."""
        if self.enabled:
            self._thread = threading.Thread(target=self._run, name="microbus-heartbeat", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop extending anything; held messages reappear when their visibility runs out."""
        with self._cond:
            self._stopped = True
            self._leases.clear()
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()

    def track(self, message: SQSMessage, *, received_at: float | None = None) -> None:
        """Start extending a message received at ``received_at`` (monotonic; default now)."""
        if not self.enabled:
            return
        now = time.monotonic() if received_at is None else received_at
        lease = Lease(message.receipt_handle, message.message_id, now, now + self.visibility_timeout_seconds)
        with self._cond:
            if not self._stopped:
                self._leases[lease.receipt_handle] = lease
                self._cond.notify_all()

    def untrack(self, message: SQSMessage) -> None:
        """Stop extending a message; waits for an extension of it that is on the wire, so it cannot land later."""
        with self._cond:
            self._leases.pop(message.receipt_handle, None)
            while message.receipt_handle in self._sending:
                self._cond.wait()

    @property
    def held(self) -> int:
        """How many messages are tracked."""
        with self._cond:
            return len(self._leases)

    def _run(self) -> None:
        while (due := self._wait_for_due()) is not None:
            self._extend(due)

    def _wait_for_due(self) -> list[Lease] | None:
        with self._cond:
            while not self._stopped:
                kwargs = {"visibility_timeout_s": self.visibility_timeout_seconds, "fraction": self.fraction}
                due = due_for_extension(self._leases.values(), now=time.monotonic(), **kwargs)
                if due:
                    self._sending = {lease.receipt_handle for lease in due}
                    return due
                self._cond.wait(seconds_until_due(self._leases.values(), now=time.monotonic(), **kwargs))
            return None

    def _extend(self, due: list[Lease]) -> None:
        now = time.monotonic()
        changes: dict[str, int] = {}
        expired: list[Lease] = []
        for lease in due:
            seconds = extension_s(lease, now=now, visibility_timeout_s=self.visibility_timeout_seconds)
            if seconds > 0:
                changes[lease.receipt_handle] = seconds
            else:
                expired.append(lease)
        failed: set[str] = set()
        error: TransportError | None = None
        try:
            if changes:
                failed = set(self.consumer.transport.change_visibility_batch(list(changes.items())))
        except TransportError as exc:
            error = exc
        self._settle(due, changes, failed, expired, now, error)

    def _settle(
        self,
        due: list[Lease],
        changes: dict[str, int],
        failed: set[str],
        expired: list[Lease],
        now: float,
        error: TransportError | None,
    ) -> None:
        with self._cond:
            for lease in expired:
                logger.warning(
                    "Message %r held for %.0fs: no longer extending it", lease.message_id, now - lease.held_since
                )
                self._leases.pop(lease.receipt_handle, None)
            for lease in due:
                if lease.receipt_handle not in changes:
                    continue
                if error is not None:  # try again shortly
                    lease.visible_until = now + _RETRY_WAIT_S + self.visibility_timeout_seconds * (1 - self.fraction)
                elif lease.receipt_handle in failed:
                    logger.warning("Could not extend the visibility of message %r", lease.message_id)
                    self._leases.pop(lease.receipt_handle, None)
                else:
                    lease.visible_until = now + changes[lease.receipt_handle]
                    self.extensions += 1
            self._log_state(error)
            self._sending = set()
            self._cond.notify_all()

    def _log_state(self, error: TransportError | None) -> None:
        if error is not None and not self._failing:
            logger.warning("Visibility extension failing, retrying until it recovers: %s", error)
        elif error is None and self._failing:
            logger.info("Visibility extension recovered")
        self._failing = error is not None
