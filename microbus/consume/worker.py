"""Worker: consumes one queue — receivers, a scheduler, handlers, settling and the heartbeat.

Each received message gets one :class:`~microbus.consume.lifecycle.Tracked` state holder and goes
``received → waiting → running → settling → settled``. It counts against ``concurrency + prefetch`` and stays
under the heartbeat until it is settled. The scheduler starts waiting messages in order of receipt: sync
handlers on ``concurrency`` handler threads, async handlers as tasks on the worker's event loop, together never
more than ``concurrency`` at once; on a FIFO queue, messages of one group run one at a time, in order.
Receiving, settling and the heartbeat are supervised activities.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterable
from types import FrameType

from microbus.consume.breaker import CircuitBreaker, CircuitState, ReceivePermit
from microbus.consume.consumer import QueueInfo, SQSConsumer
from microbus.consume.dispatch import Action, Result, SQSMessageDispatcher, runtime_error
from microbus.consume.heartbeat import SQS_MAX_HOLD_S, VisibilityHeartbeat
from microbus.consume.lifecycle import (
    EventKind,
    LifecycleEvent,
    LifecycleObserver,
    MessageState,
    Observers,
    Tracked,
)
from microbus.consume.message import SQSMessage
from microbus.consume.observers import LogObserver, Stats
from microbus.consume.scheduling import Scheduler
from microbus.consume.settle import Ended, Settler
from microbus.consume.supervision import Supervisor
from microbus.errors import ConfigurationError, EndpointUnreachableError, FatalError, TransientTransportError
from microbus.wire.transport import MAX_BATCH

logger = logging.getLogger(__name__)

_HOLD_MARGIN_S = 5
"""Seconds kept off SQS's 12 h visibility limit (counted from the receive), for the clocks' differences."""
_IDLE_PAUSE_S = 0.2
"""Pause after an empty receive that returned at once (``wait_seconds`` 0), so an idle worker does not spin."""


def transport_backoff_s(failures: int, *, max_s: float, base_s: float = 0.5) -> float:
    """Pause after the ``failures``-th consecutive failed call: ``base_s * 2**failures``, capped at ``max_s``."""
    return float(min(max_s, base_s * 2 ** min(failures, 16)))


def default_receivers(concurrency: int) -> int:
    """Receives in flight at once for a concurrency: three per four handlers, 1 to 8."""
    return max(1, min(8, (3 * concurrency + 3) // 4))


_NO_LIMIT = ReceivePermit(None, 0)
"""The receive permit without a circuit breaker: as many messages as fit."""

PREFETCH_PER_RECEIVER = 2 * MAX_BATCH
"""Default prefetch per receive in flight: one batch being received while the last one is settled."""


class Worker:
    """Consumes one queue with up to ``concurrency`` handlers running at once.

    At most ``concurrency + prefetch`` messages are held (received and not yet settled), whatever the backlog.

    Parameters:
        consumer: the queue's consumer.
        dispatcher: calls handlers and decides outcomes.
        concurrency: handlers running at once (sync handlers on as many threads, async ones on the loop).
        prefetch: messages held beyond the running ones (default: 20 per receiver, so a receive overlaps the
            settling of the batch before it).
        receivers: receives in flight at once (default: :func:`default_receivers`).
        grace_period_s: from the stop, how long running handlers may take to finish.
        max_transport_backoff_s: cap of the pause before a failed activity is restarted.
        heartbeat_fraction: extend a held message's visibility each time this fraction of the queue's
            visibility timeout has passed, until it is settled (0 disables the heartbeat).
        max_hold_s: the longest a message is held under the heartbeat (SQS's limit is 12 h).
        settle_in_flight: settle batch calls in flight at once (default: two per receiver, at least 4).
        observers: receive every lifecycle event (besides the worker's own stats and log lines).
        log_bodies: add each message's body (bounded) to its outcome line; off by default.
        circuit_breaker: stops receiving while most handlers fail (None: never stops).
    """

    def __init__(
        self,
        *,
        consumer: SQSConsumer,
        dispatcher: SQSMessageDispatcher,
        concurrency: int = 1,
        prefetch: int | None = None,
        receivers: int | None = None,
        grace_period_s: float = 30.0,
        max_transport_backoff_s: float = 20.0,
        heartbeat_fraction: float = 0.5,
        max_hold_s: float = SQS_MAX_HOLD_S,
        settle_in_flight: int | None = None,
        observers: Iterable[LifecycleObserver] = (),
        log_bodies: bool = False,
        circuit_breaker: CircuitBreaker | None = None,
    ) -> None:
        self.consumer = consumer
        self.dispatcher = dispatcher
        self._queue_url = consumer.queue_url
        self.concurrency = max(1, concurrency)
        fifo = consumer.queue_url.endswith(".fifo")
        self.receivers = max(1, receivers or (1 if fifo else default_receivers(self.concurrency)))
        """Receives in flight; one on a FIFO queue unless asked (moto's FIFO receive is not atomic)."""
        self.prefetch = max(0, prefetch if prefetch is not None else PREFETCH_PER_RECEIVER * self.receivers)
        self.capacity = self.concurrency + self.prefetch
        self._wanted = max(1, min(MAX_BATCH, self.prefetch))
        """Receive only when this many messages fit: large receives, not one message per call."""
        self.grace_period_s = grace_period_s
        self.max_transport_backoff_s = max_transport_backoff_s
        self.heartbeat_fraction = heartbeat_fraction
        self.max_hold_s = max_hold_s
        self.settle_in_flight = settle_in_flight or max(4, 2 * self.receivers)
        self.heartbeat: VisibilityHeartbeat | None = None
        self.stats = Stats()
        self.name = dispatcher.source
        """The daemon's name (the dispatcher's source), in log lines and metrics."""
        self.queue_name = queue_name(consumer.queue_url)
        self.last_receive_at: float | None = None
        """``time.monotonic()`` when a receive last completed (with or without messages), or the poller last held
        back on purpose (at capacity, or the circuit open); None before the first. ``/health`` bounds its age."""
        self.observers = Observers(
            [self.stats, LogObserver(daemon=self.name, queue=self.queue_name, log_bodies=log_bodies), *observers]
        )
        self.circuit_breaker = circuit_breaker
        if circuit_breaker is not None:
            self.observers.add(circuit_breaker)
            circuit_breaker.bind(self._circuit_changed)
        self._stopping = threading.Event()
        self._stop_at = 0.0
        self._cond = threading.Condition()
        self._held = 0
        self._idle = False
        self._max_attempts: int | None = None
        self._supervisor: Supervisor | None = None
        self._settler: Settler | None = None
        self._scheduler = Scheduler(self.concurrency)
        self._work: queue.SimpleQueue[Tracked | None] = queue.SimpleQueue()
        self._handler_threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopped_loop = False
        self._loop_ended = False
        """The event loop's thread has ended (a crash unless ``_stopped_loop``): not merely not started yet."""
        self.fatal_error: FatalError | None = None
        """The fatal error that stopped the worker, if one did."""

    @staticmethod
    def connections_for(concurrency: int, receivers: int | None = None) -> int:
        """Connections a worker may use at once: handlers, receives, settle batches, the heartbeat."""
        receivers = receivers or default_receivers(concurrency)
        return concurrency + receivers + max(4, 2 * receivers) + 2

    @property
    def held(self) -> int:
        """Messages received and not yet settled (plus receive slots reserved)."""
        with self._cond:
            return self._held

    @property
    def activities_down(self) -> set[str]:
        """The background activities that are down (failed and waiting to be restarted)."""
        down = set(self._supervisor.down) if self._supervisor is not None else set()
        if self._loop_ended and not self._stopped_loop:
            down.add("scheduler")
        return down

    @property
    def healthy(self) -> bool:
        """False while a background activity is down; what a health endpoint reports (an open circuit is not
        a crash: see :attr:`circuit_open`)."""
        return not self.activities_down

    @property
    def circuit_open(self) -> bool:
        """True while the circuit breaker keeps the worker from receiving (open, or trying one message)."""
        return self.circuit_breaker is not None and self.circuit_breaker.is_open

    def start(self) -> None:
        """Read the queue's settings (waiting while the endpoint is unreachable), then start receiving.

        Raises:
            QueueNotFoundError: the queue does not exist.
            TransportError: the queue refused the call (e.g. access denied).
            ConfigurationError: the client's read timeout does not exceed the long-poll wait.
        """
        queue_info = self._wait_for_queue_info()
        if queue_info is None:
            return
        self._check_client()
        self._max_attempts = queue_info.max_receive_count
        supervisor = self._supervisor = Supervisor(
            queue_url=self._queue_url, observers=self.observers, max_backoff_s=self.max_transport_backoff_s
        )
        self.heartbeat = VisibilityHeartbeat(
            transport=self.consumer.transport,
            visibility_timeout_seconds=queue_info.visibility_timeout_seconds,
            fraction=self.heartbeat_fraction,
            max_hold_s=self.max_hold_s,
        )
        self._settler = Settler(
            transport=self.consumer.transport,
            dead_letters=self.consumer.dead_letter_transport(),
            done=self._settled,
            supervisor=supervisor,
            max_in_flight=self.settle_in_flight,
        )
        self._handler_threads = [
            threading.Thread(target=self._handler_thread, name=f"microbus-handler-{i}", daemon=True)
            for i in range(self.concurrency)
        ]
        for thread in self._handler_threads:
            thread.start()
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self._run_loop, name="microbus-scheduler", daemon=True)
        self._loop_thread.start()
        self.heartbeat.start(supervisor)
        for index in range(self.receivers):
            name = "receiving" if index == 0 else f"receiving-{index + 1}"
            supervisor.start(name, functools.partial(self._receive_step, index))

    def _check_client(self) -> None:
        config = getattr(getattr(getattr(self.consumer.transport, "client", None), "meta", None), "config", None)
        if config is None:
            return
        read_timeout = getattr(config, "read_timeout", None)
        wait = self.consumer.wait_seconds
        if isinstance(read_timeout, int | float) and read_timeout <= wait + 1:
            raise ConfigurationError(
                f"The SQS read timeout ({read_timeout:g}s, aws.read_timeout_s) must exceed the long-poll wait "
                f"({wait}s, --wait-seconds) by more than a second: raise the timeout or shorten the wait."
            )
        pool = getattr(config, "max_pool_connections", None)
        needed = self.connections_for(self.concurrency, self.receivers)
        if isinstance(pool, int) and pool < needed:
            logger.warning(
                "The SQS client's connection pool (%d) is smaller than the %d connections this worker may use "
                "at once: raise aws.max_pool_connections",
                pool,
                needed,
            )

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
        """Stop receiving and return the unstarted messages at once; :meth:`join` finishes the shutdown."""
        if self._stopping.is_set():
            return
        self._stop_at = time.monotonic()
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        for tracked in self._scheduler.close():
            self._release(tracked)

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called."""
        return self._stopping.is_set()

    def join(self) -> None:
        """Wait for the stop, then shut down: running handlers get the grace period (counted from the
        stop), what they leave is settled, and every background activity ends. Every wait is bounded."""
        while not self._stopping.wait(0.5):
            pass
        if self._supervisor is None or self._settler is None:  # stopped before it started
            return
        deadline = self._stop_at + self.grace_period_s
        running = self._scheduler.wait_idle(deadline - time.monotonic())
        if running:
            logger.warning(
                "%d handlers still running after the %.0fs grace period; their messages will be redelivered",
                running,
                self.grace_period_s,
            )
        self._settler.close(max(5.0, deadline - time.monotonic()))
        if self.stats.released:
            logger.info("Returned %d unstarted messages to the queue", self.stats.released)
        assert self.heartbeat is not None
        self.heartbeat.stop()
        self._supervisor.stop()
        self._stopped_loop = True
        self._call_soon(self._shut_loop)
        if self._loop_thread is not None:
            self._loop_thread.join(2.0)
        for _ in self._handler_threads:
            self._work.put(None)

    def run(self) -> None:
        """Start, stop on SIGTERM/SIGINT (a second signal exits at once), and shut down gracefully.

        Raises:
            FatalError: what stopped the worker, when a fatal error did.
        """
        install_signal_handlers([self])
        self.start()
        self.join()
        if self.fatal_error is not None:
            raise self.fatal_error

    # Receiving (supervised activities, one per receiver)

    def _receive_step(self, index: int) -> None:
        assert self._supervisor is not None
        if self.stopping:
            self._supervisor.wait(1.0)
            return
        if index and self._wait_while_idle():
            return
        permit = self._circuit_permit()
        if permit is None:
            self._poller_alive()  # the circuit is open: paused on purpose
            return
        reserved = self._reserve(self._wanted)
        if not reserved:
            self._admit([], permit)  # a trial permit goes back
            self._poller_alive()  # at capacity: waiting for room
            return
        started = time.monotonic()
        try:
            messages = self.consumer.consume(limit=reserved if permit.limit is None else min(reserved, permit.limit))
        except BaseException:
            self._unreserve(reserved)
            self._admit([], permit)
            raise
        self.last_receive_at = time.monotonic()
        self._unreserve(reserved - len(messages))
        if self._idle != (not messages):
            with self._cond:
                self._idle = not messages
                self._cond.notify_all()
        if not messages and time.monotonic() - started < _IDLE_PAUSE_S:
            self._stopping.wait(_IDLE_PAUSE_S)
        self._admit(messages, permit)

    def _poller_alive(self) -> None:
        """The poller did not receive, on purpose (full, or the circuit open): it counts as alive for ``/health``."""
        if not self.stopping:
            self.last_receive_at = time.monotonic()

    def _wait_while_idle(self) -> bool:
        """Extra receivers rest while the queue looks empty (the first one keeps polling); True if rested."""
        with self._cond:
            if not self._idle:
                return False
            self._cond.wait_for(lambda: not self._idle or self.stopping, timeout=1.0)
            return True

    def _reserve(self, wanted: int) -> int:
        """Wait (≤ 1 s) until ``wanted`` messages fit under the capacity; reserve and return the free slots."""
        with self._cond:
            self._cond.wait_for(lambda: self.capacity - self._held >= wanted or self.stopping, timeout=1.0)
            free = self.capacity - self._held
            if self.stopping or free < wanted:
                return 0
            slots = min(MAX_BATCH, free)
            self._held += slots
            return slots

    def _unreserve(self, count: int) -> None:
        if count:
            with self._cond:
                self._held -= count
                self._cond.notify_all()

    def _admit(self, messages: list[SQSMessage], permit: ReceivePermit) -> None:
        """Hold a received batch (events, heartbeat) and hand it to the scheduler in one call; return it
        unstarted when the circuit breaker does not admit it."""
        assert self.heartbeat is not None
        breaker = self.circuit_breaker
        admitted = breaker is None or breaker.admit(permit, [message.message_id for message in messages])
        if not messages:
            return
        if admitted and permit.limit is not None:
            self._scheduler.resume()  # the trial message
        batch = [Tracked(message) for message in messages]
        if self.observers.wants(EventKind.RECEIVED):
            for tracked in batch:
                self.observers.emit(tracked.event(EventKind.RECEIVED, self._queue_url))
        self.heartbeat.track(*batch)
        if not admitted:
            for tracked in batch:
                self._release(tracked)
            return
        self._enqueue(batch)

    # The circuit breaker

    def _circuit_permit(self) -> ReceivePermit | None:
        """What the next receive may take; None after waiting while the circuit is open."""
        breaker = self.circuit_breaker
        if breaker is None:
            return _NO_LIMIT
        permit = breaker.permit()
        if permit is None:
            self._stopping.wait(breaker.wait_s())
        return permit

    def _circuit_changed(self, state: CircuitState, why: str) -> None:
        """Opened: start nothing more and return the waiting messages; closed: start again. One event each."""
        if state is CircuitState.OPEN:
            for tracked in self._scheduler.pause():
                self._release(tracked)
        elif state is CircuitState.CLOSED:
            self._scheduler.resume()
        kind = {
            CircuitState.OPEN: EventKind.CIRCUIT_OPENED,
            CircuitState.HALF_OPEN: EventKind.CIRCUIT_HALF_OPENED,
            CircuitState.CLOSED: EventKind.CIRCUIT_CLOSED,
        }[state]
        event = LifecycleEvent(kind=kind, queue_url=self._queue_url, at=time.monotonic(), detail=why)
        self.observers.emit(event)

    # Scheduling: a lock-protected scheduler; sync handlers on handler threads, async ones on the loop

    def _run_loop(self) -> None:
        """The event loop of async handlers, until the shutdown; then cancelled handlers finish their cleanup."""
        loop = self._loop
        assert loop is not None
        try:
            asyncio.set_event_loop(loop)
            while not self._stopped_loop:
                try:
                    loop.run_forever()
                except BaseException:  # noqa: B036 - e.g. a KeyboardInterrupt from a task a handler awaits
                    logger.exception("An async handler's task raised out of the event loop; the loop goes on")
            pending = [task for task in self._tasks if not task.done()]
            if pending:  # cancelled by _shut_loop: let them run their except/finally, and report FINISHED
                loop.run_until_complete(asyncio.wait(pending, timeout=1.0))
        except BaseException:  # noqa: B036 - the thread must end cleanly whatever happens
            logger.exception("The worker's event loop failed")
        finally:
            self._loop_ended = True
            loop.close()

    def _call_soon(self, callback: Callable[..., object], *args: object) -> bool:
        """Run ``callback(*args)`` on the loop's thread; False when the loop is gone."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return False
        try:
            loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # closed in between
            return False
        return True

    def _shut_loop(self) -> None:
        assert self._loop is not None
        for task in self._tasks:
            task.cancel()
        self._loop.stop()

    def _enqueue(self, batch: list[Tracked]) -> None:
        """Received messages wait for a free handler (returned at once when stopping)."""
        startable, refused = self._scheduler.add(batch)
        for tracked in refused:
            self._release(tracked)
        self._start(startable)

    def _start(self, startable: list[Tracked], *, keep: bool = False) -> Tracked | None:
        """Start messages: async ones on the loop, sync ones on the handler threads. ``keep`` (a handler thread
        asking): the first sync one is returned for the caller to run, without a hand-off to another thread."""
        kept: Tracked | None = None
        started = self.observers.wants(EventKind.STARTED)
        for tracked in startable:
            if started:
                self.observers.emit(tracked.event(EventKind.STARTED, self._queue_url))
            if self.dispatcher.is_async(tracked.message):
                if not self._call_soon(self._start_task, tracked):
                    self._finished(tracked, runtime_error(tracked.message, RuntimeError("event loop closed")))
            elif keep and kept is None:
                kept = tracked
            else:
                self._work.put(tracked)
        return kept

    def _start_task(self, tracked: Tracked) -> None:
        assert self._loop is not None
        task = self._loop.create_task(self._run_async(tracked))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _handler_thread(self) -> None:
        """One of ``concurrency`` handler threads: run sync handlers until the worker shuts down; after each, run
        the next startable message here rather than hand it to another thread."""
        tracked: Tracked | None
        while (tracked := self._work.get()) is not None:
            while tracked is not None:
                tracked = self._run_sync(tracked)

    def _run_sync(self, tracked: Tracked) -> Tracked | None:
        """Handle one message and finish it; return the next message this thread is to run, if any."""
        try:
            result = self.dispatcher.handle(tracked.message, max_attempts=self._max_attempts)
        except FatalError as exc:
            self._fatal(tracked, exc)
            return None
        except BaseException as exc:  # the dispatcher never raises for handlers; anything else is a bug
            logger.exception("Unexpected error handling message %r; it will be retried", tracked.message.message_id)
            result = runtime_error(tracked.message, exc)
        return self._finished(tracked, result, keep=True)

    async def _run_async(self, tracked: Tracked) -> None:
        try:
            result = await self.dispatcher.handle_async(tracked.message, max_attempts=self._max_attempts)
        except FatalError as exc:
            self._fatal(tracked, exc)
            return
        except BaseException as exc:  # noqa: B036 - cancelled at shutdown, or a bug: the message is retried
            result = runtime_error(tracked.message, exc)
        self._finished(tracked, result)

    def _fatal(self, tracked: Tracked, error: FatalError) -> None:
        """The daemon cannot go on: return the message unstarted, remember why, and stop the worker."""
        logger.error("%s: stopping (message %r returned to the queue)", error, tracked.message.message_id)
        if self.fatal_error is None:
            self.fatal_error = error
        result = runtime_error(tracked.message, error)
        result.reason = "fatal-error"
        self.observers.emit(tracked.event(EventKind.FINISHED, self._queue_url, outcome=result.outcome, result=result))
        self.stop()  # first: the scheduler starts nothing more, the waiting messages go back
        _, later = self._scheduler.finished(tracked, retried=True)
        for each in (tracked, *later):
            self._release(each)

    def _finished(self, tracked: Tracked, result: Result, *, keep: bool = False) -> Tracked | None:
        """A handler ended: report it, settle its message, return the group's later ones, start what may start
        (``keep``: returns the next message for the calling handler thread)."""
        tracked.result = result
        if self.observers.wants(EventKind.FINISHED):
            self.observers.emit(
                tracked.event(EventKind.FINISHED, self._queue_url, outcome=result.outcome, result=result)
            )
        tracked.advance(MessageState.SETTLING)
        try:
            self._settle(tracked, result)
        except Exception as exc:  # a bug: the message must not stay held (and extended) for ever
            logger.exception("Unexpected error settling message %r; it will reappear", tracked.message.message_id)
            self._settled([(tracked, EventKind.SETTLE_FAILED, f"settling failed: {exc!r:.200}")])
        # Only now is the handler no longer running: a shutdown waiting for idle closes the settling after this
        # message's settle step was handed to it, not before (which gave up a handled message, to be redelivered)
        startable, later = self._scheduler.finished(tracked, retried=result.outcome.action is Action.RETRY)
        for each in later:  # SQS holds the group back while the failed one is in flight: order holds
            self._release(each)
        return self._start(startable, keep=keep)

    # Settling

    def _settle(self, tracked: Tracked, result: Result) -> None:
        assert self._settler is not None
        message = tracked.message
        action = result.outcome.action
        if action is Action.DEAD_LETTER:
            if self._settler.dead_letters is not None:
                copy = self.consumer.dead_letter_copy(
                    message, reason=result.reason or "rejected", error=result.error, source=self.dispatcher.source
                )
                self._settler.dead_letter(tracked, copy)
                return
            action, delay = self.dispatcher.without_dead_letter_queue(result, message)
            result.retry_after_s = delay
        if action is Action.ACK:
            self._settler.delete(tracked)
            return
        if result.resend:
            self._settler.resend(tracked, self.consumer.resend_copy(message, result.retry_after_s or 0))
            return
        if result.retry_after_s is None:  # a runtime error, not a handler outcome: the backoff all the same
            result.retry_after_s = self.dispatcher.retry_policy.backoff(message.approximate_receive_count)
        # SQS counts a visibility timeout from the receive: at most 12 h from then, less the time held so far
        held_s = math.ceil(time.monotonic() - tracked.received_at) + _HOLD_MARGIN_S
        result.retry_after_s = max(0, min(result.retry_after_s, SQS_MAX_HOLD_S - held_s))
        self._settler.change_visibility(tracked, result.retry_after_s)

    def _release(self, tracked: Tracked) -> None:
        """Return a received, unstarted message to the queue at once (visibility 0)."""
        tracked.advance(MessageState.SETTLING)
        if self._settler is not None and self._settler.release(tracked):
            return
        try:  # after the shutdown's settling: return it directly
            failures = self.consumer.transport.change_visibility_entries([(tracked.message.receipt_handle, 0)])
        except Exception as exc:
            self._settled([(tracked, EventKind.SETTLE_FAILED, f"release failed: {exc}")])
            return
        failure = failures.get(tracked.message.receipt_handle)
        if failure is None:
            self._settled([(tracked, EventKind.RELEASED, None)])
        else:
            self._settled([(tracked, EventKind.SETTLE_FAILED, f"release refused: {failure.code}")])

    def _settled(self, ended: list[Ended]) -> None:
        """The end of messages' lifecycles (a settle batch's at once): each message's first end counts, once."""
        done = [(tracked, kind, detail) for tracked, kind, detail in ended if tracked.advance(MessageState.SETTLED)]
        if not done:
            return
        if self.heartbeat is not None:
            self.heartbeat.untrack(*(tracked for tracked, _, _ in done))
        deleted: list[SQSMessage] = []
        for tracked, kind, detail in done:
            if self.observers.wants(kind):
                self.observers.emit(tracked.event(kind, self._queue_url, detail=detail))
            result = tracked.result
            if kind is EventKind.SETTLED and result is not None and result.outcome.action is Action.ACK:
                deleted.append(tracked.message)
        if deleted:
            self.consumer.acked(deleted)  # deleted: now their offloaded payloads may go too
        with self._cond:
            free = self.capacity - self._held
            self._held -= len(done)
            if free < self._wanted <= free + len(done):  # a receive batch fits again
                self._cond.notify_all()


def queue_name(queue_url: str) -> str:
    """A queue's name: the last path segment of its URL."""
    return queue_url.rstrip("/").rsplit("/", 1)[-1]


def install_signal_handlers(workers: Iterable[Worker]) -> None:
    """SIGTERM/SIGINT stop every worker; a second signal exits at once with status 1."""
    targets = list(workers)
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stopping.is_set():
            logger.warning("Second signal: exiting at once")
            raise SystemExit(1)
        stopping.set()
        logger.info("Received %s: stopping", signal.Signals(signum).name)
        for worker in targets:
            worker.stop()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
