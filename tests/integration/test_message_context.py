"""The message context in a running Worker on the emulator: every handler, sync or async, sees its message's
cid, and what it produces carries the cid, x-request-id and the TTL one hop lower; an expired message is
dropped (deleted) without its handler running, and a malformed TTL loses nothing."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import pytest
from microbus.reference.schemas import OrderPlaced, PaymentCaptured
from microcosm.api import create_object_graph, load_from_dict

from microbus import HandlerRegistry, SchemaRegistry, SQSConsumer, SQSMessageDispatcher, Worker, current_cid
from microbus.testing import wait_for
from microbus.wire.transport import SQSTransport

pytestmark = pytest.mark.integration


def make_worker(queue, handlers, **options):
    settings = dataclasses.replace(queue.endpoint.settings(), max_pool_connections=32)
    consumer = SQSConsumer(
        transport=SQSTransport(client=settings.client("sqs"), queue_url=queue.queue_url),
        schema_registry=SchemaRegistry(),
        wait_seconds=1,
    )
    dispatcher = SQSMessageDispatcher(handler_registry=HandlerRegistry(handlers), **options)
    return Worker(consumer=consumer, dispatcher=dispatcher, concurrency=4)


def send(queue, media_type, content, opaque):
    body = {"mediaType": media_type, "opaqueData": opaque, **content}
    queue.sqs.send_message(QueueUrl=queue.queue_url, MessageBody=json.dumps(body))


def test_sync_and_async_handlers_pass_their_context_on_through_sns(make_queue):
    # Given a worker whose sync and async handlers each produce a message to a second topic
    inbound, outbound = make_queue(), make_queue()
    graph = create_object_graph("context", testing=True, loader=load_from_dict(outbound.graph_config()))
    graph.use("microbus_sns_producer", "microbus_sqs_consumer")  # resolved before the handler threads share them
    seen = {}

    def on_order(content):
        seen[content["order_id"]] = current_cid()
        graph.microbus_sns_producer.produce(OrderPlaced.MEDIA_TYPE, order_id=content["order_id"] + "-next")

    async def on_payment(content):
        await asyncio.sleep(0.01)
        seen[content["order_id"]] = current_cid()
        graph.microbus_sns_producer.produce(OrderPlaced.MEDIA_TYPE, order_id=content["order_id"] + "-next")

    worker = make_worker(inbound, {OrderPlaced.MEDIA_TYPE: on_order, PaymentCaptured.MEDIA_TYPE: on_payment})
    worker.start()
    try:
        # When messages with a request id arrive, one with a cid of its own
        send(inbound, OrderPlaced.MEDIA_TYPE, {"order_id": "sync"}, {"X-Request-Id": "r-1", "x-microbus-cid": "c-1"})
        send(inbound, PaymentCaptured.MEDIA_TYPE, {"order_id": "async", "amount_cents": 1}, {"x-request-id": "r-2"})
        wait_for(lambda: len(seen) == 2, timeout_s=20, what="both handlers")
    finally:
        worker.stop()
        worker.join()
    # Then each handler saw a cid, and each produced message carries it with the request id and TTL 31
    assert seen["sync"] == "c-1" and seen["async"]
    received = {}

    def receive():
        received.update({m.content["order_id"]: m.opaque_data for m in graph.microbus_sqs_consumer.consume()})
        return len(received) == 2

    wait_for(receive, timeout_s=20, what="the produced messages")
    assert received["sync-next"]["x-microbus-cid"] == "c-1"
    assert received["async-next"]["x-microbus-cid"] == seen["async"]
    assert [received[k]["x-request-id"] for k in ("sync-next", "async-next")] == ["r-1", "r-2"]
    assert {received[k]["x-request-ttl"] for k in received} == {"31"}


def test_an_expired_message_is_deleted_unhandled_and_a_malformed_ttl_is_handled(make_queue, caplog):
    queue = make_queue()
    handled = []
    worker = make_worker(queue, {OrderPlaced.MEDIA_TYPE: lambda content: handled.append(content["order_id"])})
    worker.start()
    try:
        send(queue, OrderPlaced.MEDIA_TYPE, {"order_id": "expired"}, {"x-request-ttl": "1"})
        send(queue, OrderPlaced.MEDIA_TYPE, {"order_id": "malformed"}, {"x-request-ttl": "soon"})
        send(queue, OrderPlaced.MEDIA_TYPE, {"order_id": "wrong-type"}, {"x-request-ttl": ["1"]})
        wait_for(lambda: len(handled) == 2 and queue.depth() == 0, timeout_s=20, what="three messages settled")
    finally:
        worker.stop()
        worker.join()
    assert sorted(handled) == ["malformed", "wrong-type"]
    assert queue.drain_dlq() == []
    assert "used up its x-request-ttl" in caplog.text and "malformed x-request-ttl 'soon'" in caplog.text


def test_an_expired_message_can_go_to_the_dlq_instead(make_queue):
    queue = make_queue()
    worker = make_worker(queue, {OrderPlaced.MEDIA_TYPE: lambda content: None}, dead_letter_expired_ttl=True)
    worker.start()
    try:
        send(queue, OrderPlaced.MEDIA_TYPE, {"order_id": "expired"}, {"x-request-ttl": "0"})
        dead = wait_for(queue.drain_dlq, timeout_s=20, what="the dead letter")
    finally:
        worker.stop()
        worker.join()
    assert dead[0]["MessageAttributes"]["microbus.reason"]["StringValue"] == "ttl-expired"
