"""Shutdown returns prefetched-but-unstarted messages at once, not after the running handlers finish."""

from __future__ import annotations

import threading
import time

import pytest
from microbus.reference.schemas import OrderPlaced

from microbus import HandlerRegistry, SchemaRegistry, SQSMessageDispatcher, Worker
from microbus.testing import StubQueue, wait_for


def order(i):
    return {"mediaType": OrderPlaced.MEDIA_TYPE, "order_id": f"o-{i}"}


@pytest.mark.timeout(60)
def test_unstarted_messages_are_released_at_once_while_a_handler_still_runs():
    # Given a worker with one handler thread, blocked in its handler, and four messages prefetched
    queue = StubQueue()
    for i in range(5):
        queue.put(order(i))
    started, release = threading.Event(), threading.Event()

    def blocked(content):
        started.set()
        release.wait(30)

    dispatcher = SQSMessageDispatcher(handler_registry=HandlerRegistry({OrderPlaced.MEDIA_TYPE: blocked}))
    worker = Worker(consumer=queue.consumer(SchemaRegistry()), dispatcher=dispatcher, concurrency=1, prefetch=4)
    worker.start()
    joiner = threading.Thread(target=worker.join, daemon=True)
    try:
        assert started.wait(5)
        wait_for(lambda: worker.stats.received == 5, timeout_s=5, what="the prefetch to fill")
        # When the worker is stopped while the handler is still blocked
        worker.stop()
        joiner.start()
        # Then the four unstarted messages become visible to another consumer well before the handler ends
        seen = {}

        def four_visible():
            for raw in queue.receive(max_messages=10, wait_time_seconds=0):
                seen[raw["MessageId"]] = raw
            return len(seen) == 4

        wait_for(four_visible, timeout_s=5, what="the four unstarted messages to be visible again")
        assert not release.is_set() and joiner.is_alive()
    finally:
        release.set()
        worker.stop()
        if joiner.ident is None:
            joiner.start()
        joiner.join(20)
    assert not joiner.is_alive()
    assert worker.stats.released == 4


@pytest.mark.timeout(60)
def test_a_receive_that_returns_after_the_stop_is_released_at_once():
    # Given a receive that is still on the wire when the worker stops (a long poll), and returns messages later
    class SlowPoll(StubQueue):
        def __post_init__(self):
            super().__post_init__()
            self.polling, self.answer = threading.Event(), threading.Event()

        def receive(self, **kwargs):
            self.polling.set()
            self.answer.wait(30)
            return super().receive(**kwargs)

    queue = SlowPoll()
    for i in range(3):
        queue.put(order(i))
    handled = []
    dispatcher = SQSMessageDispatcher(handler_registry=HandlerRegistry({OrderPlaced.MEDIA_TYPE: handled.append}))
    worker = Worker(consumer=queue.consumer(SchemaRegistry()), dispatcher=dispatcher, grace_period_s=1)
    worker.start()
    assert queue.polling.wait(5)
    # When the worker stops, its join returns without waiting for the poll, and then the poll returns
    worker.stop()
    worker.join()
    queue.answer.set()
    # Then what it received is returned to the queue at once, unhandled
    wait_for(lambda: worker.stats.released == 3, timeout_s=5, what="the late receive to be released")
    assert handled == []
    assert len(StubQueue.receive(queue, max_messages=10, wait_time_seconds=0)) == 3


@pytest.mark.timeout(60)
def test_a_message_whose_handler_ended_before_the_stop_is_deleted_not_given_up():
    # Given a worker whose handler has returned, stopped at the moment that message is no longer counted as
    # running but its delete has not yet been handed to the settling (the window the wire-input test hit)
    queue = StubQueue()
    queue.put(order(0))
    handled = []
    dispatcher = SQSMessageDispatcher(handler_registry=HandlerRegistry({OrderPlaced.MEDIA_TYPE: handled.append}))
    worker = Worker(consumer=queue.consumer(SchemaRegistry()), dispatcher=dispatcher, grace_period_s=10)
    scheduler_finished = worker._scheduler.finished
    in_window = threading.Event()

    def finished_then_wait_for_the_close(tracked, *, retried):
        answer = scheduler_finished(tracked, retried=retried)
        in_window.set()
        deadline = time.monotonic() + 2  # the old order: join closes the settling meanwhile; the new: it can't
        while not worker._settler._closing and time.monotonic() < deadline:
            time.sleep(0.01)
        return answer

    worker._scheduler.finished = finished_then_wait_for_the_close
    worker.start()
    try:
        assert in_window.wait(5)
        # When the worker stops and shuts down
        worker.stop()
        worker.join()
    finally:
        worker.stop()
    # Then the handled message was deleted within the grace period, not left to be redelivered and handled twice
    assert len(handled) == 1
    wait_for(lambda: worker.stats.settled + worker.stats.settle_failed == 1, timeout_s=5, what="the message's end")
    assert (worker.stats.settled, worker.stats.settle_failed) == (1, 0)
    assert queue.depth == 0
