"""Codec and registry: round trips, validation errors that name the field, registry lookups."""

from __future__ import annotations

import json

import pytest
from marshmallow import EXCLUDE, RAISE, fields
from microbus.reference.schemas import OrderPlaced, PaymentCaptured

from microbus import PubSubMessageSchema, schema
from microbus.consume.message import decode_raw_message
from microbus.errors import (
    ConfigurationError,
    MalformedBodyError,
    MessageValidationError,
    MissingMediaTypeError,
    SchemaViolationError,
    UnknownMediaTypeError,
)
from microbus.wire.envelope import unwrap_envelope
from microbus.wire.schemas import SchemaRegistry


def codec(cls=OrderPlaced):
    return SchemaRegistry().find(cls.MEDIA_TYPE)


def raw(body, message_id="m-1"):
    return {
        "MessageId": message_id,
        "ReceiptHandle": "r-1",
        "Body": body,
        "Attributes": {"ApproximateReceiveCount": "2"},
    }


def test_encode_writes_the_microcosm_pubsub_wire_format():
    text = codec().encode({"order_id": "o-1"}, opaque_data={"x-request-id": "abc"}, uri="https://x/orders/o-1")
    assert json.loads(text) == {
        "mediaType": OrderPlaced.MEDIA_TYPE,
        "opaqueData": {"x-request-id": "abc"},
        "order_id": "o-1",
        "uri": "https://x/orders/o-1",
    }


def test_decode_round_trips_content():
    text = codec(PaymentCaptured).encode(order_id="o-1", amount_cents=5)
    content = codec(PaymentCaptured).decode(text)
    assert content == {"media_type": PaymentCaptured.MEDIA_TYPE, "order_id": "o-1", "amount_cents": 5}


def test_decode_ignores_fields_it_does_not_know():
    content = codec().decode({"mediaType": OrderPlaced.MEDIA_TYPE, "order_id": "o", "added_later": 1})
    assert "added_later" not in content


@pytest.mark.parametrize(
    ("content", "field"),
    [({}, "order_id"), ({"order_id": 5}, "order_id"), ({"order_id": "o", "total_cents": "lots"}, "total_cents")],
)
def test_encode_rejects_invalid_content_naming_the_field(content, field):
    with pytest.raises(MessageValidationError, match=field):
        codec().encode(content)


def test_decode_rejects_a_schema_violation_naming_the_field():
    with pytest.raises(SchemaViolationError, match="amount_cents"):
        codec(PaymentCaptured).decode({"mediaType": PaymentCaptured.MEDIA_TYPE, "order_id": "o"})


@pytest.mark.parametrize("body", ["not json", "[1, 2]", '"text"', "", "{"])
def test_malformed_bodies_are_decode_errors(body):
    with pytest.raises(MalformedBodyError):
        unwrap_envelope(body)


def test_sns_envelope_is_unwrapped_and_raw_body_is_taken_as_is():
    message = {"mediaType": "a/b", "x": 1}
    envelope = {
        "Type": "Notification",
        "MessageId": "sns-1",
        "TopicArn": "arn:aws:sns:us-east-1:1:t",
        "Message": json.dumps(message),
    }
    assert unwrap_envelope(json.dumps(envelope)) == (message, "arn:aws:sns:us-east-1:1:t", "sns-1")
    assert unwrap_envelope(json.dumps(message)) == (message, None, None)


def test_an_envelope_whose_message_is_not_json_is_malformed():
    envelope = {"Type": "Notification", "TopicArn": "arn", "Message": "oops"}
    with pytest.raises(MalformedBodyError):
        unwrap_envelope(json.dumps(envelope))


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ("garbage", MalformedBodyError),
        (json.dumps({"order_id": "o"}), MissingMediaTypeError),
        (json.dumps({"mediaType": "application/vnd.nobody"}), UnknownMediaTypeError),
        (json.dumps({"mediaType": OrderPlaced.MEDIA_TYPE}), SchemaViolationError),
    ],
)
def test_decoding_a_bad_message_records_the_error_instead_of_raising(body, error):
    message = decode_raw_message(raw(body), schema_registry=SchemaRegistry())
    assert isinstance(message.error, error)
    assert message.content is None
    assert message.approximate_receive_count == 2


def test_registry_finds_registered_schemas_and_rejects_unknown_media_types():
    registry = SchemaRegistry()
    assert OrderPlaced.MEDIA_TYPE in registry
    assert registry.find(OrderPlaced.MEDIA_TYPE) is registry.find(OrderPlaced.MEDIA_TYPE)
    with pytest.raises(UnknownMediaTypeError):
        registry.find("application/vnd.nobody")


def test_two_schemas_cannot_claim_one_media_type():
    with pytest.raises(ConfigurationError, match="declared by both"):

        @schema
        class Impostor(PubSubMessageSchema):
            MEDIA_TYPE = OrderPlaced.MEDIA_TYPE
            order_id = fields.String()


class Strict(PubSubMessageSchema):
    """Says outright that it raises on unknown fields (marshmallow's default)."""

    MEDIA_TYPE = "application/vnd.microbus.test.strict"

    order_id = fields.String(required=True)

    class Meta:
        unknown = RAISE


class Lenient(PubSubMessageSchema):
    MEDIA_TYPE = "application/vnd.microbus.test.lenient"

    order_id = fields.String(required=True)

    class Meta:
        unknown = EXCLUDE


def test_encode_keeps_a_uri_given_in_the_content_dict():
    assert json.loads(codec().encode({"order_id": "o", "uri": "https://x/o"}))["uri"] == "https://x/o"


def test_encode_refuses_a_field_given_in_the_dict_and_as_a_keyword_with_different_values():
    with pytest.raises(MessageValidationError, match="uri"):
        codec().encode({"order_id": "o", "uri": "https://x/a"}, uri="https://x/b")


def test_encode_refuses_fields_the_schema_does_not_declare_naming_them():
    with pytest.raises(MessageValidationError, match="coupon_code: Unknown field"):
        codec().encode({"order_id": "o"}, coupon_code="SAVE10")


def test_encode_drops_undeclared_fields_of_a_schema_that_opts_into_exclude():
    registry = SchemaRegistry({Lenient.MEDIA_TYPE: Lenient})
    assert "coupon_code" not in json.loads(registry.find(Lenient.MEDIA_TYPE).encode(order_id="o", coupon_code="x"))


@pytest.mark.parametrize("cls", [OrderPlaced, Strict, Lenient])
def test_decode_accepts_fields_a_newer_producer_added_whatever_the_schema_says_about_unknown(cls):
    registry = SchemaRegistry({cls.MEDIA_TYPE: cls})
    body = json.dumps({"mediaType": cls.MEDIA_TYPE, "order_id": "o", "added_later": 1})
    message = decode_raw_message(raw(body), schema_registry=registry)
    assert message.error is None
    assert message.content == {"media_type": cls.MEDIA_TYPE, "order_id": "o"}
