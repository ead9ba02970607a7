"""Pure functions: the AWS attributes a declared resource should have, and how live ones differ."""

from __future__ import annotations

import json
from typing import Any

from microbus.topology.model import Queue

# Compared as numbers / booleans / JSON documents; anything else as text.
_NUMBERS = {"VisibilityTimeout", "MessageRetentionPeriod"}
_BOOLEANS = {"FifoQueue", "ContentBasedDeduplication", "SqsManagedSseEnabled"}
_DOCUMENTS = {"RedrivePolicy"}
# Attributes an emulator may not report at all; when absent they are not compared.
_MAYBE_UNREPORTED = {"SqsManagedSseEnabled"}


def desired_queue_attributes(queue: Queue, *, dead_letter_queue_arn: str | None) -> dict[str, str]:
    """CreateQueue/SetQueueAttributes attributes of a queue (without its access policy).

    ``dead_letter_queue_arn`` None, for a queue with a DLQ, means it does not exist yet: a placeholder is used.
    """
    attributes = {
        "VisibilityTimeout": str(queue.visibility_timeout_s),
        "MessageRetentionPeriod": str(queue.message_retention_s),
    }
    if queue.fifo:
        attributes["FifoQueue"] = "true"
        attributes["ContentBasedDeduplication"] = str(queue.content_based_deduplication).lower()
    if queue.kms_master_key_id:
        attributes["KmsMasterKeyId"] = queue.kms_master_key_id
    else:
        attributes["SqsManagedSseEnabled"] = str(queue.sse).lower()
    if queue.max_receive_count is not None:
        target = dead_letter_queue_arn or f"<arn of queue {queue.dead_letter_queue_name}>"
        attributes["RedrivePolicy"] = json.dumps(
            {"deadLetterTargetArn": target, "maxReceiveCount": queue.max_receive_count}
        )
    return attributes


def compare_queue_attributes(desired: dict[str, str], live: dict[str, str]) -> dict[str, tuple[Any, Any]]:
    """Attributes whose live value differs from the desired one: name → (live, desired).

    FifoQueue is left out (it cannot change); values are compared by meaning (``"5"`` equals ``5``).
    """
    differences: dict[str, tuple[Any, Any]] = {}
    for key, value in desired.items():
        if key == "FifoQueue" or (key in _MAYBE_UNREPORTED and key not in live):
            continue
        if _normal(key, live.get(key)) != _normal(key, value):
            differences[key] = (live.get(key), value)
    return differences


def _normal(key: str, value: str | None) -> Any:
    if value is None or value == "":
        return None
    if key in _NUMBERS:
        return int(value)
    if key in _BOOLEANS:
        return value.lower() == "true"
    if key in _DOCUMENTS:
        document = json.loads(value)
        if "maxReceiveCount" in document:
            document["maxReceiveCount"] = int(document["maxReceiveCount"])
        return document
    return value


def desired_subscription_attributes(*, raw: bool, media_types: tuple[str, ...] | None) -> dict[str, str]:
    """Subscribe attributes: raw delivery, and the filter policy on ``media_type`` (none: everything)."""
    attributes = {"RawMessageDelivery": str(raw).lower()}
    if media_types:
        attributes["FilterPolicy"] = json.dumps({"media_type": sorted(media_types)})
    return attributes


def queue_policy(queue_arn: str, topic_arns: list[str]) -> dict[str, Any]:
    """The queue's access policy: SNS may send to it, only on behalf of these topics."""
    return {
        "Version": "2012-10-17",
        "Id": f"microbus:{queue_arn}",
        "Statement": [
            {
                "Sid": "MicrobusTopicsSendMessage",
                "Effect": "Allow",
                "Principal": {"Service": "sns.amazonaws.com"},
                "Action": "sqs:SendMessage",
                "Resource": queue_arn,
                "Condition": {"ArnEquals": {"aws:SourceArn": topic_arns if len(topic_arns) > 1 else topic_arns[0]}},
            }
        ],
    }
