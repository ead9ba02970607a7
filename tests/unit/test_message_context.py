"""The message context: the cid is set around every handler, and the cid, x-request-id, x-request-ttl and
the rest of opaqueData travel to the messages a handler produces (microcosm-pubsub's SQSMessageContext)."""

from __future__ import annotations

import asyncio
import json

import boto3
import pytest
from marshmallow import fields
from microbus.reference.schemas import OrderPlaced, PaymentCaptured

from microbus import (
    ConfigurationError,
    MessageValidationError,
    Outcome,
    PubSubMessageSchema,
    SNSProducer,
    TopicArns,
    current_cid,
)
from microbus.consume.dispatch import SQSMessageDispatcher
from microbus.consume.handlers import HandlerRegistry
from microbus.testing import StubQueue
from microbus.wire.schemas import SchemaRegistry
from microbus.wire.transport import SNSTransport

TOPIC = "arn:aws:sns:us-east-1:123456789012:orders"


def producer():
    client = boto3.client("sns", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    return SNSProducer(
        transport=SNSTransport(client=client), schema_registry=SchemaRegistry(), topic_arns=TopicArns(default=TOPIC)
    )


def handle(handler, opaque=None, *, asynchronous=False, **options):
    """Handle one OrderPlaced message carrying ``opaque`` as its opaqueData; return the result and message."""
    queue = StubQueue()
    body = {"mediaType": OrderPlaced.MEDIA_TYPE, "order_id": "o-1"}
    if opaque is not None:
        body["opaqueData"] = opaque
    queue.put(body)
    (message,) = queue.consumer(SchemaRegistry()).consume()
    dispatcher = SQSMessageDispatcher(handler_registry=HandlerRegistry({OrderPlaced.MEDIA_TYPE: handler}), **options)
    if asynchronous:
        return asyncio.run(dispatcher.handle_async(message)), message
    return dispatcher.handle(message), message


def produced_opaque(outgoing):
    return json.loads(outgoing.message)["opaqueData"]


def test_the_cid_is_set_while_any_handler_runs_and_cleared_after():
    # Given a plain handler (not a parallel-execution target) that reads the cid
    seen = []
    result, message = handle(lambda content: seen.append(current_cid()))
    # Then it saw a cid: the message's most stable id, as no cid came with it
    assert result.outcome is Outcome.SUCCEEDED
    assert seen == [message.idempotency_key]
    assert current_cid() is None


def test_the_cid_of_an_async_handler_is_its_messages():
    async def on_order(content):
        await asyncio.sleep(0)
        return current_cid()

    result, _ = handle(on_order, {"x-microbus-cid": "cid-7"}, asynchronous=True)
    assert result.response == "cid-7"


def test_a_message_produced_from_a_handler_carries_the_cid_request_id_and_opaque_data():
    # Given a message with a request id (in the case a web framework wrote it), a cid and custom context
    sent = []
    sns = producer()

    def on_order(content):
        sent.append(sns.create_message(PaymentCaptured.MEDIA_TYPE, order_id="o-1", amount_cents=5))

    inbound = {"X-Request-Id": "req-1", "x-microbus-cid": "cid-1", "x-user-id": "u-9", "x-request-published": "1.0"}
    handle(on_order, inbound)
    # Then the produced message carries them, lower-cased like microcosm-pubsub, with its own publish time and id
    opaque = produced_opaque(sent[0])
    assert opaque["x-request-id"] == "req-1"
    assert opaque["x-microbus-cid"] == "cid-1"
    assert opaque["x-user-id"] == "u-9"
    assert opaque["x-request-ttl"] == "31"
    assert opaque["x-request-published"] != "1.0"
    assert "X-Request-Id" not in opaque


def test_the_caller_s_opaque_data_wins_over_the_inherited_context():
    sent = []
    sns = producer()

    def on_order(content):
        sent.append(
            sns.create_message(
                PaymentCaptured.MEDIA_TYPE, order_id="o-1", amount_cents=5, opaque_data={"X-Request-Id": "req-2"}
            )
        )

    handle(on_order, {"x-request-id": "req-1"})
    assert produced_opaque(sent[0])["x-request-id"] == "req-2"


def test_per_message_microbus_keys_are_not_forwarded():
    # Given a parallel-execution target producing a message of its own
    sent = []
    sns = producer()
    inbound = {
        "x-microbus-cid": "cid-1",
        "x-microbus-reply-to": "https://queue/callbacks",
        "x-microbus-on-target": "[]",
        "x-microbus-message-id": "m-parent",
    }
    handle(lambda content: sent.append(sns.create_message(OrderPlaced.MEDIA_TYPE, order_id="o-2")), inbound)
    opaque = produced_opaque(sent[0])
    # Then the cid travels, but not the reply queue (the child is no target) nor the parent's message id
    assert opaque["x-microbus-cid"] == "cid-1"
    assert "x-microbus-reply-to" not in opaque and "x-microbus-on-target" not in opaque
    assert opaque["x-microbus-message-id"] != "m-parent"


def test_outside_a_handler_nothing_is_inherited():
    opaque = produced_opaque(producer().create_message(OrderPlaced.MEDIA_TYPE, order_id="o-1"))
    assert set(opaque) == {"x-request-published", "x-microbus-message-id"}


def test_non_string_and_oversized_opaque_values_are_handled_and_not_forwarded():
    sent = []
    sns = producer()
    inbound = {"x-number": 7, "x-nested": {"a": "b"}, "x-big": "v" * 9000, "x-ok": "yes"}
    result, _ = handle(lambda content: sent.append(sns.create_message(OrderPlaced.MEDIA_TYPE, order_id="o")), inbound)
    assert result.outcome is Outcome.SUCCEEDED
    opaque = produced_opaque(sent[0])
    assert opaque["x-ok"] == "yes"
    assert not {"x-number", "x-nested", "x-big"} & set(opaque)


def test_opaque_data_keys_are_read_case_insensitively():
    _, message = handle(lambda content: None, {"X-Microbus-Message-Id": "m-1", "X-Request-Id": "r"})
    assert message.idempotency_key == "m-1"
    assert message.opaque_data["x-request-id"] == message.opaque_data["X-REQUEST-ID"] == "r"


# x-request-ttl, as microcosm-pubsub counts it: a message without one starts at 32, each hop takes one off,
# and a message that arrives at 1 or below has expired (a loop) and is dropped.


def test_a_message_whose_ttl_ran_out_is_dropped_without_calling_its_handler(caplog):
    called = []
    result, _ = handle(called.append, {"x-request-ttl": "1"})
    assert called == []
    assert result.outcome is Outcome.SKIPPED and result.outcome.action.value == "ack"
    assert result.reason == "ttl-expired"
    assert "x-request-ttl" in caplog.text and "dropped" in caplog.text


def test_an_expired_message_can_be_dead_lettered_instead():
    result, _ = handle(lambda content: None, {"X-Request-TTL": "0"}, dead_letter_expired_ttl=True)
    assert result.outcome is Outcome.REJECTED and result.reason == "ttl-expired"


def test_the_ttl_is_decremented_for_the_messages_a_handler_produces():
    sent = []
    sns = producer()
    result, _ = handle(
        lambda c: sent.append(sns.create_message(OrderPlaced.MEDIA_TYPE, order_id="o")), {"x-request-ttl": "2"}
    )
    assert result.outcome is Outcome.SUCCEEDED
    assert produced_opaque(sent[0])["x-request-ttl"] == "1"


def test_with_the_ttl_disabled_nothing_expires_or_is_stamped():
    sent = []
    sns = producer()
    inbound = {"x-request-ttl": "0"}
    handler = lambda c: sent.append(sns.create_message(OrderPlaced.MEDIA_TYPE, order_id="o"))  # noqa: E731
    result, _ = handle(handler, inbound, initial_ttl=None)
    assert result.outcome is Outcome.SUCCEEDED
    assert "x-request-ttl" not in produced_opaque(sent[0])


@pytest.mark.parametrize("value", ["abc", "", "2.5", "9" * 5000, [1], {"a": 1}, True, None, 10**20])
def test_a_malformed_ttl_is_logged_and_handled_as_if_absent(caplog, value):
    sent = []
    sns = producer()
    handler = lambda c: sent.append(sns.create_message(OrderPlaced.MEDIA_TYPE, order_id="o"))  # noqa: E731
    result, _ = handle(handler, {"x-request-ttl": value})
    assert result.outcome is Outcome.SUCCEEDED
    assert produced_opaque(sent[0])["x-request-ttl"] == "31"
    assert "malformed x-request-ttl" in caplog.text
    assert all(len(record.getMessage()) < 400 for record in caplog.records)


@pytest.mark.parametrize(("value", "expired"), [(3, False), ("-5", True), (" 7 ", False), ("99999999999", False)])
def test_integer_ttls_as_numbers_or_text(value, expired):
    result, _ = handle(lambda content: None, {"x-request-ttl": value})
    assert (result.reason == "ttl-expired") is expired


def test_opaque_data_that_is_not_an_object_is_a_schema_violation_not_a_crash():
    result, _ = handle(lambda content: None, "not-a-map")
    assert result.outcome is Outcome.REJECTED and result.reason == "schema-violation"


def test_opaque_keys_that_differ_only_in_case_are_refused_on_produce():
    with pytest.raises(MessageValidationError, match="differ only in case"):
        producer().create_message(OrderPlaced.MEDIA_TYPE, order_id="o", opaque_data={"X-A": "1", "x-a": "2"})


# Wildcard media types, as microcosm-pubsub matches them: ``prefix.*`` matches one more dot-separated part.

WILDCARD = "application/vnd.microbus.test.created.*"


def test_a_wildcard_schema_and_handler_handle_every_media_type_it_matches():
    class Created(PubSubMessageSchema):
        MEDIA_TYPE = WILDCARD
        uri = fields.String(required=True)

    registry = SchemaRegistry({WILDCARD: Created})
    handlers = HandlerRegistry({WILDCARD: lambda content: content["media_type"]})
    dispatcher = SQSMessageDispatcher(handler_registry=handlers)
    queue = StubQueue()
    for media_type in ("application/vnd.microbus.test.created.order", "application/vnd.microbus.test.created.a.b"):
        queue.put({"mediaType": media_type, "uri": "http://x/1"})
    first, second = sorted(queue.consumer(registry).consume(), key=lambda m: m.error is not None)
    assert dispatcher.handle(first).response == "application/vnd.microbus.test.created.order"
    # one part only, as the peer: a.b is two
    assert second.error is not None and second.error.reason == "unknown-media-type"
    assert handlers.find("application/vnd.microbus.test.created") is None
    assert handlers.find(WILDCARD) is not None


def test_an_exact_registration_wins_over_the_wildcard():
    exact = "application/vnd.microbus.test.created.order"
    handlers = HandlerRegistry({WILDCARD: lambda c: "wild", exact: lambda c: "exact"})
    assert handlers.find(exact)({}) == "exact"
    assert handlers.find("application/vnd.microbus.test.created.other")({}) == "wild"


def test_forwarded_opaque_data_is_bounded_in_total_and_a_huge_cid_is_not_taken():
    sent = []
    sns = producer()
    inbound = {f"x-k{i}": "v" * 8000 for i in range(10)} | {"x-microbus-cid": "c" * 300}
    result, message = handle(lambda c: sent.append(sns.create_message(OrderPlaced.MEDIA_TYPE, order_id="o")), inbound)
    assert result.outcome is Outcome.SUCCEEDED
    opaque = produced_opaque(sent[0])
    assert len(sent[0].message) < 20_000
    assert opaque["x-k0"] and opaque["x-k1"] and "x-k2" not in opaque
    assert opaque["x-microbus-cid"] == message.idempotency_key


@pytest.mark.parametrize("value", ["abc", 0, "-1", None])
def test_a_malformed_initial_ttl_in_the_configuration_is_one_sentence(value):
    from microcosm.api import create_object_graph, load_from_dict

    config = {
        "microbus_sqs_message_dispatcher": {"initial_ttl": value},
        "microbus_sqs_message_handler_registry": {"media_types": []},
    }
    graph = create_object_graph("ttl", testing=True, loader=load_from_dict(config))
    with pytest.raises(ConfigurationError, match="initial_ttl must be a positive integer"):
        graph.use("microbus_sqs_message_dispatcher")


def test_the_ttl_configuration_reaches_the_dispatcher():
    from microcosm.api import create_object_graph, load_from_dict

    config = {
        "microbus_sqs_message_dispatcher": {"initial_ttl": "5", "dead_letter_expired_ttl": "true"},
        "microbus_sqs_message_handler_registry": {"media_types": []},
    }
    dispatcher = create_object_graph("ttl", testing=True, loader=load_from_dict(config)).microbus_sqs_message_dispatcher
    assert (dispatcher.initial_ttl, dispatcher.dead_letter_expired_ttl) == (5, True)
    off = {
        "microbus_sqs_message_dispatcher": {"enable_ttl": "false"},
        "microbus_sqs_message_handler_registry": {"media_types": []},
    }
    assert (
        create_object_graph("ttl", testing=True, loader=load_from_dict(off)).microbus_sqs_message_dispatcher.initial_ttl
        is None
    )
