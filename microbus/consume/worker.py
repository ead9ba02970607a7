"""Runtime: the poll loop, bounded prefetch, worker threads, batched acks and graceful shutdown."""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from dataclasses import dataclass, field
from types import FrameType

from microbus.consume.consumer import BatchAcker, QueueInfo, SQSConsumer
from microbus.consume.dispatch import Outcome, Result, SQSMessageDispatcher
from microbus.consume.heartbeat import VisibilityHeartbeat
from microbus.consume.message import SQSMessage
from microbus.errors import EndpointUnreachableError, QueueNotFoundError, TransientTransportError, TransportError
from microbus.wire.transport import MAX_BATCH

logger = logging.getLogger(__name__)


def transport_backoff_s(failures: int, *, max_s: float, base_s: float = 0.5) -> float:
    """Pause after the ``failures``-th consecutive failed call: ``base_s * 2**failures``, capped at ``max_s``."""
    return float(min(max_s, base_s * 2 ** min(failures, 16)))


def _log_receive_failure(exc: Exception) -> None:
    if isinstance(exc, QueueNotFoundError):
        logger.error("Receive failing, backing off until the queue exists: %s", exc)
    elif isinstance(exc, TransportError):
        logger.warning("Receive failing, backing off until it recovers: %s", exc)
    else:
        logger.error("Receive failing unexpectedly, backing off", exc_info=exc)


@dataclass
class Stats:
    """Counters of one worker, by outcome; safe to read from other threads."""

    received: int = 0
    released: int = 0
    outcomes: dict[str, int] = field(default_factory=lambda: {outcome.label: 0 for outcome in Outcome})
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, result: Result) -> None:
        """Record one outcome."""
        with self._lock:
            self.outcomes[result.outcome.label] += 1

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


class Worker:
    """Consumes one queue with ``concurrency`` handler threads.

    At most ``concurrency + prefetch`` messages are held at once, whatever the backlog.

    Parameters:
        consumer: the queue's consumer.
        dispatcher: calls handlers and applies outcomes.
        concurrency: handler threads.
        prefetch: messages received ahead of free handler threads (default 10, one receive batch).
        grace_period_s: on stop, how long in-flight handlers may take to finish.
        max_transport_backoff_s: cap of the pause between failed receives.
        heartbeat_fraction: extend a held message's visibility each time this fraction of the queue's
            visibility timeout has passed, until its handler finishes (0 disables the heartbeat).
    """

    def __init__(
        self,
        *,
        consumer: SQSConsumer,
        dispatcher: SQSMessageDispatcher,
        concurrency: int = 1,
        prefetch: int | None = None,
        grace_period_s: float = 30.0,
        max_transport_backoff_s: float = 20.0,
        heartbeat_fraction: float = 0.5,
    ) -> None:
        self.consumer = consumer
        self.dispatcher = dispatcher
        self.concurrency = max(1, concurrency)
        self.capacity = self.concurrency + (prefetch if prefetch is not None else 10)
        self.grace_period_s = grace_period_s
        self.max_transport_backoff_s = max_transport_backoff_s
        self.heartbeat_fraction = heartbeat_fraction
        self.heartbeat: VisibilityHeartbeat | None = None
        self.stats = Stats()
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._queue: queue.Queue[SQSMessage | None] = queue.Queue()
        self._outstanding = 0
        self._cond = threading.Condition()
        self._acker: BatchAcker | None = None
        self._threads: list[threading.Thread] = []
        self._max_attempts: int | None = None

    def start(self) -> None:
        """Read the queue's settings (waiting while the endpoint is unreachable), then start the poller,
        the heartbeat and the handler threads.

        Raises:
            QueueNotFoundError: the queue does not exist.
            TransportError: the queue refused the call (e.g. access denied).
        """
        queue_info = self._wait_for_queue_info()
        if queue_info is None:
            return
        self._max_attempts = queue_info.max_receive_count
        self.heartbeat = VisibilityHeartbeat(
            consumer=self.consumer,
            visibility_timeout_seconds=queue_info.visibility_timeout_seconds,
            fraction=self.heartbeat_fraction,
        )
        self.heartbeat.start()
        self._acker = BatchAcker(self.consumer)
        self._threads = [threading.Thread(target=self._poll, name="microbus-poller", daemon=True)]
        self._threads += [
            threading.Thread(target=self._work, name=f"microbus-worker-{i}", daemon=True)
            for i in range(self.concurrency)
        ]
        for thread in self._threads:
            thread.start()

    def _wait_for_queue_info(self) -> QueueInfo | None:
        """The queue's settings; while the endpoint is unreachable or failing, wait for it (None if stopped)."""
        failures = 0
        while not self.stopping:
            try:
                queue_info = self.consumer.queue_info()
            except (EndpointUnreachableError, TransientTransportError) as exc:
                if failures == 0:
                    logger.warning("Queue unreachable at start, waiting for it: %s", exc)
                failures += 1
                self._stopping.wait(transport_backoff_s(failures, max_s=self.max_transport_backoff_s))
                continue
            if failures:
                logger.info("Queue reachable after %d failed attempts", failures)
            return queue_info
        return None

    def stop(self) -> None:
        """Ask the worker to stop receiving; :meth:`join` finishes the shutdown."""
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called."""
        return self._stopping.is_set()

    def join(self) -> None:
        """Wait for the stop, then shut down in order: poller, handlers (within the grace period),
        heartbeat, return unstarted messages at once, flush acks."""
        self._stopping.wait()
        if not self._threads:  # stopped before it started
            self._stopped.set()
            return
        poller, workers = self._threads[0], self._threads[1:]
        poller.join(self.consumer.wait_seconds + 35)
        for _ in workers:
            self._queue.put(None)
        deadline = time.monotonic() + self.grace_period_s
        for thread in workers:
            thread.join(max(0.0, deadline - time.monotonic()))
        unfinished = sum(thread.is_alive() for thread in workers)
        if unfinished:
            logger.warning("%d handlers still running after the %.0fs grace period", unfinished, self.grace_period_s)
        assert self.heartbeat is not None
        self.heartbeat.stop()
        self._release_unstarted()
        assert self._acker is not None
        self._acker.close(max(5.0, deadline - time.monotonic()))  # an unreachable SQS must not hold the exit
        self._stopped.set()

    def run(self) -> None:
        """Start, stop on SIGTERM/SIGINT (a second signal exits at once), and shut down gracefully."""
        self._install_signal_handlers()
        self.start()
        self.join()

    def _install_signal_handlers(self) -> None:
        def on_signal(signum: int, frame: FrameType | None) -> None:
            if self.stopping:
                logger.warning("Second signal: exiting at once")
                raise SystemExit(1)
            logger.info("Received %s: stopping", signal.Signals(signum).name)
            self.stop()

        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, on_signal)

    def _free_slots(self) -> int:
        """Wait until a full receive batch fits (or the prefetch, when smaller); return the free slots.

        Receiving only when a batch fits keeps receives large: a worker that always has one free
        slot would otherwise receive one message per call.
        """
        wanted = max(1, min(MAX_BATCH, self.capacity - self.concurrency))
        with self._cond:
            self._cond.wait_for(lambda: self.capacity - self._outstanding >= wanted or self.stopping, timeout=1.0)
            return self.capacity - self._outstanding if self.capacity - self._outstanding >= wanted else 0

    def _poll(self) -> None:
        failures = 0
        while not self.stopping:
            slots = self._free_slots()
            if self.stopping or slots <= 0:
                continue
            try:
                messages = self.consumer.consume(limit=min(10, slots))
            except Exception as exc:  # transport faults, and bugs: the poller must never die
                if failures == 0:
                    _log_receive_failure(exc)
                failures += 1
                self._stopping.wait(transport_backoff_s(failures, max_s=self.max_transport_backoff_s))
                continue
            if failures:
                logger.info("Receive recovered after %d failed attempts", failures)
            failures = 0
            self._enqueue(messages)

    def _enqueue(self, messages: list[SQSMessage]) -> None:
        with self._cond:
            self._outstanding += len(messages)
        self.stats.received += len(messages)
        assert self.heartbeat is not None
        for message in messages:
            self.heartbeat.track(message)
            self._queue.put(message)

    def _work(self) -> None:
        assert self._acker is not None and self.heartbeat is not None
        while (message := self._queue.get()) is not None:
            if self.stopping:
                self._queue.put(message)
                break
            try:
                try:
                    result = self.dispatcher.handle(message, max_attempts=self._max_attempts)
                finally:  # never keep extending a message whose handling ended, however it ended
                    self.heartbeat.untrack(message)
                self.dispatcher.apply(result, message, consumer=self.consumer, ack=self._acker.ack)
                self.stats.count(result)
            except Exception:
                logger.exception("Unexpected error on message %r; it will be redelivered", message.message_id)
            finally:
                self._done(1)

    def _done(self, count: int) -> None:
        with self._cond:
            self._outstanding -= count
            self._cond.notify_all()

    def _release_unstarted(self) -> None:
        unstarted: list[SQSMessage] = []
        while True:
            try:
                message = self._queue.get_nowait()
            except queue.Empty:
                break
            if message is not None:
                unstarted.append(message)
        if not unstarted:
            return
        try:
            self.consumer.release(unstarted)
        except TransportError as exc:
            logger.warning("Could not return %d unstarted messages: %s", len(unstarted), exc)
        self.stats.released += len(unstarted)
        self._done(len(unstarted))
        logger.info("Returned %d unstarted messages to the queue", len(unstarted))
