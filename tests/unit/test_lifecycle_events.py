"""Lifecycle events on the stub queue: their order per message, exactly one terminal event per message,
stats that agree with the events, observers that raise, and settle failures with their reason."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter, defaultdict

import pytest
from microbus.reference.schemas import OrderPlaced

from microbus import EventKind, HandlerRegistry, Outcome, SchemaRegistry, SQSMessageDispatcher, Worker
from microbus.consume.dispatch import RetryPolicy
from microbus.testing import StubQueue, wait_for

TERMINAL = {EventKind.SETTLED, EventKind.RELEASED, EventKind.DEAD_LETTERED, EventKind.SETTLE_FAILED}
MESSAGE_KINDS = TERMINAL | {EventKind.RECEIVED, EventKind.STARTED, EventKind.FINISHED}


def order(i):
    return {"mediaType": OrderPlaced.MEDIA_TYPE, "order_id": f"o-{i}"}


class Collector:
    """Keeps every event, and each message's events in order."""

    def __init__(self):
        self.events = []
        self._lock = threading.Lock()

    def on_event(self, event):
        with self._lock:
            self.events.append(event)

    def by_message(self):
        with self._lock:
            out = defaultdict(list)
            for event in self.events:
                if event.message_id is not None:
                    out[event.message_id].append(event)
            return dict(out)

    def kinds(self, message_id):
        return [e.kind for e in self.by_message().get(message_id, [])]

    def count(self, kind, outcome=None):
        with self._lock:
            return sum(1 for e in self.events if e.kind is kind and (outcome is None or e.outcome is outcome))

    def terminal(self, message_id):
        return [e for e in self.by_message().get(message_id, []) if e.kind in TERMINAL]


def make_worker(queue, handler, *, observers=(), **options):
    dispatcher = SQSMessageDispatcher(
        handler_registry=HandlerRegistry({OrderPlaced.MEDIA_TYPE: handler}),
        retry_policy=RetryPolicy(base_s=1, jitter=False),
    )
    return Worker(consumer=queue.consumer(SchemaRegistry()), dispatcher=dispatcher, observers=observers, **options)


def run(worker, until, *, what, timeout_s=10):
    worker.start()
    try:
        wait_for(until, timeout_s=timeout_s, what=what)
    finally:
        worker.stop()
        worker.join()


def assert_timed_in_order(events):
    ats = [e.at for e in events]
    assert ats == sorted(ats), [(e.kind, e.at) for e in events]
    assert all(e.elapsed_s >= 0 for e in events)
    assert [e.elapsed_s for e in events] == sorted(e.elapsed_s for e in events)


def assert_stats_agree(worker, collector):
    """The worker's counters are the events, counted once each."""
    stats = worker.stats
    assert stats.received == collector.count(EventKind.RECEIVED)
    assert stats.released == collector.count(EventKind.RELEASED)
    assert stats.settled == collector.count(EventKind.SETTLED) + collector.count(EventKind.DEAD_LETTERED)
    assert stats.settle_failed == collector.count(EventKind.SETTLE_FAILED)
    for outcome in Outcome:
        assert stats.outcomes[outcome.label] == collector.count(EventKind.FINISHED, outcome), outcome


@pytest.mark.timeout(30)
def test_a_handled_message_is_received_started_finished_and_settled_in_that_order():
    # Given one good message and an observer
    queue = StubQueue()
    message_id = queue.put(order(1))
    collector = Collector()
    worker = make_worker(queue, lambda content: None, observers=[collector])
    # When the worker handles it
    run(worker, lambda: EventKind.SETTLED in collector.kinds(message_id), what="the message to settle")
    # Then its events are RECEIVED, STARTED, FINISHED(SUCCEEDED), SETTLED, timed in order
    events = collector.by_message()[message_id]
    assert [e.kind for e in events] == [EventKind.RECEIVED, EventKind.STARTED, EventKind.FINISHED, EventKind.SETTLED]
    assert events[2].outcome is Outcome.SUCCEEDED
    assert events[2].result is not None and events[2].result.outcome is Outcome.SUCCEEDED
    assert_timed_in_order(events)
    assert {e.queue_url for e in events} == {queue.queue_url}
    assert {e.media_type for e in events} == {OrderPlaced.MEDIA_TYPE}
    assert queue.deleted == [message_id]
    assert_stats_agree(worker, collector)


@pytest.mark.timeout(30)
def test_a_poison_message_is_rejected_and_dead_lettered():
    # Given a message that is not JSON
    queue = StubQueue()
    message_id = queue.put("{not json")
    collector = Collector()
    worker = make_worker(queue, lambda content: None, observers=[collector])
    # When the worker takes it
    run(worker, lambda: EventKind.DEAD_LETTERED in collector.kinds(message_id), what="the dead letter")
    # Then its events are RECEIVED, STARTED, FINISHED(REJECTED), DEAD_LETTERED
    events = collector.by_message()[message_id]
    assert [e.kind for e in events] == [
        EventKind.RECEIVED,
        EventKind.STARTED,
        EventKind.FINISHED,
        EventKind.DEAD_LETTERED,
    ]
    assert events[2].outcome is Outcome.REJECTED
    assert_timed_in_order(events)
    assert len(queue.dead_letters) == 1
    assert_stats_agree(worker, collector)


@pytest.mark.timeout(30)
def test_a_message_released_at_stop_is_received_then_released_and_never_started():
    # Given one handler busy and five messages waiting behind it
    queue = StubQueue()
    ids = [queue.put(order(i)) for i in range(6)]
    started, release = threading.Event(), threading.Event()

    def slow(content):
        started.set()
        release.wait(10)

    collector = Collector()
    worker = make_worker(queue, slow, observers=[collector], concurrency=1, prefetch=5)
    worker.start()
    try:
        assert started.wait(5)
        wait_for(lambda: worker.stats.received == 6, timeout_s=5, what="prefetch to fill")
    finally:
        # When the worker stops
        worker.stop()
        release.set()
        worker.join()
    # Then the five waiting ones went RECEIVED → RELEASED, with no STARTED, and the running one settled
    kinds = {message_id: collector.kinds(message_id) for message_id in ids}
    released = [m for m, k in kinds.items() if k == [EventKind.RECEIVED, EventKind.RELEASED]]
    handled = [m for m, k in kinds.items() if k[-1] is EventKind.SETTLED]
    assert len(released) == 5, kinds
    assert len(handled) == 1, kinds
    assert_stats_agree(worker, collector)


@pytest.mark.timeout(30)
def test_every_message_gets_exactly_one_terminal_event_and_the_stats_agree_with_the_events():
    # Given good messages, poison ones, and one that fails once before it succeeds
    queue = StubQueue()
    good = [queue.put(order(i)) for i in range(12)]
    poison = [queue.put("{{{") for _ in range(3)]
    flaky = queue.put(order("flaky"))
    failed_once = []

    def handler(content):
        if content["order_id"] == "o-flaky" and not failed_once:
            failed_once.append(1)
            raise RuntimeError("first attempt")

    collector = Collector()
    worker = make_worker(queue, handler, observers=[collector], concurrency=3)
    # When the worker runs until the queue is empty
    run(worker, lambda: queue.depth == 0, what="the queue to drain", timeout_s=15)
    # Then each receipt of each message ended exactly once
    for message_id in good + poison:
        assert [e.kind for e in collector.terminal(message_id)] in (
            [EventKind.SETTLED],
            [EventKind.DEAD_LETTERED],
        ), collector.kinds(message_id)
    flaky_kinds = collector.kinds(flaky)
    assert flaky_kinds == [
        EventKind.RECEIVED,
        EventKind.STARTED,
        EventKind.FINISHED,
        EventKind.SETTLED,
        EventKind.RECEIVED,
        EventKind.STARTED,
        EventKind.FINISHED,
        EventKind.SETTLED,
    ]
    assert [e.receive_count for e in collector.by_message()[flaky]] == [1] * 4 + [2] * 4
    for message_id, events in collector.by_message().items():
        received = sum(e.kind is EventKind.RECEIVED for e in events)
        terminal = sum(e.kind in TERMINAL for e in events)
        assert received == terminal, (message_id, [e.kind for e in events])
    # And the counters are the events, counted once
    assert_stats_agree(worker, collector)
    assert worker.stats.received == 17
    assert worker.stats.settled == 17
    assert worker.stats.failed == 1
    assert worker.stats.dead_lettered == 3
    assert worker.stats.handled == 13
    assert worker.held == 0


@pytest.mark.timeout(30)
def test_an_observer_that_raises_is_logged_once_and_does_not_break_the_worker(caplog):
    # Given an observer that raises on every event
    class Broken:
        def on_event(self, event):
            raise ValueError("observer bug")

    queue = StubQueue()
    for i in range(5):
        queue.put(order(i))
    collector = Collector()
    worker = make_worker(queue, lambda content: None, observers=[Broken(), collector], concurrency=2)
    caplog.set_level(logging.ERROR, logger="microbus.consume.lifecycle")
    # When the worker runs
    run(worker, lambda: queue.depth == 0 and worker.stats.settled == 5, what="all handled")
    # Then the messages were all handled, the observer after it still got every event, and one line was logged
    assert worker.stats.handled == 5
    assert collector.count(EventKind.SETTLED) == 5
    lines = [r for r in caplog.records if "Lifecycle observer" in r.getMessage()]
    assert len(lines) == 1
    assert "Broken" in lines[0].getMessage()
    assert lines[0].exc_info is not None


@pytest.mark.timeout(30)
def test_a_stale_receipt_at_delete_time_ends_in_settle_failed_with_the_reason():
    # Given a queue that refuses the delete of one message (its receipt handle went stale)
    class StaleFor(StubQueue):
        stale: set = set()

        def delete_batch(self, receipt_handles):
            stale = [h for h in receipt_handles if h.split("#", 1)[0] in self.stale]
            rest = [h for h in receipt_handles if h not in stale]
            return stale + super().delete_batch(rest)

    queue = StaleFor()
    ids = [queue.put(order(i)) for i in range(4)]
    queue.stale = {ids[1]}
    collector = Collector()
    worker = make_worker(queue, lambda content: None, observers=[collector])
    # When the worker handles them
    run(worker, lambda: sum(len(collector.terminal(m)) for m in ids) == 4, what="all four to end")
    # Then the stale one ended SETTLE_FAILED with a detail that says why, the others SETTLED
    (failed,) = collector.terminal(ids[1])
    assert failed.kind is EventKind.SETTLE_FAILED
    assert failed.detail and "ReceiptHandleIsInvalid" in failed.detail
    assert "delete" in failed.detail
    assert [e.kind for m in ids if m != ids[1] for e in collector.terminal(m)] == [EventKind.SETTLED] * 3
    assert_stats_agree(worker, collector)
    assert worker.stats.settle_failed == 1
    assert worker.held == 0


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_handler_still_running_after_the_grace_period_still_gets_one_terminal_event(kind):
    """The message is given up on at the shutdown (it will reappear): observers (an in-flight gauge, a
    trace span) must see it end, not be left with a RECEIVED/STARTED that never closes."""
    # Given a handler that outlives the grace period
    release = threading.Event()
    started = threading.Event()

    def sync_handler(content):
        started.set()
        release.wait(20)

    async def async_handler(content):
        started.set()
        await asyncio.Event().wait()

    queue = StubQueue()
    message_id = queue.put(order(1))
    collector = Collector()
    handler = sync_handler if kind == "sync" else async_handler
    worker = make_worker(queue, handler, observers=[collector], grace_period_s=0.2)
    worker.start()
    try:
        assert started.wait(5)
    finally:
        # When the worker is stopped and joined
        worker.stop()
        worker.join()
        release.set()  # the sync handler returns late, after the shutdown
    # Then the message ended exactly once (given up on: SETTLE_FAILED), and was not deleted
    ended = wait_for(lambda: collector.terminal(message_id), timeout_s=5, what="a terminal event")
    assert [e.kind for e in ended] == [EventKind.SETTLE_FAILED]
    assert queue.deleted == []
    assert Counter(collector.kinds(message_id))[EventKind.RECEIVED] == 1
