"""Shutdown returns prefetched-but-unstarted messages at once, not after the running handlers finish."""

from __future__ import annotations

import threading

import pytest

from microbus import HandlerRegistry, SchemaRegistry, SQSMessageDispatcher, Worker
from microbus.testing import StubQueue, wait_for
from schemas import OrderPlaced


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
