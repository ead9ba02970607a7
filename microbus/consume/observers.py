"""The worker's own lifecycle observers: its counters (:class:`Stats`) and its outcome lines (:class:`LogObserver`)."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from microbus.consume.dispatch import Outcome, log_result
from microbus.consume.lifecycle import EventKind, LifecycleEvent

logger = logging.getLogger("microbus.consume.worker")
"""The settle-failure line keeps the logger it always had (log configurations and tests name it)."""


@dataclass
class Stats:
    """Counters of one worker, kept as a lifecycle observer; safe to read from other threads."""

    received: int = 0
    released: int = 0
    settled: int = 0
    resent: int = 0
    """Deferred messages re-sent as fresh copies (settled too; not handled)."""
    settle_failed: int = 0
    outcomes: dict[str, int] = field(default_factory=lambda: {outcome.label: 0 for outcome in Outcome})
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    observed_kinds: frozenset[EventKind] = field(
        default=frozenset(EventKind) - {EventKind.STARTED}, init=False, repr=False, compare=False
    )
    """The events counted: every one but STARTED."""

    def on_event(self, event: LifecycleEvent) -> None:
        """Count one transition."""
        kind = event.kind
        with self._lock:
            if kind is EventKind.RECEIVED:
                self.received += 1
            elif kind is EventKind.FINISHED:
                if event.outcome is not None:
                    self.outcomes[event.outcome.label] += 1
            elif kind is EventKind.SETTLED or kind is EventKind.DEAD_LETTERED:
                self.settled += 1
            elif kind is EventKind.RELEASED:
                self.released += 1
            elif kind is EventKind.RESENT:
                self.settled += 1
                self.resent += 1
            elif kind is EventKind.SETTLE_FAILED:
                self.settle_failed += 1

    @property
    def in_flight(self) -> int:
        """Messages received and not yet settled (waiting, running or settling)."""
        return self.received - self.settled - self.released - self.settle_failed

    @property
    def handled(self) -> int:
        """Messages whose handler returned (succeeded, skipped or ignored)."""
        return sum(self.outcomes[o.label] for o in (Outcome.SUCCEEDED, Outcome.SKIPPED, Outcome.IGNORED))

    @property
    def dead_lettered(self) -> int:
        """Messages sent to the dead-letter queue (or left to its redrive policy)."""
        return self.outcomes[Outcome.EXPIRED.label] + self.outcomes[Outcome.REJECTED.label]

    @property
    def failed(self) -> int:
        """Handler failures that were scheduled for retry."""
        return self.outcomes[Outcome.FAILED.label] + self.outcomes[Outcome.RETRIED.label]


class LogObserver:
    """One line per finished message (at its outcome's level, never the body), and one per settle failure.

    Parameters:
        daemon: names the daemon in each line.
        queue: names the queue in each line.
        log_bodies: add the message's body, bounded (off by default: bodies may hold personal data).
    """

    observed_kinds = frozenset({EventKind.FINISHED, EventKind.SETTLE_FAILED})
    """The events logged here."""

    def __init__(self, *, daemon: str | None = None, queue: str | None = None, log_bodies: bool = False) -> None:
        self.daemon = daemon
        self.queue = queue
        self.log_bodies = log_bodies

    def on_event(self, event: LifecycleEvent) -> None:
        """Log the transitions worth a line."""
        if event.kind is EventKind.FINISHED and event.result is not None:
            log_result(
                event.result, message=event.message, daemon=self.daemon, queue=self.queue, with_body=self.log_bodies
            )
        elif event.kind is EventKind.SETTLE_FAILED:
            logger.warning("Message %r not settled (%s); it will be redelivered", event.message_id, event.detail)
