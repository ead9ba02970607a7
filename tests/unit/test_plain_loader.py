"""The plain-schema decoding shortcut gives exactly marshmallow's result, and marshmallow's error, for any input."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from marshmallow import EXCLUDE, ValidationError, fields, post_load, pre_load, validate, validates
from microbus.reference.schemas import OrderPlaced

from microbus.errors import SchemaViolationError
from microbus.wire.codecs import PubSubMessageCodec, PubSubMessageSchema


class Plain(PubSubMessageSchema):
    MEDIA_TYPE = "application/vnd.microbus.test.plain"

    name = fields.String(required=True)
    label = fields.String(data_key="Label", attribute="the_label")
    count = fields.Integer()
    maybe = fields.String(allow_none=True)
    extra = fields.Dict()


class WithValidator(PubSubMessageSchema):
    MEDIA_TYPE = "application/vnd.microbus.test.validated"

    name = fields.String(required=True, validate=validate.Length(max=3))


class WithHooks(PubSubMessageSchema):
    MEDIA_TYPE = "application/vnd.microbus.test.hooks"

    name = fields.String(required=True)

    @pre_load
    def lower(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        return {**data, "name": str(data.get("name", "")).lower()}

    @post_load
    def tag(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        return {**data, "tagged": True}

    @validates("name")
    def not_x(self, value: str, **kwargs: Any) -> None:
        if value == "x":
            raise ValidationError("no x")


class WithDefaults(PubSubMessageSchema):
    MEDIA_TYPE = "application/vnd.microbus.test.defaults"

    name = fields.String(load_default="anonymous")
    when = fields.DateTime()
    strict = fields.Integer(strict=True)
    email = fields.Email()


class Overridden(PubSubMessageSchema):
    MEDIA_TYPE = "application/vnd.microbus.test.overridden"

    name = fields.String()

    def load(self, data: Any, **kwargs: Any) -> Any:
        return {**super().load(data, **kwargs), "overridden": True}


VALUES: list[Any] = ["text", "", "ünï", 0, 7, -3, 2**70, 1.0, 1.5, True, False, None, [], ["a"], {}, {"k": [1]}, "12"]
KEYS = ("mediaType", "name", "Label", "label", "count", "maybe", "extra", "opaqueData", "uri", "when", "strict")


def expected(schema: PubSubMessageSchema, data: dict[str, Any]) -> tuple[str, Any]:
    try:
        return "ok", schema.load(data, unknown=EXCLUDE)
    except ValidationError as exc:
        return "error", exc.messages


def decoded(codec: PubSubMessageCodec, data: dict[str, Any]) -> tuple[str, Any]:
    try:
        return "ok", codec.decode(data)
    except SchemaViolationError as exc:
        return "error", exc


def inputs(media_type: str) -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = [{}, {"mediaType": media_type}]
    for key, value in itertools.product(KEYS, VALUES):
        cases.append({"mediaType": media_type, "name": "n", key: value})
        cases.append({"mediaType": media_type, key: value, "unknown": value})
    return cases


@pytest.mark.parametrize("cls", [Plain, OrderPlaced, WithValidator, WithHooks, WithDefaults, Overridden])
def test_decoding_equals_marshmallow_for_every_input(cls):
    codec = PubSubMessageCodec(cls())
    reference = cls()
    for data in inputs(cls.MEDIA_TYPE):
        outcome, value = expected(reference, data)
        got_outcome, got = decoded(codec, data)
        assert got_outcome == outcome, data
        if outcome == "ok":
            assert got == value and list(got) == list(value), data
            assert all(type(got[key]) is type(value[key]) for key in value), data
        else:
            assert isinstance(got, SchemaViolationError) and isinstance(got.__cause__, ValidationError), data
            assert got.__cause__.messages == value, data


def test_only_plain_schemas_take_the_shortcut_and_a_loaded_dict_is_a_copy():
    assert PubSubMessageCodec(Plain())._plain is not None
    assert PubSubMessageCodec(OrderPlaced())._plain is not None
    for cls in (WithValidator, WithHooks, WithDefaults, Overridden):
        assert PubSubMessageCodec(cls())._plain is None, cls
    opaque = {"x-request-id": "r"}
    content = PubSubMessageCodec(OrderPlaced()).decode(
        {"mediaType": OrderPlaced.MEDIA_TYPE, "order_id": "o", "opaqueData": opaque}
    )
    assert content["opaque_data"] == opaque and content["opaque_data"] is not opaque
