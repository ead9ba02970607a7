"""Topology as code: topics, queues with their DLQs, and filtered subscriptions, applied idempotently."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from microbus.transport import translate_errors


@dataclass(frozen=True)
class Subscription:
    """A queue's subscription to a topic, filtered on the ``media_type`` attribute (None: everything)."""

    topic: str
    media_types: tuple[str, ...] | None = None
    raw: bool = False


@dataclass(frozen=True)
class Queue:
    """An SQS queue; with ``max_receive_count``, a ``<name>-dlq`` dead-letter queue and redrive policy."""

    name: str
    visibility_timeout_s: int = 30
    max_receive_count: int | None = 5
    subscriptions: tuple[Subscription, ...] = ()


@dataclass(frozen=True)
class Table:
    """A DynamoDB table keyed by the string attribute ``pk``, items expiring by ``ttl_attribute``."""

    name: str
    ttl_attribute: str | None = "expires_at"


@dataclass(frozen=True)
class Topology:
    """Topics, queues and tables of an application."""

    topics: tuple[str, ...] = ()
    queues: tuple[Queue, ...] = ()
    tables: tuple[Table, ...] = ()


@dataclass
class AppliedTopology:
    """What :func:`apply_topology` created or found."""

    topic_arns: dict[str, str] = field(default_factory=dict)
    queue_urls: dict[str, str] = field(default_factory=dict)


def filter_policy(media_types: tuple[str, ...]) -> str:
    """The SNS filter policy that lets only these media types through."""
    return json.dumps({"media_type": sorted(media_types)})


def apply_topology(topology: Topology, *, sns: Any, sqs: Any, dynamodb: Any = None) -> AppliedTopology:
    """Create what is missing (create calls are idempotent) and return ARNs and URLs.

    Raises:
        TransportError: a call failed.
    """
    applied = AppliedTopology()
    for name in topology.topics:
        with translate_errors(f"SNS topic {name}"):
            applied.topic_arns[name] = sns.create_topic(Name=name)["TopicArn"]
    for queue in topology.queues:
        applied.queue_urls[queue.name] = _apply_queue(queue, sqs)
        queue_arn = _queue_arn(sqs, applied.queue_urls[queue.name])
        for subscription in queue.subscriptions:
            _apply_subscription(subscription, applied.topic_arns[subscription.topic], queue_arn, sns)
    for table in topology.tables:
        _apply_table(table, dynamodb)
    return applied


def _apply_table(table: Table, dynamodb: Any) -> None:
    if dynamodb is None:
        raise ValueError(f"Topology has table {table.name!r}: pass a DynamoDB client")
    with translate_errors(f"DynamoDB table {table.name}"):
        try:
            dynamodb.create_table(
                TableName=table.name,
                AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                BillingMode="PAY_PER_REQUEST",
            )
        except dynamodb.exceptions.ResourceInUseException:
            return
        dynamodb.get_waiter("table_exists").wait(TableName=table.name, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
        if table.ttl_attribute:
            dynamodb.update_time_to_live(
                TableName=table.name,
                TimeToLiveSpecification={"Enabled": True, "AttributeName": table.ttl_attribute},
            )


def _apply_queue(queue: Queue, sqs: Any) -> str:
    attributes = {"VisibilityTimeout": str(queue.visibility_timeout_s)}
    with translate_errors(f"SQS queue {queue.name}"):
        if queue.max_receive_count is not None:
            dlq_url = sqs.create_queue(QueueName=f"{queue.name}-dlq")["QueueUrl"]
            attributes["RedrivePolicy"] = json.dumps(
                {"deadLetterTargetArn": _queue_arn(sqs, dlq_url), "maxReceiveCount": str(queue.max_receive_count)}
            )
        url: str = sqs.create_queue(QueueName=queue.name)["QueueUrl"]
        sqs.set_queue_attributes(QueueUrl=url, Attributes=attributes)
    return url


def _apply_subscription(subscription: Subscription, topic_arn: str, queue_arn: str, sns: Any) -> None:
    attributes = {"RawMessageDelivery": "true" if subscription.raw else "false"}
    if subscription.media_types:
        attributes["FilterPolicy"] = filter_policy(subscription.media_types)
    with translate_errors(f"SNS topic {topic_arn}"):
        sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn, Attributes=attributes)


def _queue_arn(sqs: Any, url: str) -> str:
    with translate_errors(f"SQS queue {url}"):
        response = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    return str(response["Attributes"]["QueueArn"])
