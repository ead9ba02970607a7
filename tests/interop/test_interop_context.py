"""Message context against the real microcosm-pubsub 3.0.0: opaqueData (x-request-id, the cid), x-request-ttl
and wildcard media types, through real SNS topics and SQS queues on the emulator, both directions."""

from __future__ import annotations

import json
import subprocess

import pytest
from marshmallow import fields
from microbus.reference.schemas import OrderPlaced, PaymentCaptured
from microcosm.api import create_object_graph, load_from_dict

from microbus import Outcome, PubSubMessageSchema, SQSMessageDispatcher
from microbus.consume.handlers import HandlerRegistry
from microbus.testing import wait_for
from microbus.wire.schemas import SchemaRegistry
from tests.interop.test_interop import peer_python, run_peer  # noqa: F401 - the session fixture

pytestmark = pytest.mark.integration

WILDCARD = "application/vnd.microbus.interop.created.*"
CONCRETE = "application/vnd.microbus.interop.created.order"


class Created(PubSubMessageSchema):
    MEDIA_TYPE = WILDCARD
    uri = fields.String(required=True)


def handle_all(queue, handler, *, count, media_type, schemas=None, producer_queue=None, **options):
    """Consume ``count`` messages of ``queue`` with microbus, ``handler`` for ``media_type``; return the results.

    ``producer_queue``: the topic the graph's producer publishes to (for handlers that produce)."""
    config = queue.graph_config()
    if producer_queue is not None:
        config["microbus_sns_topic_arns"] = {"default": producer_queue.topic_arn}
    graph = create_object_graph("interop", testing=True, loader=load_from_dict(config))
    graph.use("microbus_sns_producer", "microbus_sqs_consumer")
    consumer = graph.microbus_sqs_consumer
    if schemas is not None:
        consumer.schema_registry = SchemaRegistry(schemas)
    dispatcher = SQSMessageDispatcher(handler_registry=HandlerRegistry({media_type: handler(graph)}), **options)
    results = []

    def step():
        for message in consumer.consume():
            result = dispatcher.handle(message)
            dispatcher.apply(result, message, consumer=consumer, ack=consumer.ack)
            results.append(result)
        return len(results) >= count

    wait_for(step, timeout_s=30, what=f"{count} messages handled by microbus")
    return results


def peer_produce(peer_python, queue, media_type, content, opaque, *extra):  # noqa: F811
    result = run_peer(
        peer_python,
        queue,
        "produce",
        "--topic-arn",
        queue.topic_arn,
        "--media-type",
        media_type,
        "--json-content",
        json.dumps(content),
        "--opaque-data",
        json.dumps(opaque),
        *extra,
    )
    assert result.returncode == 0, result.stderr


def peer_consume(peer_python, queue, expect, *extra, timeout="30"):  # noqa: F811
    result = run_peer(
        peer_python,
        queue,
        "consume",
        "--queue-url",
        queue.queue_url,
        "--expect",
        str(expect),
        "--timeout",
        timeout,
        *extra,
    )
    handled = [json.loads(line) for line in result.stdout.splitlines()]
    results = [json.loads(line) for line in result.stderr.splitlines() if line.startswith('{"event": "result"')]
    return result, handled, results


def test_a_microbus_handler_forwards_the_peer_s_context_as_the_peer_would(peer_python, make_queue):  # noqa: F811
    # Given microcosm-pubsub publishing with a request id (mixed case) and a custom opaque entry
    inbound, outbound = make_queue(), make_queue()
    opaque = {"X-Request-Id": "req-7", "x-tenant": "t-1"}
    peer_produce(peer_python, inbound, PaymentCaptured.MEDIA_TYPE, {"order_id": "o-7", "amount_cents": 3}, opaque)

    # When a microbus handler produces a message from it
    def relay(graph):
        return lambda content: graph.microbus_sns_producer.produce(OrderPlaced.MEDIA_TYPE, order_id=content["order_id"])

    (result,) = handle_all(inbound, relay, count=1, media_type=PaymentCaptured.MEDIA_TYPE, producer_queue=outbound)
    assert result.outcome is Outcome.SUCCEEDED
    # Then the peer, consuming it, sees the request id, the custom entry, the TTL one hop lower and a cid
    process, handled, _ = peer_consume(peer_python, outbound, 1)
    assert process.returncode == 0, process.stderr
    (message,) = handled
    assert message["opaque_data"]["x-request-id"] == "req-7"
    assert message["opaque_data"]["x-tenant"] == "t-1"
    assert message["opaque_data"]["x-request-ttl"] == "31"
    assert message["opaque_data"]["x-microbus-cid"]


def test_the_peer_forwards_microbus_s_cid_and_request_id_to_what_its_handler_produces(peer_python, make_queue):  # noqa: F811
    # Given microbus producing from inside a handler (so the message carries its cid) with a request id
    first, second, third = make_queue(), make_queue(), make_queue()
    graph = create_object_graph("interop", testing=True, loader=load_from_dict(first.graph_config()))
    graph.microbus_sns_producer.produce(OrderPlaced.MEDIA_TYPE, order_id="o-1", opaque_data={"x-request-id": "req-1"})
    cids = []

    def relay(graph):
        def handler(content):
            cids.append(content["opaque_data"].get("x-microbus-cid"))
            graph.microbus_sns_producer.produce(OrderPlaced.MEDIA_TYPE, order_id="o-1")

        return handler

    handle_all(first, relay, count=1, media_type=OrderPlaced.MEDIA_TYPE, producer_queue=second)
    # When microcosm-pubsub handles it and its handler publishes again
    process, _, _ = peer_consume(
        peer_python,
        second,
        1,
        "--relay-media-type",
        OrderPlaced.MEDIA_TYPE,
        "--relay-topic-arn",
        third.topic_arn,
    )
    assert process.returncode == 0, process.stderr
    # Then microbus, consuming the peer's message, has the cid of the first hop and the request id
    seen = []
    handle_all(third, lambda graph: lambda content: seen.append(content), count=1, media_type=OrderPlaced.MEDIA_TYPE)
    opaque = seen[0]["opaque_data"]
    assert opaque["x-request-id"] == "req-1"
    assert opaque["x-microbus-cid"] and opaque["x-microbus-cid"] not in cids  # the first hop had none: its own id
    assert opaque["x-request-ttl"] == "30"  # 32 - microbus's hop - the peer's hop


def test_a_ttl_counts_down_across_both_and_both_drop_the_expired_message(peer_python, make_queue):  # noqa: F811
    # Given the peer publishing a message with two hops left
    first, second, third = make_queue(), make_queue(), make_queue()
    peer_produce(peer_python, first, OrderPlaced.MEDIA_TYPE, {"order_id": "o-1"}, {"x-request-ttl": "3"})

    def relay(graph):
        return lambda content: graph.microbus_sns_producer.produce(OrderPlaced.MEDIA_TYPE, order_id="o-1")

    # When microbus relays it (3 → 2), the peer relays it (2 → 1)
    (result,) = handle_all(first, relay, count=1, media_type=OrderPlaced.MEDIA_TYPE, producer_queue=second)
    assert result.outcome is Outcome.SUCCEEDED
    process, handled, _ = peer_consume(
        peer_python, second, 1, "--relay-media-type", OrderPlaced.MEDIA_TYPE, "--relay-topic-arn", third.topic_arn
    )
    assert process.returncode == 0, process.stderr
    assert handled[0]["opaque_data"]["x-request-ttl"] == "2"
    # Then microbus drops the third hop without calling its handler, and deletes it
    called = []
    (expired,) = handle_all(third, lambda graph: called.append, count=1, media_type=OrderPlaced.MEDIA_TYPE)
    assert expired.outcome is Outcome.SKIPPED and expired.reason == "ttl-expired"
    assert called == []
    wait_for(lambda: third.depth() == 0, timeout_s=10, what="the expired message deleted")


def test_the_peer_drops_what_microbus_marks_expired(peer_python, make_queue):  # noqa: F811
    queue = make_queue()
    graph = create_object_graph("interop", testing=True, loader=load_from_dict(queue.graph_config()))
    graph.microbus_sns_producer.produce(OrderPlaced.MEDIA_TYPE, order_id="o-1", opaque_data={"X-Request-TTL": "1"})
    graph.microbus_sns_producer.produce(OrderPlaced.MEDIA_TYPE, order_id="o-2")
    process, handled, results = peer_consume(peer_python, queue, 1, timeout="15")
    assert process.returncode == 0, process.stderr
    assert [h["content"]["order_id"] for h in handled] == ["o-2"]
    wait_for(lambda: queue.depth() == 0, timeout_s=10, what="the peer's deletes")
    assert sorted(r["result"] for r in results) == ["EXPIRED", "SUCCEEDED"]


def test_wildcard_media_types_interoperate(peer_python, make_queue):  # noqa: F811
    # Given the peer publishing a concrete media type through its wildcard schema
    queue = make_queue()
    peer_produce(peer_python, queue, CONCRETE, {}, {}, "--schema", f"{WILDCARD}=uri:String", "--uri", "http://orders/1")
    # When microbus consumes it with a wildcard schema and handler
    seen = []
    (result,) = handle_all(
        queue,
        lambda graph: lambda content: seen.append(content),
        count=1,
        media_type=WILDCARD,
        schemas={WILDCARD: Created},
    )
    # Then the handler got the concrete media type and the content
    assert result.outcome is Outcome.SUCCEEDED
    assert seen[0]["media_type"] == CONCRETE and seen[0]["uri"] == "http://orders/1"


def test_the_peer_decodes_a_wildcard_media_type_but_finds_no_handler_for_it(peer_python, make_queue):  # noqa: F811
    # Given microbus producing a concrete media type through its wildcard schema
    queue = make_queue()
    graph = create_object_graph("interop", testing=True, loader=load_from_dict(queue.graph_config()))
    graph.microbus_sns_producer.schema_registry = SchemaRegistry({WILDCARD: Created})
    graph.microbus_sns_producer.produce(CONCRETE, uri="http://orders/1")
    # When microcosm-pubsub 3.0.0 consumes it with a handler registered for the wildcard
    process, handled, results = peer_consume(peer_python, queue, 1, "--schema", f"{WILDCARD}=uri:String", timeout="8")
    # Then its schema lookup matches the wildcard, but its handler lookup is exact: IGNORED, and deleted
    assert handled == []
    assert [r["result"] for r in results] == ["IGNORED"]
    wait_for(lambda: queue.depth() == 0, timeout_s=10, what="the peer's delete")


def test_convention_media_types_match_the_peer_s(peer_python):  # noqa: F811
    from microbus.compat.conventions import changed, created, deleted

    resources = ["order", "OrderLine", "order-line", "HTTPRequest"]
    code = (
        "import json, sys; from microcosm_pubsub.conventions import changed, created, deleted; "
        "print(json.dumps([[f(r) for f in (created, changed, deleted)] for r in json.loads(sys.argv[1])]))"
    )
    result = subprocess.run(
        [str(peer_python), "-c", code, json.dumps(resources)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [[f(r) for f in (created, changed, deleted)] for r in resources]
