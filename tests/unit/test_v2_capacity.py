"""The worker's capacity (concurrency + prefetch) bounds every message it holds, settled or not:
a message whose handler finished but whose delete has not landed yet still takes a slot."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from microbus.reference.schemas import OrderPlaced

from microbus import HandlerRegistry, SchemaRegistry, SQSMessageDispatcher, Worker
from microbus.testing import StubQueue, wait_for


class SlowDeleteQueue(StubQueue):
    """Deletes take ``delete_s``; tracks the messages received and not yet deleted or released."""

    delete_s = 0.5

    def __post_init__(self):
        super().__post_init__()
        self.track_lock = threading.Lock()
        self.unsettled: set[str] = set()
        self.max_unsettled = 0

    def receive(self, **kwargs):
        out = super().receive(**kwargs)
        with self.track_lock:
            self.unsettled.update(raw["ReceiptHandle"] for raw in out)
            self.max_unsettled = max(self.max_unsettled, len(self.unsettled))
        return out

    def delete_batch(self, receipt_handles):
        time.sleep(self.delete_s)  # a slow DeleteMessageBatch round trip
        failed = super().delete_batch(receipt_handles)
        with self.track_lock:
            self.unsettled.difference_update(receipt_handles)
        return failed

    def change_visibility_batch(self, changes):
        failed = super().change_visibility_batch(changes)
        with self.track_lock:  # a release or a retry settles the message; a heartbeat extension does not
            self.unsettled.difference_update(h for h, s in changes if s != self.visibility_timeout_s)
        return failed


def order(i):
    return {"mediaType": OrderPlaced.MEDIA_TYPE, "order_id": f"o-{i}"}


@pytest.mark.timeout(60)
def test_messages_awaiting_their_delete_count_against_the_capacity():
    # Given 60 messages, deletes that take 0.5 s each, and a worker of capacity 2 + 10
    queue = SlowDeleteQueue()
    for i in range(60):
        queue.put(order(i))
    runs = Counter()
    lock = threading.Lock()

    def handler(content):
        with lock:
            runs[content["order_id"]] += 1

    dispatcher = SQSMessageDispatcher(handler_registry=HandlerRegistry({OrderPlaced.MEDIA_TYPE: handler}))
    worker = Worker(consumer=queue.consumer(SchemaRegistry()), dispatcher=dispatcher, concurrency=2, prefetch=10)
    # When it drains the queue with a no-op handler
    worker.start()
    try:
        wait_for(lambda: queue.depth == 0, timeout_s=40, what="the queue to drain")
    finally:
        worker.stop()
        worker.join()
    # Then it never held more than its capacity of unsettled messages
    most = queue.max_unsettled
    assert most <= 12, f"{most} messages were received and not yet settled at once"
    # And no message was handled twice
    assert sorted(runs) == sorted(f"o-{i}" for i in range(60))
    assert max(runs.values()) == 1
