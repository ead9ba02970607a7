"""The heartbeat keeps a message invisible until it is settled (deleted, retried or released),
not just until its handler returns: a slow delete must not let the message reappear."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from microbus.reference.schemas import OrderPlaced

from microbus import HandlerRegistry, SchemaRegistry, SQSMessageDispatcher, Worker
from microbus.testing import StubQueue, wait_for


class SlowDeleteQueue(StubQueue):
    """Deletes take 3 s, longer than the 2 s visibility timeout."""

    def delete_batch(self, receipt_handles):
        time.sleep(3.0)
        return super().delete_batch(receipt_handles)


def order(i):
    return {"mediaType": OrderPlaced.MEDIA_TYPE, "order_id": f"o-{i}"}


@pytest.mark.timeout(60)
def test_a_message_awaiting_a_slow_delete_does_not_reappear():
    # Given a queue with a 2 s visibility timeout whose deletes take 3 s
    queue = SlowDeleteQueue(visibility_timeout_s=2)
    for i in range(5):
        queue.put(order(i))
    runs = Counter()
    lock = threading.Lock()

    def handler(content):
        with lock:
            runs[content["order_id"]] += 1

    dispatcher = SQSMessageDispatcher(handler_registry=HandlerRegistry({OrderPlaced.MEDIA_TYPE: handler}))
    worker = Worker(
        consumer=queue.consumer(SchemaRegistry()), dispatcher=dispatcher, concurrency=2, heartbeat_fraction=0.5
    )
    # When the worker handles them
    worker.start()
    try:
        wait_for(
            lambda: queue.depth == 0 or (runs and max(runs.values()) > 1),
            timeout_s=30,
            what="the queue to drain (or a message to be handled twice)",
        )
    finally:
        worker.stop()
        worker.join()
    # Then each message was handled exactly once, and deleted
    assert dict(runs) == {f"o-{i}": 1 for i in range(5)}
    assert queue.depth == 0
