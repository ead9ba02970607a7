"""Settling is not serial: slow deletes run side by side, so one slow DeleteMessageBatch round trip
does not hold up every other ack."""

from __future__ import annotations

import threading
import time

import pytest
from microbus.reference.schemas import OrderPlaced

from microbus import HandlerRegistry, SchemaRegistry, SQSMessageDispatcher, Worker
from microbus.testing import StubQueue, wait_for

DELETE_S = 0.3


class SlowDeleteQueue(StubQueue):
    """Every delete call takes 0.3 s; records when each ran and the most calls in flight at once."""

    def __post_init__(self):
        super().__post_init__()
        self.calls_lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self.calls: list[tuple[float, float]] = []

    def delete_batch(self, receipt_handles):
        with self.calls_lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        started = time.monotonic()
        try:
            time.sleep(DELETE_S)
            return super().delete_batch(receipt_handles)
        finally:
            with self.calls_lock:
                self.in_flight -= 1
                self.calls.append((started, time.monotonic()))


def order(i):
    return {"mediaType": OrderPlaced.MEDIA_TYPE, "order_id": f"o-{i}"}


@pytest.mark.timeout(60)
def test_slow_deletes_run_concurrently():
    # Given 40 messages and deletes that take 0.3 s each
    queue = SlowDeleteQueue()
    for i in range(40):
        queue.put(order(i))
    dispatcher = SQSMessageDispatcher(handler_registry=HandlerRegistry({OrderPlaced.MEDIA_TYPE: lambda c: None}))
    worker = Worker(consumer=queue.consumer(SchemaRegistry()), dispatcher=dispatcher, concurrency=8, prefetch=32)
    # When a worker with 8 handler threads drains them
    worker.start()
    try:
        wait_for(lambda: queue.depth == 0, timeout_s=30, what="every message to be deleted")
    finally:
        worker.stop()
        worker.join()
    # Then several deletes were in flight at once
    most = queue.max_in_flight
    assert most >= 2, f"deletes ran one at a time ({len(queue.calls)} calls)"
    # And the deletes finished well within the time one serial deleter would need for that many calls
    span = max(end for _, end in queue.calls) - min(start for start, _ in queue.calls)
    serial = len(queue.calls) * DELETE_S
    assert span < 0.75 * serial, f"{len(queue.calls)} deletes took {span:.2f}s, serial would take {serial:.2f}s"
