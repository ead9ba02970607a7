"""Runtime: the poll loop, bounded prefetch, worker threads, batched acks and graceful shutdown."""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from dataclasses import dataclass, field
from types import FrameType

from microbus.consumer import BatchAcker, SQSConsumer
from microbus.dispatch import Outcome, Result, SQSMessageDispatcher
from microbus.errors import QueueNotFoundError, TransportError
from microbus.message import SQSMessage

logger = logging.getLogger(__name__)


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
    ) -> None:
        self.consumer = consumer
        self.dispatcher = dispatcher
        self.concurrency = max(1, concurrency)
        self.capacity = self.concurrency + (prefetch if prefetch is not None else 10)
        self.grace_period_s = grace_period_s
        self.max_transport_backoff_s = max_transport_backoff_s
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
        """Check the queue, then start the poller and the handler threads.

        Raises:
            QueueNotFoundError: the queue does not exist.
            TransportError: the queue could not be reached.
        """
        self._max_attempts = self.consumer.queue_info().max_receive_count
        self._acker = BatchAcker(self.consumer)
        self._threads = [threading.Thread(target=self._poll, name="microbus-poller", daemon=True)]
        self._threads += [
            threading.Thread(target=self._work, name=f"microbus-worker-{i}", daemon=True)
            for i in range(self.concurrency)
        ]
        for thread in self._threads:
            thread.start()

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
        return unstarted messages at once, flush acks."""
        self._stopping.wait()
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
        self._release_unstarted()
        assert self._acker is not None
        self._acker.close()
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
        with self._cond:
            self._cond.wait_for(lambda: self._outstanding < self.capacity or self.stopping, timeout=1.0)
            return self.capacity - self._outstanding

    def _poll(self) -> None:
        failures = 0
        while not self.stopping:
            slots = self._free_slots()
            if self.stopping or slots <= 0:
                continue
            try:
                messages = self.consumer.consume(limit=min(10, slots))
            except QueueNotFoundError as exc:
                logger.error("%s", exc)
                failures += 1
            except TransportError as exc:
                if failures == 0:
                    logger.warning("Receive failing, backing off until it recovers: %s", exc)
                failures += 1
            except Exception:
                logger.exception("Unexpected error while receiving; backing off")
                failures += 1
            else:
                if failures:
                    logger.info("Receive recovered after %d failed attempts", failures)
                failures = 0
                self._enqueue(messages)
                continue
            self._stopping.wait(min(self.max_transport_backoff_s, 0.5 * 2 ** min(failures, 10)))

    def _enqueue(self, messages: list[SQSMessage]) -> None:
        with self._cond:
            self._outstanding += len(messages)
        self.stats.received += len(messages)
        for message in messages:
            self._queue.put(message)

    def _work(self) -> None:
        assert self._acker is not None
        while (message := self._queue.get()) is not None:
            if self.stopping:
                self._queue.put(message)
                break
            try:
                result = self.dispatcher.handle(message, max_attempts=self._max_attempts)
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
