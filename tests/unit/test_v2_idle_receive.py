"""An idle worker on a queue without long polling (wait_seconds 0) does not spin on ReceiveMessage."""

from __future__ import annotations

import threading

import pytest
from microbus.reference.schemas import OrderPlaced

from microbus import HandlerRegistry, SchemaRegistry, SQSMessageDispatcher, Worker
from microbus.testing import StubQueue


class CountingReceives(StubQueue):
    def __post_init__(self):
        super().__post_init__()
        self.receives = 0

    def receive(self, **kwargs):
        self.receives += 1
        return super().receive(**kwargs)


@pytest.mark.timeout(30)
def test_empty_receives_without_long_polling_are_paced():
    # Given an empty queue consumed with wait_seconds 0 (the stub consumer's setting)
    queue = CountingReceives()
    consumer = queue.consumer(SchemaRegistry())
    assert consumer.wait_seconds == 0
    dispatcher = SQSMessageDispatcher(handler_registry=HandlerRegistry({OrderPlaced.MEDIA_TYPE: lambda c: None}))
    worker = Worker(consumer=consumer, dispatcher=dispatcher, concurrency=2)
    # When the worker runs idle for one second (a measurement window, not a wait for a condition)
    worker.start()
    try:
        before = queue.receives
        threading.Event().wait(1.0)
        calls = queue.receives - before
    finally:
        worker.stop()
        worker.join()
    # Then it polled at a modest rate instead of in a tight loop
    assert calls < 50, f"{calls} receive calls in one second on an empty queue"
