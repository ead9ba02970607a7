"""Near the hold limit (12 h on SQS, ``max_hold_s`` here) the heartbeat lets a message go once,
logs it once, and neither spins on ChangeMessageVisibility nor extends past the limit."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from microbus.reference.schemas import OrderPlaced

from microbus import HandlerRegistry, Outcome, SchemaRegistry, SQSMessageDispatcher, VisibilityHeartbeat, Worker
from microbus.consume.lifecycle import Observers, Tracked
from microbus.consume.supervision import Supervisor
from microbus.testing import StubQueue, wait_for


class RecordingVisibility(StubQueue):
    """Records every visibility change as (monotonic time, handle, seconds)."""

    def __post_init__(self):
        super().__post_init__()
        self.changes: list[tuple[float, str, int]] = []

    def change_visibility_batch(self, changes):
        now = time.monotonic()
        self.changes.extend((now, handle, seconds) for handle, seconds in changes)
        return super().change_visibility_batch(changes)


def order(i):
    return {"mediaType": OrderPlaced.MEDIA_TYPE, "order_id": f"o-{i}"}


def lines_about(caplog, message_id):
    """Log lines (INFO and up) about one message, leaving out the dispatcher's outcome line."""
    outcomes = tuple(outcome.label for outcome in Outcome)
    return [
        r
        for r in caplog.records
        if r.levelno >= logging.INFO and message_id in r.getMessage() and not r.getMessage().startswith(outcomes)
    ]


@pytest.mark.timeout(30)
def test_the_heartbeat_lets_a_message_go_once_at_the_hold_limit(caplog):
    # Given a heartbeat with a 1 s visibility timeout and a 2 s hold limit, holding one message
    caplog.set_level(logging.INFO)
    queue = RecordingVisibility(visibility_timeout_s=1)
    queue.put(order(1))
    consumer = queue.consumer(SchemaRegistry())
    heartbeat = VisibilityHeartbeat(transport=queue, visibility_timeout_seconds=1, fraction=0.5, max_hold_s=2)
    supervisor = Supervisor(queue_url=queue.queue_url, observers=Observers())
    heartbeat.start(supervisor)
    try:
        (message,) = consumer.consume(limit=1)
        tracked = Tracked(message)
        held_since = tracked.received_at
        heartbeat.track(tracked)
        # When it runs for 4 s, twice the limit (a measurement window)
        threading.Event().wait(4.0)
        still_held = heartbeat.held
    finally:
        heartbeat.stop()
        supervisor.stop()
    # Then it made a handful of calls, not a tight loop
    calls = len(queue.changes)
    assert calls < 20, f"{calls} ChangeMessageVisibility calls in 4 s"
    # And it let the message go
    assert still_held == 0, "the message is still being extended after its hold limit"
    # And never extended it past the limit
    furthest = max((at + seconds - held_since for at, _, seconds in queue.changes), default=0.0)
    assert furthest <= 2.6, f"visibility extended to {furthest:.1f}s after receipt, past the 2 s limit"
    # And said so once
    assert len(lines_about(caplog, message.message_id)) == 1, [r.getMessage() for r in caplog.records]


@pytest.mark.timeout(30)
def test_the_worker_stops_extending_a_long_handler_at_max_hold(caplog):
    # Given a worker with a 2 s hold limit on a queue with a 1 s visibility timeout, and a handler that runs 4 s
    caplog.set_level(logging.INFO)
    queue = RecordingVisibility(visibility_timeout_s=1)
    message_id = queue.put(order(1))
    started, done = threading.Event(), threading.Event()

    def long_handler(content):
        started.set()
        done.wait(4.0)

    dispatcher = SQSMessageDispatcher(handler_registry=HandlerRegistry({OrderPlaced.MEDIA_TYPE: long_handler}))
    worker = Worker(
        consumer=queue.consumer(SchemaRegistry()),
        dispatcher=dispatcher,
        concurrency=1,
        prefetch=0,
        heartbeat_fraction=0.5,
        max_hold_s=2,
        grace_period_s=5,
    )
    worker.start()
    try:
        assert started.wait(5)
        received_at = time.monotonic()
        # When the handler runs past the limit
        wait_for(lambda: lines_about(caplog, message_id), timeout_s=6, what="the hold-limit log line")
        threading.Event().wait(1.0)  # a window to catch a loop of extensions after the limit
        calls_before = len(queue.changes)
        threading.Event().wait(1.0)
        calls_after = len(queue.changes)
    finally:
        done.set()
        worker.stop()
        worker.join()
    # Then extensions stopped at the limit, with one log line, and none reached past it
    assert calls_after == calls_before
    assert len(queue.changes) < 20
    assert len(lines_about(caplog, message_id)) == 1
    extensions = [at + seconds - received_at for at, _, seconds in queue.changes if seconds > 0]
    assert max(extensions, default=0.0) <= 2.6
