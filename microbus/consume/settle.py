"""Settling: deletes, visibility changes and dead-letter copies, batched by 10, several batches in flight.

Nothing here sleeps in line: a batch that failed transiently is scheduled again after a backoff while other
batches go on; an entry SQS refuses for good (a stale receipt handle) is given up at once. Each message is
reported done exactly once, with how it ended (SETTLED, RELEASED, DEAD_LETTERED or SETTLE_FAILED): only then
does it stop counting against the worker's capacity and leave the heartbeat.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

from microbus.consume.lifecycle import EventKind, Observers, Tracked
from microbus.consume.supervision import Supervisor
from microbus.consume.threads import DaemonThreadPool
from microbus.errors import TransportError
from microbus.wire.transport import MAX_BATCH, MAX_BATCH_BYTES, EntryFailure, OutgoingMessage

if TYPE_CHECKING:
    from microbus.consume.consumer import SQSConsumer
    from microbus.consume.message import SQSMessage
    from microbus.wire.transport import SQSTransport

logger = logging.getLogger(__name__)

Ended = tuple[Tracked, EventKind, str | None]
"""A message whose settling ended, how it ended, and why (for failures)."""
Done = Callable[[list[Ended]], None]
"""Called with the messages whose settling ended (a batch call's at once); each message is in one call only."""


class Step(Enum):
    """One call that settling a message needs."""

    DELETE = "delete"
    VISIBILITY = "change visibility"
    SEND = "dead-letter send"
    RESEND = "re-send"


_SENDS = (Step.SEND, Step.RESEND)
"""The steps that send a copy (then the original is deleted)."""


@dataclass(eq=False)
class _Entry:
    tracked: Tracked
    step: Step
    ends_as: EventKind
    seconds: int = 0
    copy: OutgoingMessage | None = None
    trimmed: bool = False
    attempts: int = 0
    queued_at: float = field(default_factory=time.monotonic)
    in_call: bool = False
    """Its batch call is out (a copy in flight may still land after the call is given up on)."""

    @property
    def key(self) -> str:
        return self.copy.key if self.step in _SENDS and self.copy is not None else self.tracked.message.receipt_handle


class Settler:
    """Settles messages on one queue from a supervised flusher and a bounded pool of batch calls.

    Parameters:
        transport: the consumed queue.
        dead_letters: the dead-letter queue, if any.
        done: called with the messages whose settling ended (each message once).
        supervisor: runs the flusher.
        max_in_flight: batch calls at once.
        max_delay_s: how long a lone entry waits for its batch to fill.
        retries: transient failures of an entry before it is given up (then it reappears: at least once).
        retry_base_s: first retry delay, doubling, capped at ``retry_max_s``.
    """

    def __init__(
        self,
        *,
        transport: SQSTransport,
        dead_letters: SQSTransport | None,
        done: Done,
        supervisor: Supervisor,
        max_in_flight: int = 4,
        max_delay_s: float = 0.01,
        retries: int = 6,
        retry_base_s: float = 0.5,
        retry_max_s: float = 8.0,
    ) -> None:
        self.transport = transport
        self.dead_letters = dead_letters
        self.done = done
        self.supervisor = supervisor
        self.max_in_flight = max(1, max_in_flight)
        self.max_delay_s = max_delay_s
        self.retries = retries
        self.retry_base_s = retry_base_s
        self.retry_max_s = retry_max_s
        self._pending: dict[Step, list[_Entry]] = {step: [] for step in Step}
        self._retry: list[tuple[float, int, _Entry]] = []
        self._seq = itertools.count()
        self._in_flight = 0
        self._live: set[_Entry] = set()
        """Entries whose settling has not ended: pending, scheduled for a retry, or in a call."""
        self._closing = False
        self._wake_at = 0.0
        """When the waiting flusher wakes by itself (0 while it is not waiting): an entry due later needs no
        notify."""
        self._cond = threading.Condition()
        self._pool = DaemonThreadPool(self.max_in_flight, name="microbus-settle")
        supervisor.start("settling", self._step)

    def delete(self, tracked: Tracked, ends_as: EventKind = EventKind.SETTLED) -> None:
        """Delete a message (ack)."""
        self._add(_Entry(tracked, Step.DELETE, ends_as))

    def change_visibility(self, tracked: Tracked, seconds: int) -> None:
        """Make a message visible again after ``seconds`` (a retry)."""
        self._add(_Entry(tracked, Step.VISIBILITY, EventKind.SETTLED, seconds=seconds))

    def release(self, tracked: Tracked) -> bool:
        """Make an unstarted message visible again at once (it ends ``RELEASED``).

        Returns False, doing and reporting nothing, once the settling is closed: the caller returns it itself.
        """
        return self._add(_Entry(tracked, Step.VISIBILITY, EventKind.RELEASED), report_refusal=False)

    def dead_letter(self, tracked: Tracked, copy: OutgoingMessage) -> None:
        """Send ``copy`` to the dead-letter queue, then delete the original."""
        if self.dead_letters is None:
            raise RuntimeError("No dead-letter queue to send to")
        self._add(_Entry(tracked, Step.SEND, EventKind.DEAD_LETTERED, copy=copy))

    def resend(self, tracked: Tracked, copy: OutgoingMessage) -> None:
        """Send ``copy`` (a deferred message's fresh copy) to the consumed queue, then delete the original."""
        self._add(_Entry(tracked, Step.RESEND, EventKind.RESENT, copy=copy))

    def close(self, timeout_s: float) -> int:
        """Flush everything pending (retries keep their backoff) and wait at most ``timeout_s``; give up on the rest.

        Returns how many messages were given up on (they reappear after their visibility timeout).
        """
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            while self._live and time.monotonic() < deadline:
                self._cond.wait(min(0.05, max(0.0, deadline - time.monotonic())))
            abandoned = list(self._live)  # in a call that is still out too: its late answer is ignored
            self._live.clear()
            for entries in self._pending.values():
                entries.clear()
            self._retry.clear()
            left = len(abandoned)
        failed = EventKind.SETTLE_FAILED
        self.done([(entry.tracked, failed, _detail(entry, failed, _SHUTDOWN_DEADLINE)) for entry in abandoned])
        self._pool.shutdown()
        if left:
            logger.warning("%d messages not settled by the shutdown deadline; they will be redelivered", left)
        return left

    def _add(self, entry: _Entry, *, report_refusal: bool = True) -> bool:
        """Queue an entry; False once the settling is closed (then it ends SETTLE_FAILED if ``report_refusal``)."""
        with self._cond:
            closing = self._closing  # under the lock: an entry added after close's sweep would never end
            batch = [] if closing else self._queue(entry)
        if closing:  # finished after the shutdown's deadline (e.g. a handler cancelled at shutdown)
            if report_refusal:
                self.done([(entry.tracked, EventKind.SETTLE_FAILED, "finished after the shutdown deadline")])
            return False
        if batch:
            self._submit([(entry.step, batch)])
        return True

    def _queue(self, entry: _Entry) -> list[_Entry]:
        """(Under the lock.) Make ``entry`` live and pending; return a full batch to send from the calling thread."""
        self._live.add(entry)
        pending = self._pending[entry.step]
        pending.append(entry)
        batch: list[_Entry] = []
        if len(pending) >= MAX_BATCH and self._in_flight < self.max_in_flight:
            batch = self._cut(entry.step, pending)  # a full batch goes out from here, not via the flusher
            self._in_flight += bool(batch)
        if len(pending) >= MAX_BATCH and not batch:  # waits for a slot: the flusher sends it when one frees
            self._cond.notify_all()
        elif len(pending) == 1 and self._wake_at > entry.queued_at + self.max_delay_s:  # starts a timer
            self._cond.notify_all()
        return batch

    def _step(self) -> None:
        """One round of the flusher: take the batches that are ready and hand them to the pool."""
        self._submit(self._take())

    def _submit(self, batches: list[tuple[Step, list[_Entry]]]) -> None:
        """Hand batches (counted in flight) to the pool; a batch the shut-down pool refuses is given up."""
        for step, batch in batches:
            try:
                self._pool.submit(self._call, step, batch)
            except RuntimeError:  # shut down in between: the messages reappear after their visibility timeout
                self._conclude([(entry, EventKind.SETTLE_FAILED, _SHUTDOWN_DEADLINE) for entry in batch], [], [])

    def _take(self) -> list[tuple[Step, list[_Entry]]]:
        with self._cond:
            while True:
                self._promote_due_retries()
                batches = self._ready()
                if batches or self.supervisor.stopping:
                    self._in_flight += len(batches)
                    return batches
                wait = self._next_wakeup()
                self._wake_at = time.monotonic() + wait
                self._cond.wait(wait)
                self._wake_at = 0.0

    def _promote_due_retries(self) -> None:
        now = time.monotonic()
        while self._retry and self._retry[0][0] <= now:
            _, _, entry = heapq.heappop(self._retry)
            self._pending[entry.step].append(entry)

    def _ready(self) -> list[tuple[Step, list[_Entry]]]:
        now = time.monotonic()
        batches: list[tuple[Step, list[_Entry]]] = []
        for step, entries in self._pending.items():
            while entries and self._in_flight + len(batches) < self.max_in_flight:
                full = len(entries) >= MAX_BATCH
                if not (full or self._closing or now - entries[0].queued_at >= self.max_delay_s):
                    break
                batch = self._cut(step, entries)
                if not batch:
                    break
                batches.append((step, batch))
        return batches

    def _cut(self, step: Step, entries: list[_Entry]) -> list[_Entry]:
        """Take one batch off ``entries``: at most 10, sends at most MAX_BATCH_BYTES (an oversize one alone)."""
        batch: list[_Entry] = []
        size = 0
        keep: list[_Entry] = []
        for entry in entries:
            if len(batch) >= MAX_BATCH:
                keep.append(entry)
                continue
            if step in _SENDS:
                assert entry.copy is not None
                if batch and size + entry.copy.size > MAX_BATCH_BYTES:
                    keep.append(entry)
                    continue
                size += entry.copy.size
            if step is Step.VISIBILITY and not entry.tracked.claim_wire():
                keep.append(entry)  # the heartbeat is extending it right now: next round
                continue
            batch.append(entry)
        entries[:] = keep
        return batch

    def _next_wakeup(self) -> float:
        now = time.monotonic()
        waits = [1.0]
        if self._retry:
            waits.append(self._retry[0][0] - now)
        for entries in self._pending.values():
            if entries:
                waits.append(entries[0].queued_at + self.max_delay_s - now)
        if any(self._pending.values()):
            waits.append(0.02)  # entries waiting for a free batch slot or for the heartbeat
        return max(0.001, min(waits))

    def _call(self, step: Step, batch: list[_Entry]) -> None:
        """One batch call, then each entry's next step: done, the delete after a send, a retry, or given up."""
        for entry in batch:
            entry.in_call = True
        try:
            failures = self._send(step, batch)
        except Exception as exc:  # a transport fault, or anything else: retry the whole batch
            if not isinstance(exc, TransportError):
                logger.error("Unexpected error in a %s batch; retrying it", step.value, exc_info=exc)
            failures = {
                entry.key: EntryFailure(type(exc).__name__, str(exc)[:200], sender_fault=False) for entry in batch
            }
        finally:
            for entry in batch:
                entry.in_call = False
                if step is Step.VISIBILITY:
                    entry.tracked.release_wire()
        try:
            ended, follow, retry = self._sort(step, batch, failures)
        except Exception as exc:  # a bug: give the batch up (its messages reappear), never lose its slot
            logger.error("Unexpected error after a %s batch; its messages will reappear", step.value, exc_info=exc)
            ended, follow, retry = (
                [(entry, EventKind.SETTLE_FAILED, f"settling failed: {exc!r:.200}") for entry in batch],
                [],
                [],
            )
        self._conclude(ended, follow, retry)

    def _sort(
        self, step: Step, batch: list[_Entry], failures: dict[str, EntryFailure]
    ) -> tuple[list[tuple[_Entry, EventKind, str | None]], list[_Entry], list[_Entry]]:
        """Each entry's next step after its call: ended (how, why), a follow-up call now, or a retry later."""
        ended: list[tuple[_Entry, EventKind, str | None]] = []
        follow: list[_Entry] = []
        retry: list[_Entry] = []
        for entry in batch:
            failure = failures.get(entry.key)
            if failure is None and entry.step in _SENDS:  # the copy is safe: now delete the original
                entry.step, entry.attempts, entry.queued_at = Step.DELETE, 0, time.monotonic()
                follow.append(entry)
            elif failure is None:
                ended.append((entry, entry.ends_as, None))
            elif failure.sender_fault and step is Step.SEND and entry.copy is not None and not entry.trimmed:
                self._trim(entry, failure)
                follow.append(entry)
            elif failure.sender_fault:
                ended.append(
                    (entry, EventKind.SETTLE_FAILED, f"{step.value} refused: {failure.code}: {failure.message}")
                )
            elif entry.attempts >= self.retries:
                ended.append(
                    (entry, EventKind.SETTLE_FAILED, f"{step.value} failed: {failure.code}: {failure.message}")
                )
            else:
                entry.attempts += 1
                retry.append(entry)
        return ended, follow, retry

    def _conclude(
        self,
        ended: list[tuple[_Entry, EventKind, str | None]],
        follow: list[_Entry],
        retry: list[_Entry],
    ) -> None:
        """After a batch call, under one lock: queue the next steps and the retries, end what ended, free the
        call's slot and take the batches that are ready now; then report the ended messages and send the batches."""
        now = time.monotonic()
        with self._cond:
            for entry in follow:
                self._pending[entry.step].append(entry)
            for entry in retry:
                delay = min(self.retry_max_s, self.retry_base_s * 2 ** (entry.attempts - 1))
                heapq.heappush(self._retry, (now + delay, next(self._seq), entry))
            live = [(entry, kind, detail) for entry, kind, detail in ended if entry in self._live]
            self._live.difference_update(entry for entry, _, _ in live)  # not given up on at the deadline
            self._in_flight -= 1
            batches = self._ready()
            self._in_flight += len(batches)
            if follow or retry or self._closing:  # work for the flusher, or close() waiting for the last ends
                self._cond.notify_all()
        try:
            if live:
                self.done([(entry.tracked, kind, _detail(entry, kind, detail)) for entry, kind, detail in live])
        finally:  # the batches taken are counted in flight: they go out whatever ``done`` does
            if batches:
                self._submit(batches)

    def _send(self, step: Step, batch: list[_Entry]) -> dict[str, EntryFailure]:
        if step is Step.DELETE:
            return self.transport.delete_entries([entry.key for entry in batch])
        if step is Step.VISIBILITY:
            return self.transport.change_visibility_entries([(entry.key, entry.seconds) for entry in batch])
        target = self.transport if step is Step.RESEND else self.dead_letters
        assert target is not None
        return target.send_entries([entry.copy for entry in batch if entry.copy is not None])

    def _trim(self, entry: _Entry, failure: EntryFailure) -> None:
        """SQS refused the dead-letter copy itself (e.g. body and reason attributes over the size limit): send it
        again with the reason only, rather than leave a poison message to come back for ever."""
        assert entry.copy is not None
        logger.warning(
            "Dead-letter copy of %r refused (%s); sending it with the reason only",
            entry.tracked.message.message_id,
            failure.code,
        )
        entry.copy, entry.trimmed, entry.queued_at = entry.copy.trimmed(), True, time.monotonic()


_SHUTDOWN_DEADLINE = "not settled before the shutdown deadline"


def _detail(entry: _Entry, kind: EventKind, detail: str | None) -> str | None:
    """A settle failure's reason; a copy that was (or may yet be) sent while its original stays is a duplicate."""
    if kind is not EventKind.SETTLE_FAILED or entry.copy is None:
        return detail
    sent = "re-sent copy" if entry.ends_as is EventKind.RESENT else "dead-letter copy"
    if entry.step is Step.DELETE:
        return f"{sent} sent, original not deleted: a duplicate ({detail})"
    if entry.in_call:
        return f"{sent} still in flight, original not deleted: the copy may arrive too, a duplicate ({detail})"
    return detail


class BatchAcker:
    """Deletes messages in batches of up to 10 in the background, for code that consumes without a Worker.

    A batch goes out when 10 acks are pending or ``max_delay_s`` after the first; several batches may be
    in flight; a batch that failed transiently is retried ``retries`` times with a doubling delay from
    ``retry_base_s``, without holding up the others. ``failed`` counts the messages given up on (they
    are redelivered).
    """

    def __init__(
        self, consumer: SQSConsumer, *, max_delay_s: float = 0.05, retries: int = 4, retry_base_s: float = 0.5
    ) -> None:
        self.consumer = consumer
        self.failed = 0
        self._supervisor = Supervisor(queue_url=consumer.queue_url, observers=Observers())
        self._settler = Settler(
            transport=consumer.transport,
            dead_letters=None,
            done=self._done,
            supervisor=self._supervisor,
            max_delay_s=max_delay_s,
            retries=retries,
            retry_base_s=retry_base_s,
        )

    def ack(self, message: SQSMessage) -> None:
        """Queue a message for deletion."""
        self._settler.delete(Tracked(message))

    def close(self, timeout_s: float | None = None) -> None:
        """Flush what is pending, waiting at most ``timeout_s`` (None: 30 s); the rest is redelivered."""
        self._settler.close(30.0 if timeout_s is None else timeout_s)
        self._supervisor.stop()

    def _done(self, ended: list[Ended]) -> None:
        for tracked, kind, detail in ended:
            if kind is EventKind.SETTLE_FAILED:
                self.failed += 1
                logger.warning(
                    "Could not delete message %r (it will be redelivered): %s", tracked.message.message_id, detail
                )
        self.consumer.acked([tracked.message for tracked, kind, _ in ended if kind is not EventKind.SETTLE_FAILED])
