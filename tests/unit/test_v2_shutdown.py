"""Shutdown returns prefetched-but-unstarted messages at once, not after the running handlers finish."""

from __future__ import annotations

import threading

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
