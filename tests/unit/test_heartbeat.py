"""Visibility heartbeat: scheduling (pure) and extension against the stub queue."""

from __future__ import annotations

import logging
import time

import pytest
from microbus.reference.schemas import OrderPlaced

from microbus import Outcome, Worker
from microbus.consume.dispatch import SQSMessageDispatcher
from microbus.consume.handlers import HandlerRegistry
from microbus.consume.heartbeat import Lease, VisibilityHeartbeat, due_for_extension, extension_s, seconds_until_due
from microbus.consume.lifecycle import Observers, Tracked
from microbus.consume.message import SQSMessage
from microbus.consume.supervision import Supervisor
from microbus.errors import EndpointUnreachableError
from microbus.testing import StubQueue, wait_for


def lease(visible_until: float, held_since: float = 0.0) -> Lease:
    return Lease(Tracked(SQSMessage(None, "id", "handle", "{}")), held_since, visible_until)


def started(stub: StubQueue, **options) -> tuple[VisibilityHeartbeat, Supervisor]:
    heartbeat = VisibilityHeartbeat(transport=stub, visibility_timeout_seconds=1, fraction=0.5, **options)
    supervisor = Supervisor(queue_url=stub.queue_url, observers=Observers())
    heartbeat.start(supervisor)
    return heartbeat, supervisor


def stopped(heartbeat: VisibilityHeartbeat, supervisor: Supervisor) -> None:
    heartbeat.stop()
    supervisor.stop()
    assert supervisor.join(2.0) == []


def test_a_lease_is_due_once_the_fraction_of_the_timeout_has_passed():
    # Given a message received at t=0 with a 30 s timeout and a fraction of 0.5
    held = [lease(visible_until=30.0)]
    # Then it is not due before t=15 and due from t=15 on
    assert due_for_extension(held, now=14.9, visibility_timeout_s=30, fraction=0.5) == []
    assert due_for_extension(held, now=15.0, visibility_timeout_s=30, fraction=0.5) == held


def test_the_heartbeat_sleeps_until_the_earliest_lease_is_due():
    held = [lease(visible_until=30.0), lease(visible_until=20.0)]
    assert seconds_until_due(held, now=0.0, visibility_timeout_s=30, fraction=0.5) == 5.0
    assert seconds_until_due(held, now=8.0, visibility_timeout_s=30, fraction=0.5) == 0.0
    assert seconds_until_due([], now=0.0, visibility_timeout_s=30, fraction=0.5, idle_s=1.0) == 1.0


def test_extensions_stop_at_the_maximum_hold():
    # Given a message held for almost the maximum
    held = lease(visible_until=0.0, held_since=0.0)
    # Then the extension is the timeout, then cut, then nothing
    assert extension_s(held, now=10.0, visibility_timeout_s=30, max_hold_s=100) == 30
    assert extension_s(held, now=90.0, visibility_timeout_s=30, max_hold_s=100) == 10
    assert extension_s(held, now=100.0, visibility_timeout_s=30, max_hold_s=100) <= 0


def received(stub: StubQueue) -> Tracked:
    (message,) = stub.consumer().consume()
    return Tracked(message)


def test_a_tracked_message_stays_invisible_until_untracked():
    # Given a stub queue with a 1 s visibility timeout and one received message
    stub = StubQueue(visibility_timeout_s=1)
    stub.put({"mediaType": "x"})
    message = received(stub)
    heartbeat, supervisor = started(stub)
    try:
        # When it is tracked for 2.5 timeouts
        heartbeat.track(message)
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            # Then it is never visible
            assert stub.receive(max_messages=10, wait_time_seconds=0) == []
            time.sleep(0.1)
        assert heartbeat.extensions >= 3
        # And once untracked it becomes visible within the timeout
        heartbeat.untrack(message)
        redelivered = wait_for(lambda: stub.receive(max_messages=10, wait_time_seconds=0), timeout_s=2.0)
        assert redelivered[0]["MessageId"] == message.message.message_id
    finally:
        stopped(heartbeat, supervisor)


def test_a_stopped_heartbeat_extends_nothing():
    stub = StubQueue(visibility_timeout_s=1)
    stub.put({"mediaType": "x"})
    message = received(stub)
    heartbeat, supervisor = started(stub)
    heartbeat.track(message)
    stopped(heartbeat, supervisor)
    # When the heartbeat stopped, the message comes back after its timeout
    assert wait_for(lambda: stub.receive(max_messages=10, wait_time_seconds=0), timeout_s=2.0)
    assert heartbeat.extensions == 0
    assert heartbeat.held == 0


def test_a_zero_fraction_disables_the_heartbeat():
    heartbeat = VisibilityHeartbeat(transport=StubQueue(), visibility_timeout_seconds=30, fraction=0.0)
    assert not heartbeat.enabled


@pytest.mark.parametrize("fraction, redelivered", [(0.5, False), (0.0, True)], ids=["heartbeat", "no-heartbeat"])
def test_a_worker_does_not_redeliver_a_handler_that_runs_three_timeouts(fraction, redelivered):
    # Given a stub queue with a 1 s timeout and a handler that takes 3 s (without a heartbeat: redelivered)
    stub = StubQueue(visibility_timeout_s=1)
    started = []

    def slow(content):
        started.append(content["order_id"])
        time.sleep(3.0)

    stub.put({"mediaType": OrderPlaced.MEDIA_TYPE, "order_id": "o-1"})
    dispatcher = SQSMessageDispatcher(handler_registry=HandlerRegistry({OrderPlaced.MEDIA_TYPE: slow}))
    worker = Worker(consumer=stub.consumer(), dispatcher=dispatcher, concurrency=2, heartbeat_fraction=fraction)
    worker.start()
    try:
        # When it runs
        finished = lambda: worker.stats.outcomes[Outcome.SUCCEEDED.label] >= 1 and stub.depth == 0  # noqa: E731
        wait_for(lambda: len(started) > 1 or finished(), timeout_s=10)
        finished_once = finished() and len(started) == 1
    finally:
        worker.stop()
        worker.join()
    # Then it was started once and deleted (without the heartbeat: started again while running)
    assert (len(started) > 1) is redelivered
    assert finished_once is not redelivered


def test_a_message_whose_extension_is_refused_is_no_longer_tracked():
    # Given a tracked message whose receipt handle SQS refuses (e.g. it was deleted elsewhere)
    stub = StubQueue(visibility_timeout_s=1)
    stub.put({"mediaType": "x"})
    message = received(stub)
    stub.delete_batch([message.message.receipt_handle])
    heartbeat, supervisor = started(stub)
    try:
        heartbeat.track(message)
        # Then after the first failed extension it is dropped
        wait_for(lambda: heartbeat.held == 0, timeout_s=3)
        assert heartbeat.extensions == 0
    finally:
        stopped(heartbeat, supervisor)


def test_extensions_that_cannot_reach_sqs_are_retried_and_logged_once(caplog):
    # Given SQS unreachable for the first three extension calls
    caplog.set_level(logging.INFO, logger="microbus.consume.heartbeat")

    class Flaky(StubQueue):
        failures = 3

        def change_visibility_entries(self, changes):
            if self.failures:
                self.failures -= 1
                raise EndpointUnreachableError("Cannot reach the stub")
            return super().change_visibility_entries(changes)

    stub = Flaky(visibility_timeout_s=1)
    stub.put({"mediaType": "x"})
    message = received(stub)
    heartbeat, supervisor = started(stub)
    try:
        heartbeat.track(message)
        # Then it keeps trying until an extension succeeds, logging the failure once and the recovery once
        wait_for(lambda: heartbeat.extensions >= 1, timeout_s=6)
    finally:
        stopped(heartbeat, supervisor)
    assert stub.failures == 0
    assert [r.message.split(",")[0] for r in caplog.records if "extension" in r.message] == [
        "Visibility extension failing",
        "Visibility extension recovered",
    ]
