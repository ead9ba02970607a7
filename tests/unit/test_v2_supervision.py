"""Supervision: an unexpected exception in a background activity (heartbeat, settling) neither hangs
the worker nor loses messages; the activity is restarted, the failure logged and reported."""

from __future__ import annotations

import logging
import threading

import pytest
from microbus.reference.schemas import OrderPlaced

from microbus import ConfigurationError, HandlerRegistry, SchemaRegistry, SQSMessageDispatcher, Worker
from microbus.testing import StubQueue, wait_for


def order(i):
    return {"mediaType": OrderPlaced.MEDIA_TYPE, "order_id": f"o-{i}"}


class NoCredentialsVisibility(StubQueue):
    """ChangeMessageVisibility raises ConfigurationError (what a NoCredentialsError becomes) while ``failing``."""

    def __post_init__(self):
        super().__post_init__()
        self.failing = True
        self.failures = 0

    def change_visibility_batch(self, changes):
        if self.failing:
            self.failures += 1
            raise ConfigurationError("No AWS credentials found for stub://queue")
        return super().change_visibility_batch(changes)


class Recorder:
    """A lifecycle observer that keeps every event."""

    def __init__(self):
        self.events = []

    def on_event(self, event):
        self.events.append(event)


def joined_within(worker, seconds):
    """Stop the worker and return whether join() came back within ``seconds``."""
    worker.stop()
    thread = threading.Thread(target=worker.join, daemon=True)
    thread.start()
    thread.join(seconds)
    return not thread.is_alive()


def blocking_handler(handled, go):
    lock = threading.Lock()

    def handler(content):
        assert go.wait(20)
        with lock:
            handled.append(content["order_id"])

    return handler


@pytest.mark.timeout(60)
def test_a_heartbeat_failing_with_an_unexpected_error_does_not_hang_handlers_or_lose_messages():
    # Given a queue whose visibility extension fails with ConfigurationError (no credentials)
    queue = NoCredentialsVisibility(visibility_timeout_s=4)
    for i in range(3):
        queue.put(order(i))
    handled, go = [], threading.Event()
    dispatcher = SQSMessageDispatcher(
        handler_registry=HandlerRegistry({OrderPlaced.MEDIA_TYPE: blocking_handler(handled, go)})
    )
    worker = Worker(
        consumer=queue.consumer(SchemaRegistry()),
        dispatcher=dispatcher,
        concurrency=3,
        heartbeat_fraction=0.25,
        grace_period_s=2.0,
        max_transport_backoff_s=1.0,
    )
    worker.start()
    try:
        # When the heartbeat hits the error while the handlers run, and then the credentials come back
        wait_for(lambda: queue.failures >= 1, timeout_s=10, what="the heartbeat to fail")
        queue.failing = False
        go.set()
        # Then every message is handled and deleted
        wait_for(lambda: queue.depth == 0, timeout_s=15, what="every message to be deleted")
    finally:
        go.set()
        # And the worker still shuts down in bounded time
        assert joined_within(worker, 15), "join() did not return"
    assert sorted(set(handled)) == ["o-0", "o-1", "o-2"]


@pytest.mark.timeout(60)
def test_a_failing_activity_makes_the_worker_unhealthy_and_is_reported():
    from microbus import EventKind

    # Given a worker, observed, whose heartbeat fails with ConfigurationError until told otherwise
    queue = NoCredentialsVisibility(visibility_timeout_s=4)
    for i in range(2):
        queue.put(order(i))
    handled, go = [], threading.Event()
    recorder = Recorder()
    dispatcher = SQSMessageDispatcher(
        handler_registry=HandlerRegistry({OrderPlaced.MEDIA_TYPE: blocking_handler(handled, go)})
    )
    worker = Worker(
        consumer=queue.consumer(SchemaRegistry()),
        dispatcher=dispatcher,
        concurrency=2,
        heartbeat_fraction=0.25,
        grace_period_s=2.0,
        max_transport_backoff_s=1.0,
        observers=[recorder],
    )
    worker.start()
    try:
        assert worker.healthy
        # When the heartbeat fails
        # Then the worker says so and names the activity that is down
        down = wait_for(
            lambda: set(worker.activities_down) if not worker.healthy else None,
            timeout_s=10,
            interval_s=0.01,
            what="the worker to turn unhealthy",
        )
        # And an ACTIVITY_DOWN event was observed
        wait_for(
            lambda: [e for e in recorder.events if e.kind is EventKind.ACTIVITY_DOWN],
            timeout_s=5,
            what="an ACTIVITY_DOWN event",
        )
        (first_down, *_) = [e for e in recorder.events if e.kind is EventKind.ACTIVITY_DOWN]
        assert first_down.activity in down
        # And once the fault is gone it recovers, and every message is handled and deleted
        queue.failing = False
        wait_for(lambda: worker.healthy, timeout_s=15, what="the worker to recover")
        assert not worker.activities_down
        go.set()
        wait_for(lambda: queue.depth == 0, timeout_s=15, what="every message to be deleted")
        assert [e for e in recorder.events if e.kind is EventKind.ACTIVITY_UP]
    finally:
        go.set()
        assert joined_within(worker, 15), "join() did not return"
    assert sorted(set(handled)) == ["o-0", "o-1"]


class DeleteBugOnce(StubQueue):
    """The first delete call raises an unexpected (non-transport) error."""

    def __post_init__(self):
        super().__post_init__()
        self.raised = False

    def delete_batch(self, receipt_handles):
        if not self.raised:
            self.raised = True
            raise RuntimeError("unexpected bug in delete")
        return super().delete_batch(receipt_handles)


@pytest.mark.timeout(60)
def test_an_unexpected_error_while_deleting_is_logged_and_the_deletes_are_retried(caplog):
    # Given a queue whose first delete raises RuntimeError
    caplog.set_level(logging.WARNING)
    queue = DeleteBugOnce()
    for i in range(3):
        queue.put(order(i))
    dispatcher = SQSMessageDispatcher(handler_registry=HandlerRegistry({OrderPlaced.MEDIA_TYPE: lambda c: None}))
    worker = Worker(
        consumer=queue.consumer(SchemaRegistry()), dispatcher=dispatcher, concurrency=1, max_transport_backoff_s=1.0
    )
    # When the worker handles the messages
    worker.start()
    try:
        # Then they are all deleted eventually
        wait_for(lambda: queue.depth == 0, timeout_s=15, what="every message to be deleted")
    finally:
        assert joined_within(worker, 15), "join() did not return"
    assert queue.raised
    # And the error was logged as a warning (or worse) with its traceback
    logged = [r for r in caplog.records if r.levelno >= logging.WARNING and r.exc_info and r.exc_info[0]]
    assert any(issubclass(r.exc_info[0], RuntimeError) for r in logged), [r.getMessage() for r in caplog.records]


@pytest.mark.timeout(30)
def test_the_worker_is_not_reported_unhealthy_while_its_scheduler_thread_is_starting(monkeypatch):
    # Given a worker whose health is read while its event loop's thread is being started (slow under CPU load: a
    # thread is not alive until it has run)
    seen = []
    worker = Worker(
        consumer=StubQueue().consumer(SchemaRegistry()),
        dispatcher=SQSMessageDispatcher(handler_registry=HandlerRegistry({})),
    )

    class Watched(threading.Thread):
        def start(self):
            if self.name == "microbus-scheduler":
                seen.append(worker.activities_down)
            super().start()

    monkeypatch.setattr("microbus.consume.worker.threading.Thread", Watched)
    # When it starts
    worker.start()
    try:
        # Then nothing is reported down then, nor once it runs
        assert seen == [set()]
        assert worker.healthy
    finally:
        worker.stop()
        worker.join()


@pytest.mark.timeout(30)
def test_a_worker_whose_event_loop_thread_crashed_reports_its_scheduler_down(monkeypatch):
    # Given an event loop that cannot be set up in its thread
    def broken(loop):
        raise RuntimeError("no loop here")

    monkeypatch.setattr("microbus.consume.worker.asyncio.set_event_loop", broken)
    worker = Worker(
        consumer=StubQueue().consumer(SchemaRegistry()),
        dispatcher=SQSMessageDispatcher(handler_registry=HandlerRegistry({})),
    )
    # When it starts
    worker.start()
    try:
        # Then the crash is reported: the worker is unhealthy, its scheduler down
        wait_for(lambda: "scheduler" in worker.activities_down, timeout_s=5, what="the scheduler reported down")
        assert not worker.healthy
    finally:
        worker.stop()
        worker.join()
