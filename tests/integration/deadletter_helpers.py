"""Helpers for the operations tests: real dead letters, written by a worker that rejects poison messages."""

from __future__ import annotations

import json

from microbus.reference.schemas import OrderPlaced
from microcosm.api import create_object_graph, load_from_dict

from microbus import Worker
from microbus.consume.dispatch import SQSMessageDispatcher
from microbus.consume.handlers import HandlerRegistry
from microbus.testing import wait_for

POISON = {
    "malformed-body": "{not json",
    "unknown-media-type": json.dumps({"mediaType": "application/vnd.nobody", "order_id": "x"}),
    "schema-violation": json.dumps({"mediaType": OrderPlaced.MEDIA_TYPE, "order_id": 7}),
}
"""Bodies a worker dead-letters at once, by the ``microbus.reason`` it gives them."""


def fill_dead_letters(queue, poison: dict[str, str] = POISON) -> None:
    """Send ``poison`` bodies to ``queue`` and run a worker until it dead-lettered all of them."""
    graph = create_object_graph("ops-test", testing=True, loader=load_from_dict(queue.graph_config()))
    graph.use("microbus_sqs_consumer")
    queue.sqs.send_message_batch(
        QueueUrl=queue.queue_url, Entries=[{"Id": str(i), "MessageBody": b} for i, b in enumerate(poison.values())]
    )
    dispatcher = SQSMessageDispatcher(handler_registry=HandlerRegistry({OrderPlaced.MEDIA_TYPE: lambda c: None}))
    worker = Worker(consumer=graph.microbus_sqs_consumer, dispatcher=dispatcher, concurrency=2)
    worker.start()
    try:
        wait_for(lambda: worker.stats.dead_lettered == len(poison), timeout_s=30, what="dead letters")
    finally:
        worker.stop()
        worker.join()
    wait_for(lambda: queue.depth(queue.dlq_url) == len(poison), timeout_s=10, what="the DLQ depth")
