"""What exists, live, of a topology's resources: ARNs, URLs, settings, depths."""

from __future__ import annotations

import json
from typing import Any

from microbus.errors import QueueNotFoundError
from microbus.topology.live import LiveReader
from microbus.topology.model import Queue, Topology


def describe_topology(topology: Topology, *, sns: Any, sqs: Any, dynamodb: Any = None) -> dict[str, Any]:
    """Describe the live state of every resource the topology declares (``None`` where missing).

    Raises:
        TransportError: a call failed.
    """
    live = LiveReader(sns=sns, sqs=sqs, dynamodb=dynamodb)
    topic_arns = live.topic_arns()
    queues = [q for queue in topology.queues for q in (queue, queue.dead_letter_queue()) if q is not None]
    described_queues = {queue.name: _queue(live, queue) for queue in queues}
    return {
        "topics": {t.name: _topic(live, topic_arns.get(t.name)) for t in topology.topics},
        "queues": described_queues,
        "subscriptions": _subscriptions(live, topology, topic_arns, described_queues),
        "tables": {t.name: _table(live, t.name) if dynamodb is not None else None for t in topology.tables},
    }


def _topic(live: LiveReader, arn: str | None) -> dict[str, Any] | None:
    if arn is None:
        return None
    attributes = live.topic_attributes(arn)
    return {"arn": arn, "fifo": attributes.get("FifoTopic", "false").lower() == "true"}


def _queue(live: LiveReader, queue: Queue) -> dict[str, Any] | None:
    try:
        url = live.queue_url(queue.name)
    except QueueNotFoundError:
        return None
    attributes = live.queue_attributes(url)
    redrive = json.loads(attributes.get("RedrivePolicy") or "null")
    return {
        "url": url,
        "arn": attributes.get("QueueArn"),
        "visibility_timeout_s": int(attributes.get("VisibilityTimeout", 30)),
        "message_retention_s": int(attributes.get("MessageRetentionPeriod", 0)),
        "fifo": attributes.get("FifoQueue", "false").lower() == "true",
        "sse": attributes.get("KmsMasterKeyId") or attributes.get("SqsManagedSseEnabled", "unreported"),
        "dead_letter_target_arn": redrive and redrive.get("deadLetterTargetArn"),
        "max_receive_count": redrive and int(redrive["maxReceiveCount"]),
        "has_policy": bool(attributes.get("Policy")),
        "messages": int(attributes.get("ApproximateNumberOfMessages", 0)),
        "in_flight": int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0)),
    }


def _subscriptions(
    live: LiveReader, topology: Topology, topic_arns: dict[str, str], queues: dict[str, Any]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for queue in topology.queues:
        for subscription in queue.subscriptions:
            name = f"{subscription.topic} → {queue.name}"
            topic_arn, described = topic_arns.get(subscription.topic), queues.get(queue.name)
            arn = live.subscription_arn(topic_arn, described["arn"]) if topic_arn and described else None
            if arn is None:
                out[name] = None
                continue
            attributes = live.subscription_attributes(arn)
            policy = json.loads(attributes.get("FilterPolicy") or "{}")
            out[name] = {
                "arn": arn,
                "raw": attributes.get("RawMessageDelivery", "false").lower() == "true",
                "media_types": policy.get("media_type"),
            }
    return out


def _table(live: LiveReader, name: str) -> dict[str, Any] | None:
    table = live.table(name)
    if table is None:
        return None
    return {"status": table.status, "partition_key": table.partition_key, "ttl_attribute": table.ttl_attribute}


def describe_lines(description: dict[str, Any]) -> list[str]:
    """The description as readable lines, one resource per line."""
    lines: list[str] = []
    for kind, resources in description.items():
        lines.append(f"{kind}:")
        for name, found in resources.items():
            if found is None:
                lines.append(f"  {name}: MISSING")
                continue
            settings = ", ".join(f"{k}={_show(v)}" for k, v in found.items() if k not in ("url",))
            lines.append(f"  {name}: {settings}")
    return lines


def _show(value: Any) -> str:
    if isinstance(value, list):
        return "|".join(map(str, value))
    return "-" if value is None else str(value)
