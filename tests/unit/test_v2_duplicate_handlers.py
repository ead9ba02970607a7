"""Registering a second, different handler for a media type is a configuration error, unless asked for."""

from __future__ import annotations

import uuid

import pytest
from marshmallow import fields

from microbus import ConfigurationError, HandlerRegistry, PubSubMessageSchema, handles


def throwaway_schema():
    media_type = f"application/vnd.microbus.v2-test.{uuid.uuid4().hex}"

    class ThrowawaySchema(PubSubMessageSchema):
        MEDIA_TYPE = media_type
        order_id = fields.String(required=True)

    return ThrowawaySchema


def first_v2_handler(content):
    return "first"


def second_v2_handler(content):
    return "second"


def test_a_second_handler_for_a_media_type_raises_naming_both():
    # Given a media type with a handler
    schema = throwaway_schema()
    handles(schema)(first_v2_handler)
    # When another handler is registered for it
    # Then registration fails, naming both handlers
    with pytest.raises(ConfigurationError) as raised:
        handles(schema)(second_v2_handler)
    assert "first_v2_handler" in str(raised.value)
    assert "second_v2_handler" in str(raised.value)
    # And the first handler stays in place
    registry = HandlerRegistry.from_registered(media_types=[schema.MEDIA_TYPE])
    assert registry.find(schema.MEDIA_TYPE) is first_v2_handler


def test_replace_true_allows_a_second_handler():
    schema = throwaway_schema()
    handles(schema)(first_v2_handler)
    handles(schema, replace=True)(second_v2_handler)
    registry = HandlerRegistry.from_registered(media_types=[schema.MEDIA_TYPE])
    assert registry.find(schema.MEDIA_TYPE) is second_v2_handler
