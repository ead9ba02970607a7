"""Produce → SNS → SQS → daemon → handler → deleted, against the emulator over HTTP."""

from __future__ import annotations

import pytest
from microbus.reference.schemas import OrderPlaced, PaymentCaptured
from microcosm.api import create_object_graph, load_from_dict

from microbus import Outcome, Worker
from microbus.consume.dispatch import SQSMessageDispatcher
from microbus.consume.handlers import HandlerRegistry
from microbus.testing import wait_for

pytestmark = pytest.mark.integration


def make_graph(queue):
    graph = create_object_graph("e2e", testing=True, loader=load_from_dict(queue.graph_config()))
    graph.use("microbus_sns_producer", "microbus_sqs_consumer")
    return graph


@pytest.mark.parametrize("raw", [False, True], ids=["enveloped", "raw"])
def test_produced_messages_are_consumed_with_content_and_acked(make_queue, raw):
    # Given a topic with a subscribed queue
    queue = make_queue(raw=raw)
    graph = make_graph(queue)
    # When a message is produced and consumed
    message_id = graph.microbus_sns_producer.produce(OrderPlaced.MEDIA_TYPE, dict(order_id="o-1"), total_cents=250)
    messages = wait_for(lambda: graph.microbus_sqs_consumer.consume(), what="a message")
    # Then its content, media type and opaque data survive the trip
    assert len(messages) == 1
    message = messages[0]
    assert message.error is None
    assert message.media_type == OrderPlaced.MEDIA_TYPE
    assert message.content["order_id"] == "o-1"
    assert message.content["total_cents"] == 250
    assert "x-request-published" in message.opaque_data
    assert message_id
    # And the context manager acks it
    with message:
        pass
    assert queue.depth() == 0


def test_worker_handles_and_deletes_every_message_with_batched_deletes(microbus_queue):
    graph = make_graph(microbus_queue)
    calls = []
    events = graph.sqs_client.meta.events
    for operation in ("DeleteMessage", "DeleteMessageBatch"):
        events.register(f"before-call.sqs.{operation}", lambda model, **kw: calls.append(model.name))
    seen = []
    dispatcher = SQSMessageDispatcher(
        handler_registry=HandlerRegistry({OrderPlaced.MEDIA_TYPE: seen.append, PaymentCaptured.MEDIA_TYPE: seen.append})
    )
    worker = Worker(consumer=graph.microbus_sqs_consumer, dispatcher=dispatcher, concurrency=2)
    worker.start()
    try:
        graph.microbus_sns_producer.produce_batch(OrderPlaced.MEDIA_TYPE, [{"order_id": f"o-{i}"} for i in range(15)])
        graph.microbus_sns_producer.produce_batch(
            PaymentCaptured.MEDIA_TYPE, [{"order_id": "o", "amount_cents": i} for i in range(5)]
        )
        wait_for(lambda: worker.stats.outcomes[Outcome.SUCCEEDED.label] >= 20, what="20 handled")
    finally:
        worker.stop()
        worker.join()
    assert sorted(m["order_id"] for m in seen if m["media_type"] == OrderPlaced.MEDIA_TYPE) == sorted(
        f"o-{i}" for i in range(15)
    )
    assert microbus_queue.depth() == 0
    # Then no message was deleted on its own: acks went out as DeleteMessageBatch
    assert "DeleteMessage" not in calls
    assert 2 <= calls.count("DeleteMessageBatch") < 20
