"""What the producer puts in a message: content from a dict and from keywords, merged; undeclared fields refused."""

from __future__ import annotations

import json

import boto3
import pytest
from botocore.stub import Stubber
from marshmallow import EXCLUDE, fields
from microbus.reference.schemas import OrderPlaced

from microbus import MessageValidationError, PubSubMessageSchema, SNSProducer, TopicArns
from microbus.wire.schemas import SchemaRegistry
from microbus.wire.transport import SNSTransport

TOPIC = "arn:aws:sns:us-east-1:123456789012:resources"
CREATED = "application/vnd.globality.pubsub._.created.order"
LENIENT = "application/vnd.microbus.test.lenient"


class URIMessage(PubSubMessageSchema):
    """microcosm-pubsub's convention: a change to a resource, which the message names by its required ``uri``."""

    MEDIA_TYPE = CREATED

    uri = fields.String(required=True)


class Lenient(PubSubMessageSchema):
    """A schema that opts into dropping what it does not declare."""

    MEDIA_TYPE = LENIENT

    order_id = fields.String(required=True)

    class Meta:
        unknown = EXCLUDE


@pytest.fixture
def sns():
    client = boto3.client("sns", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    calls: list[dict] = []
    client.meta.events.register("provide-client-params.sns.*", lambda params, **_: calls.append(dict(params)))
    with Stubber(client) as stubber:
        yield client, stubber, calls
        stubber.assert_no_pending_responses()


def producer(client, **options):
    return SNSProducer(
        transport=SNSTransport(client=client),
        schema_registry=SchemaRegistry({CREATED: URIMessage, LENIENT: Lenient, OrderPlaced.MEDIA_TYPE: OrderPlaced}),
        topic_arns=TopicArns(default=TOPIC),
        retry_base_s=0.0,
        **options,
    )


def wire(outgoing):
    return json.loads(outgoing.message)


# --- defect 1: content as a dict and as keywords merges without losing a field


def test_a_uri_inside_the_content_dict_is_kept(sns):
    client, _, _ = sns
    outgoing = producer(client).create_message(CREATED, {"uri": "https://x/orders/o-1"})
    assert wire(outgoing)["uri"] == "https://x/orders/o-1"


def test_an_optional_uri_inside_the_content_dict_is_kept(sns):
    client, _, _ = sns
    outgoing = producer(client).create_message(OrderPlaced.MEDIA_TYPE, {"order_id": "o-1", "uri": "https://x/o-1"})
    assert wire(outgoing)["uri"] == "https://x/o-1"


def test_a_batch_of_contents_with_required_uris_is_published(sns):
    # Given a schema whose uri is required, and contents that carry it (the only way produce_batch takes content)
    client, stubber, calls = sns
    stubber.add_response(
        "publish_batch", {"Successful": [{"Id": str(i), "MessageId": f"m{i}"} for i in range(2)], "Failed": []}
    )
    # When the batch is produced
    ids = producer(client).produce_batch(CREATED, [{"uri": "https://x/orders/1"}, {"uri": "https://x/orders/2"}])
    # Then both went out with their uris
    assert ids == ["m0", "m1"]
    entries = calls[-1]["PublishBatchRequestEntries"]
    assert [json.loads(e["Message"])["uri"] for e in entries] == ["https://x/orders/1", "https://x/orders/2"]


def test_dict_and_keyword_content_merge(sns):
    client, _, _ = sns
    outgoing = producer(client).create_message(
        OrderPlaced.MEDIA_TYPE, {"order_id": "o-1"}, uri="https://x/o-1", customer_id="c-7"
    )
    assert wire(outgoing) | {"opaqueData": None} == {
        "mediaType": OrderPlaced.MEDIA_TYPE,
        "opaqueData": None,
        "order_id": "o-1",
        "customer_id": "c-7",
        "uri": "https://x/o-1",
    }


def test_opaque_data_inside_the_content_dict_is_kept_with_the_producers_own(sns):
    client, _, _ = sns
    outgoing = producer(client, opaque=lambda: {"x-request-id": "req-1"}).create_message(
        OrderPlaced.MEDIA_TYPE, {"order_id": "o-1", "opaque_data": {"x-tenant": "t-1"}}
    )
    opaque = wire(outgoing)["opaqueData"]
    assert opaque["x-tenant"] == "t-1"
    assert opaque["x-request-id"] == "req-1"
    assert "x-microbus-message-id" in opaque


def test_the_same_value_in_the_dict_and_as_a_keyword_is_no_conflict(sns):
    client, _, _ = sns
    outgoing = producer(client).create_message(
        CREATED, {"uri": "https://x/o-1", "media_type": CREATED}, uri="https://x/o-1"
    )
    assert wire(outgoing)["uri"] == "https://x/o-1"


@pytest.mark.parametrize(
    ("dct", "keywords", "field"),
    [
        ({"order_id": "o-1", "uri": "https://x/a"}, {"uri": "https://x/b"}, "uri"),
        ({"order_id": "o-1"}, {"order_id": "o-2"}, "order_id"),
        ({"order_id": "o-1", "opaque_data": {"a": "1"}}, {"opaque_data": {"a": "2"}}, "opaque_data"),
        ({"order_id": "o-1", "media_type": "application/vnd.other"}, {}, "media_type"),
    ],
)
def test_a_field_given_twice_with_different_values_is_an_error_naming_it(sns, dct, keywords, field):
    client, _, _ = sns  # no response queued: any call would fail the stubber
    with pytest.raises(MessageValidationError, match=field):
        producer(client).produce(OrderPlaced.MEDIA_TYPE, dct, **keywords)


# --- defect 2: fields the schema does not declare are refused on produce, unless it opts into EXCLUDE


def test_a_field_the_schema_does_not_declare_is_refused_naming_it(sns):
    client, _, _ = sns
    with pytest.raises(MessageValidationError, match="coupon_code") as caught:
        producer(client).produce(OrderPlaced.MEDIA_TYPE, {"order_id": "o-1"}, coupon_code="SAVE10")
    assert "order_id" not in str(caught.value)


def test_every_undeclared_field_is_named(sns):
    client, _, _ = sns
    with pytest.raises(MessageValidationError, match="coupon_code.*gift_wrap"):
        producer(client).produce(OrderPlaced.MEDIA_TYPE, {"order_id": "o-1", "gift_wrap": True, "coupon_code": "x"})


def test_an_undeclared_field_in_a_batch_fails_before_any_network_call(sns):
    client, _, _ = sns
    with pytest.raises(MessageValidationError, match="colour"):
        producer(client).produce_batch(OrderPlaced.MEDIA_TYPE, [{"order_id": "1"}, {"order_id": "2", "colour": "red"}])


def test_a_wire_name_is_not_a_content_name(sns):
    # mediaType is the wire name of media_type: given as content it would be dropped, so it is refused
    client, _, _ = sns
    with pytest.raises(MessageValidationError, match="mediaType"):
        producer(client).create_message(OrderPlaced.MEDIA_TYPE, {"order_id": "o-1", "mediaType": "x/y"})


def test_a_declared_optional_field_is_kept(sns):
    # README's example: customer_id is declared (optional) by OrderPlaced
    client, _, _ = sns
    outgoing = producer(client).create_message(OrderPlaced.MEDIA_TYPE, dict(order_id="o-1"), customer_id="c-7")
    assert wire(outgoing)["customer_id"] == "c-7"


def test_a_schema_that_opts_into_exclude_drops_undeclared_fields(sns):
    client, _, _ = sns
    outgoing = producer(client).create_message(LENIENT, {"order_id": "o-1"}, coupon_code="SAVE10")
    assert "coupon_code" not in wire(outgoing)
    assert wire(outgoing)["order_id"] == "o-1"
