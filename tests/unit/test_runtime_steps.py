"""The runtime's per-message steps on the stub queue: observers by kind, batched settle ends, a settling bug that
must not leave a message held for ever, and the settle pool's threads surviving a raising call."""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import UTC, datetime

import pytest
from microbus.reference.schemas import OrderPlaced

from microbus import EventKind, HandlerRegistry, SchemaRegistry, SQSMessageDispatcher, Worker
from microbus.consume.lifecycle import LifecycleEvent, Observers
from microbus.consume.threads import DaemonThreadPool
from microbus.testing import StubQueue, wait_for
from microbus.wire.delivery import DELIVER_AT_KEY, format_due
from tests.unit.test_lifecycle_events import run


class Kinds:
    """Keeps the kinds of the events it receives."""

    def __init__(self, observed: frozenset[EventKind] | None = None) -> None:
        if observed is not None:
            self.observed_kinds = observed
        self.seen: list[EventKind] = []
        self._lock = threading.Lock()

    def on_event(self, event: LifecycleEvent) -> None:
        with self._lock:
            self.seen.append(event.kind)


def worker_for(queue: StubQueue, handler, **options) -> Worker:
    dispatcher = SQSMessageDispatcher(handler_registry=HandlerRegistry({OrderPlaced.MEDIA_TYPE: handler}))
    return Worker(consumer=queue.consumer(SchemaRegistry()), dispatcher=dispatcher, **options)


def order(i: int) -> dict[str, str]:
    return {"mediaType": OrderPlaced.MEDIA_TYPE, "order_id": f"o-{i}"}


def test_an_observer_with_observed_kinds_gets_only_those_and_one_without_gets_every_kind():
    narrow, wide = Kinds(frozenset({EventKind.FINISHED})), Kinds()
    observers = Observers([narrow, wide])
    for kind in (EventKind.RECEIVED, EventKind.STARTED, EventKind.FINISHED):
        observers.emit(LifecycleEvent(kind, "stub://queue", at=0.0))
    assert narrow.seen == [EventKind.FINISHED]
    assert wide.seen == [EventKind.RECEIVED, EventKind.STARTED, EventKind.FINISHED]


def test_observed_kinds_that_are_not_a_set_mean_every_kind():
    class Odd(Kinds):
        def observed_kinds(self):  # a method of the same name, not a set: the observer takes everything
            return {EventKind.FINISHED}

    odd = Odd()
    observers = Observers([odd])
    observers.emit(LifecycleEvent(EventKind.RECEIVED, "stub://queue", at=0.0))
    assert odd.seen == [EventKind.RECEIVED]


def test_wants_follows_the_observers_added_later():
    observers = Observers([Kinds(frozenset({EventKind.FINISHED}))])
    assert not observers.wants(EventKind.STARTED) and observers.wants(EventKind.FINISHED)
    observers.add(Kinds(frozenset({EventKind.STARTED})))
    assert observers.wants(EventKind.STARTED)


@pytest.mark.timeout(30)
def test_a_worker_without_a_started_observer_still_gives_started_to_one_added_later():
    queue = StubQueue()
    for i in range(30):
        queue.put(order(i))
    worker = worker_for(queue, lambda content: None, concurrency=2)
    started = Kinds(frozenset({EventKind.STARTED}))
    worker.observers.add(started)
    run(worker, lambda: worker.stats.settled == 30, what="30 messages settled")
    assert started.seen == [EventKind.STARTED] * 30
    assert worker.stats.received == 30 and worker.stats.handled == 30 and worker.held == 0


@pytest.mark.timeout(30)
def test_a_bug_while_settling_a_message_does_not_leave_it_held_for_ever(caplog):
    # Given a poison message whose dead-letter copy cannot be built (a bug in settling, not in the handler)
    queue = StubQueue()
    message_id = queue.put("{not json")
    worker = worker_for(queue, lambda content: None)
    kinds = Kinds()
    worker.observers.add(kinds)

    def broken_copy(*args, **kwargs):
        raise RuntimeError("copy bug")

    worker.consumer.dead_letter_copy = broken_copy  # type: ignore[method-assign]
    caplog.set_level(logging.ERROR, logger="microbus.consume.worker")
    worker.start()
    try:
        # Then its settling ends as failed: it no longer counts against the capacity, nor under the heartbeat
        wait_for(lambda: EventKind.SETTLE_FAILED in kinds.seen, timeout_s=5, what="the settle failure")
        wait_for(lambda: worker.held == 0, timeout_s=5, what="the message no longer held")
        assert worker.heartbeat is not None and worker.heartbeat.held == 0
    finally:
        worker.stop()
        worker.join()
    # And it was neither deleted nor dead-lettered: it reappears after its visibility timeout
    assert message_id not in queue.deleted and not queue.dead_letters and queue.depth == 1
    assert "copy bug" in caplog.text


@pytest.mark.timeout(30)
def test_the_settle_pool_logs_a_raising_call_and_keeps_running_the_next(caplog):
    pool = DaemonThreadPool(1, name="test-pool")
    ran = threading.Event()

    def boom() -> None:
        raise ValueError("boom")

    caplog.set_level(logging.ERROR, logger="microbus.consume.threads")
    pool.submit(boom)
    pool.submit(ran.set)
    assert ran.wait(5)
    assert "test-pool: a call raised" in caplog.text and "boom" in caplog.text
    pool.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        pool.submit(ran.set)


class Ends:
    """Keeps each message's terminal event kind and detail."""

    observed_kinds = frozenset({EventKind.SETTLED, EventKind.RESENT, EventKind.SETTLE_FAILED})

    def __init__(self) -> None:
        self.ends: list[tuple[EventKind, str | None]] = []

    def on_event(self, event: LifecycleEvent) -> None:
        self.ends.append((event.kind, event.detail))


@pytest.mark.timeout(60)
def test_a_re_send_still_in_flight_at_shutdown_keeps_the_original_and_says_its_copy_may_arrive_too():
    # Given a message due in a minute (deferred by a re-send with a delay) and a send call that hangs
    class HangingSend(StubQueue):
        def __post_init__(self) -> None:
            super().__post_init__()
            self.sending, self.gate = threading.Event(), threading.Event()

        def send_entries(self, messages):
            self.sending.set()
            self.gate.wait(30)
            return super().send_entries(messages)

    queue = HangingSend()
    due = format_due(datetime.fromtimestamp(time.time() + 60, tz=UTC))
    original = queue.put(
        {"mediaType": OrderPlaced.MEDIA_TYPE, "order_id": "later", "opaqueData": {DELIVER_AT_KEY: due}}
    )
    handled: list[object] = []
    worker = worker_for(queue, handled.append, grace_period_s=0)
    ends = Ends()
    worker.observers.add(ends)
    worker.start()
    wait_for(queue.sending.is_set, timeout_s=10, what="the re-send to go out")
    # When the worker stops while the copy's call is still out (settling gets at least 5 s, then gives up)
    worker.stop()
    worker.join()
    # Then the message's settling failed, saying the copy may still arrive; the original was not deleted
    ((kind, detail),) = ends.ends
    assert kind is EventKind.SETTLE_FAILED
    assert detail is not None and "re-sent copy still in flight" in detail and "may arrive too" in detail
    assert original not in queue.deleted and queue.depth == 1 and not handled
    # And when the late call lands, the copy is there beside the original: a duplicate, nothing lost
    queue.gate.set()
    wait_for(lambda: len(queue.dead_letters) == 1, timeout_s=5, what="the late copy")  # the stub's send()
    assert json.loads(queue.dead_letters[0][0])["order_id"] == "later" and queue.depth == 1
