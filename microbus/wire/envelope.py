"""The SNS envelope: raw and enveloped SQS bodies."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from microbus.errors import MalformedBodyError
from microbus.wire.codecs import parse_json_object
from microbus.wire.frozen import frozen_value


@dataclass(frozen=True)
class Unwrapped:
    """What an SQS body holds: the message object, and the SNS envelope's details when it was enveloped."""

    message: dict[str, Any]
    topic_arn: str | None = None
    sns_message_id: str | None = None
    published_at: float | None = None
    """The envelope's ``Timestamp`` (when SNS accepted the publish), as epoch seconds."""
    attributes: dict[str, str] = field(default_factory=dict)
    """The envelope's ``MessageAttributes`` of type String, name → value."""


def unwrap(body: str) -> Unwrapped:
    """The message inside an SQS body, with the envelope's topic, id, timestamp and string attributes.

    Raises:
        MalformedBodyError: the body, or the SNS ``Message`` in it, is not a JSON object.
    """
    outer = parse_json_object(body)
    if not (outer.get("Type") == "Notification" and "TopicArn" in outer and "Message" in outer):
        return frozen_value(
            Unwrapped, message=outer, topic_arn=None, sns_message_id=None, published_at=None, attributes={}
        )
    inner = outer["Message"]
    if not isinstance(inner, str):
        raise MalformedBodyError("SNS envelope's Message is not a string")
    return frozen_value(
        Unwrapped,
        message=parse_json_object(inner),
        topic_arn=outer.get("TopicArn"),
        sns_message_id=outer.get("MessageId"),
        published_at=_timestamp(outer.get("Timestamp")),
        attributes=_string_attributes(outer.get("MessageAttributes")),
    )


def _timestamp(value: Any) -> float | None:
    """An ISO 8601 timestamp (``2024-01-01T00:00:00.000Z``) as epoch seconds; None when absent or malformed."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _string_attributes(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {
        name: attribute["Value"]
        for name, attribute in value.items()
        if isinstance(attribute, dict) and attribute.get("Type") == "String" and isinstance(attribute.get("Value"), str)
    }


def unwrap_envelope(body: str) -> tuple[dict[str, Any], str | None, str | None]:
    """Return the message object inside an SQS body, and the SNS topic ARN and MessageId when enveloped.

    Raw delivery puts the message itself in the body; a standard subscription wraps it in an SNS
    notification whose ``Message`` holds the message as a JSON string.

    Raises:
        MalformedBodyError: the body, or the SNS ``Message`` in it, is not a JSON object.
    """
    unwrapped = unwrap(body)
    return unwrapped.message, unwrapped.topic_arn, unwrapped.sns_message_id
