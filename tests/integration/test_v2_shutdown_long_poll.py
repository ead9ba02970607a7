"""Shutdown against the emulator: stop() does not wait out a 20 s long poll on an empty queue."""

from __future__ import annotations

import threading
import time

import pytest
from microbus.reference.schemas import OrderPlaced
from microcosm.api import create_object_graph, load_from_dict

from microbus import HandlerRegistry, SQSMessageDispatcher, Worker

pytestmark = pytest.mark.integration


@pytest.mark.timeout(60)
def test_stop_interrupts_a_long_poll_on_an_empty_queue(make_queue):
    # Given a worker long-polling (20 s) an empty queue on the emulator
    queue = make_queue()
    config = queue.graph_config(microbus_sqs_consumer={"wait_seconds": 20})
    graph = create_object_graph("v2-shutdown-test", testing=True, loader=load_from_dict(config))
    graph.use("microbus_sqs_consumer")
    polling = threading.Event()
    graph.microbus_sqs_consumer.transport.client.meta.events.register(
        "before-send.sqs.ReceiveMessage", lambda **kwargs: polling.set()
    )
    dispatcher = SQSMessageDispatcher(handler_registry=HandlerRegistry({OrderPlaced.MEDIA_TYPE: lambda c: None}))
    worker = Worker(consumer=graph.microbus_sqs_consumer, dispatcher=dispatcher, concurrency=2)
    worker.start()
    joiner = threading.Thread(target=worker.join, daemon=True)
    try:
        assert polling.wait(10), "the worker never polled"
    finally:
        # When it is stopped in the middle of the long poll
        stopping = time.monotonic()
        worker.stop()
        joiner.start()
        joiner.join(25)
        elapsed = time.monotonic() - stopping
    # Then join returns within 3 s
    assert not joiner.is_alive(), "join() did not return within 25 s"
    assert elapsed < 3.0, f"join() took {elapsed:.1f}s after stop()"
