"""Lambda SQS events built from messages received from a queue, and a Lambda context with a clock."""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Callable, Iterable
from typing import Any


def lambda_sqs_record(raw: dict[str, Any], *, queue_arn: str, region: str) -> dict[str, Any]:
    """One record of a Lambda SQS event, from a ReceiveMessage entry (received with all attributes).

    The shape is Lambda's: ``messageId``, ``receiptHandle``, ``body``, ``attributes`` (system attributes as
    strings), ``messageAttributes`` (``stringValue``/``binaryValue`` in base64, ``dataType``, empty list
    values), ``md5OfMessageAttributes``, ``md5OfBody``, ``eventSource``, ``eventSourceARN``, ``awsRegion``.
    """
    attributes: dict[str, Any] = {}
    for name, value in raw.get("MessageAttributes", {}).items():
        attribute: dict[str, Any] = {"stringListValues": [], "binaryListValues": [], "dataType": value["DataType"]}
        if "StringValue" in value:
            attribute["stringValue"] = value["StringValue"]
        else:
            attribute["binaryValue"] = base64.b64encode(value["BinaryValue"]).decode("ascii")
        attributes[name] = attribute
    return {
        "messageId": raw["MessageId"],
        "receiptHandle": raw["ReceiptHandle"],
        "body": raw["Body"],
        "attributes": {name: str(value) for name, value in raw.get("Attributes", {}).items()},
        "messageAttributes": attributes,
        "md5OfMessageAttributes": raw.get("MD5OfMessageAttributes"),
        "md5OfBody": hashlib.md5(raw["Body"].encode("utf-8")).hexdigest(),  # noqa: S324 - SQS's checksum
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }


def lambda_sqs_event(raws: Iterable[dict[str, Any]], *, queue_arn: str, region: str = "us-east-1") -> dict[str, Any]:
    """A Lambda SQS event (``{"Records": [...]}``) from ReceiveMessage entries, in order."""
    return {"Records": [lambda_sqs_record(raw, queue_arn=queue_arn, region=region) for raw in raws]}


class LambdaContext:
    """The part of Lambda's context object microbus reads: the time left, counted from construction.

    ``clock`` (default ``time.monotonic``) lets a test move time forward.
    """

    def __init__(self, timeout_ms: int = 30_000, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.deadline = clock() + timeout_ms / 1000
        self.function_name = "microbus-test"
        self.aws_request_id = "microbus-test-request"

    def get_remaining_time_in_millis(self) -> int:
        """Milliseconds until the invocation's timeout (never below 0)."""
        return max(0, int((self.deadline - self.clock()) * 1000))
