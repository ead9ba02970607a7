"""Visibility heartbeat: keep the messages a worker holds invisible until they are settled.

A message received with the queue's visibility timeout ``V`` is extended (ChangeMessageVisibility,
batched by 10) to ``V`` from now whenever less than ``(1 - fraction) * V`` of its visibility is left,
that is every ``fraction * V`` seconds while it is held. It is held from its receipt until it is *settled*
(deleted, retried, released or dead-lettered, as SQS confirmed), not only while its handler runs, so a slow
or retried delete never lets it reappear. Near ``max_hold_s`` (SQS refuses to hold a message longer than
12 h) it is extended a last time to the limit, logged once, and let go.

The heartbeat is one supervised activity: an unexpected error is logged with its traceback and the
heartbeat restarts; the messages it holds are due at once after the restart.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from microbus.errors import TransportError
from microbus.wire.transport import MAX_BATCH

if TYPE_CHECKING:
    from microbus.consume.lifecycle import Tracked
    from microbus.consume.supervision import Supervisor
    from microbus.wire.transport import SQSTransport

logger = logging.getLogger(__name__)

SQS_MAX_HOLD_S = 43_200
_IDLE_WAIT_S = 1.0
_RETRY_WAIT_S = 1.0


@dataclass(eq=False)
class Lease:
    """One held message: when it was received and when it becomes visible again (monotonic seconds)."""

    tracked: Tracked
    held_since: float
    visible_until: float
    last: bool = False

    @property
    def receipt_handle(self) -> str:
        """The message's receipt handle."""
        return self.tracked.message.receipt_handle

    def __repr__(self) -> str:
        return f"Lease(message_id={self.tracked.message.message_id!r}, visible_until={self.visible_until:.1f})"


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
    """Extends the visibility of tracked messages from a supervised activity.

    Parameters:
        transport: changes visibility on the message's queue.
        visibility_timeout_seconds: the queue's visibility timeout; each extension sets it again.
        fraction: extend once this fraction of the timeout has passed (0 < fraction < 1; 0 disables).
        max_hold_s: never hold a message longer than this in total (SQS refuses more than 12 h).
    """

    def __init__(
        self,
        *,
        transport: SQSTransport,
        visibility_timeout_seconds: int,
        fraction: float = 0.5,
        max_hold_s: float = SQS_MAX_HOLD_S,
    ) -> None:
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"heartbeat fraction must be in [0, 1), got {fraction}")
        self.transport = transport
        self.visibility_timeout_seconds = visibility_timeout_seconds
        self.fraction = fraction
        self.max_hold_s = min(float(max_hold_s), SQS_MAX_HOLD_S)
        self.extensions = 0
        self._leases: dict[int, Lease] = {}
        self._cond = threading.Condition()
        self._stopped = False
        self._failing = False
        self._wake_at = 0.0

    @property
    def enabled(self) -> bool:
        """False when the fraction is 0 or the queue has no visibility timeout."""
        return self.fraction > 0 and self.visibility_timeout_seconds > 0

    def start(self, supervisor: Supervisor) -> None:
        """Run under ``supervisor`` (a no-op when disabled)."""
        if self.enabled:
            supervisor.start("heartbeat", self.step)

    def stop(self) -> None:
        """Stop extending anything; held messages reappear when their visibility runs out. Never blocks."""
        with self._cond:
            self._stopped = True
            self._leases.clear()
            self._cond.notify_all()

    def track(self, *held: Tracked) -> None:
        """Start extending messages, each received at its ``received_at``."""
        if not self.enabled or not held:
            return
        timeout, early = self.visibility_timeout_seconds, self.visibility_timeout_seconds * (1.0 - self.fraction)
        leases = [(id(t), Lease(t, t.received_at, t.received_at + timeout)) for t in held]
        due_at = min(lease.visible_until for _, lease in leases) - early
        with self._cond:
            if not self._stopped:
                self._leases.update(leases)
                if due_at < self._wake_at:  # due before the heartbeat means to look again
                    self._cond.notify_all()

    def untrack(self, *held: Tracked) -> None:
        """Stop extending messages (they were settled). Never blocks."""
        with self._cond:
            for tracked in held:
                self._leases.pop(id(tracked), None)

    @property
    def held(self) -> int:
        """How many messages are tracked."""
        with self._cond:
            return len(self._leases)

    def step(self) -> None:
        """Wait until some leases are due (at most a second), then extend them."""
        due = self._wait_for_due()
        if due:
            self._extend(due)

    def _wait_for_due(self) -> list[Lease]:
        kwargs = {"visibility_timeout_s": self.visibility_timeout_seconds, "fraction": self.fraction}
        with self._cond:
            if self._stopped:
                return []
            due = due_for_extension(self._leases.values(), now=time.monotonic(), **kwargs)
            if not due:
                now = time.monotonic()
                wait = min(_IDLE_WAIT_S, seconds_until_due(self._leases.values(), now=now, **kwargs))
                self._wake_at = now + wait
                self._cond.wait(wait)
                self._wake_at = 0.0
                return []
            return due

    def _extend(self, due: list[Lease]) -> None:
        now = time.monotonic()
        changes: list[tuple[Lease, int]] = []
        for lease in due:
            seconds = extension_s(
                lease, now=now, visibility_timeout_s=self.visibility_timeout_seconds, max_hold_s=self.max_hold_s
            )
            if seconds <= 0 or lease.last:
                self._let_go(lease, now)
            elif lease.tracked.claim_wire():
                changes.append((lease, seconds))
        for start in range(0, len(changes), MAX_BATCH):
            self._send(changes[start : start + MAX_BATCH], now)

    def _send(self, batch: list[tuple[Lease, int]], now: float) -> None:
        error: TransportError | None = None
        failed: set[str] = set()
        try:
            failed = set(self.transport.change_visibility_entries([(lease.receipt_handle, s) for lease, s in batch]))
        except TransportError as exc:
            error = exc
        finally:
            for lease, _ in batch:
                lease.tracked.release_wire()
        with self._cond:
            for lease, seconds in batch:
                if error is not None:  # try again shortly
                    lease.visible_until = now + _RETRY_WAIT_S + self.visibility_timeout_seconds * (1 - self.fraction)
                elif lease.receipt_handle in failed:
                    if not lease.tracked.settled and id(lease.tracked) in self._leases:
                        logger.warning(
                            "Could not extend the visibility of message %r", lease.tracked.message.message_id
                        )
                    self._leases.pop(id(lease.tracked), None)
                else:
                    lease.visible_until = now + seconds
                    lease.last = seconds < self.visibility_timeout_seconds
                    self.extensions += 1
            self._log_state(error)

    def _let_go(self, lease: Lease, now: float) -> None:
        with self._cond:
            if self._leases.pop(id(lease.tracked), None) is None:
                return
        logger.warning(
            "Message %r held for %.0fs, the hold limit (%.0fs): no longer extending it; it will reappear",
            lease.tracked.message.message_id,
            now - lease.held_since,
            self.max_hold_s,
        )

    def _log_state(self, error: TransportError | None) -> None:
        if error is not None and not self._failing:
            logger.warning("Visibility extension failing, retrying until it recovers: %s", error)
        elif error is None and self._failing:
            logger.info("Visibility extension recovered")
        self._failing = error is not None
