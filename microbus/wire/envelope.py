"""The SNS envelope: raw and enveloped SQS bodies."""

from __future__ import annotations

from typing import Any

from microbus.errors import MalformedBodyError
from microbus.wire.codecs import parse_json_object


def unwrap_envelope(body: str) -> tuple[dict[str, Any], str | None, str | None]:
    """Return the message object inside an SQS body, and the SNS topic ARN and MessageId when enveloped.

    Raw delivery puts the message itself in the body; a standard subscription wraps it in an SNS
    notification whose ``Message`` holds the message as a JSON string.

    Raises:
        MalformedBodyError: the body, or the SNS ``Message`` in it, is not a JSON object.
    """
    outer = parse_json_object(body)
    if outer.get("Type") == "Notification" and "TopicArn" in outer and "Message" in outer:
        inner = outer["Message"]
        if not isinstance(inner, str):
            raise MalformedBodyError("SNS envelope's Message is not a string")
        return parse_json_object(inner), outer.get("TopicArn"), outer.get("MessageId")
    return outer, None, None
