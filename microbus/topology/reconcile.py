"""Plan and apply a topology against live AWS (or an emulator): create what is missing, fix what differs.

One code path serves both: :func:`plan_topology` runs it read-only (ARNs of resources not created yet
are placeholders), :func:`apply_topology` runs it for real. Nothing is ever deleted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from microbus.errors import QueueNotFoundError, TopologyError
from microbus.topology.desired import (
    compare_queue_attributes,
    desired_queue_attributes,
    desired_subscription_attributes,
    queue_policy,
)
from microbus.topology.live import LiveReader
from microbus.topology.model import Queue, Subscription, Table, Topic, Topology
from microbus.topology.plan import Change, ChangeAction, Plan
from microbus.wire.transport import translate_errors


@dataclass
class AppliedTopology:
    """What :func:`apply_topology` created or found, and the changes it made."""

    topic_arns: dict[str, str] = field(default_factory=dict)
    queue_urls: dict[str, str] = field(default_factory=dict)
    queue_arns: dict[str, str] = field(default_factory=dict)
    plan: Plan = field(default_factory=Plan)
    routes: dict[str, str] = field(default_factory=dict)
    default_topic: str | None = None

    def sns_topic_arns_config(self) -> dict[str, Any]:
        """The ``microbus_sns_topic_arns`` config section for producers: default topic and media type → topic ARN."""
        default = self.topic_arns.get(self.default_topic) if self.default_topic else None
        if default is None and len(self.topic_arns) == 1 and not self.routes:
            default = next(iter(self.topic_arns.values()))
        return {"default": default, "mappings": {m: self.topic_arns[t] for m, t in sorted(self.routes.items())}}


def filter_policy(media_types: tuple[str, ...]) -> str:
    """The SNS filter policy that lets only these media types through (on the ``media_type`` attribute)."""
    return json.dumps({"media_type": sorted(media_types)})


def plan_topology(topology: Topology, *, sns: Any, sqs: Any, dynamodb: Any = None) -> Plan:
    """What :func:`apply_topology` would change, without changing anything.

    Raises:
        TopologyError: the topology is invalid, or a live resource cannot be changed to match it.
        TransportError: a call failed.
    """
    return _Reconciler(topology, sns=sns, sqs=sqs, dynamodb=dynamodb, dry_run=True).run().plan


def apply_topology(topology: Topology, *, sns: Any, sqs: Any, dynamodb: Any = None) -> AppliedTopology:
    """Create what is missing and update what differs; a second apply changes nothing.

    Raises:
        TopologyError: the topology is invalid, or a live resource cannot be changed to match it.
        TransportError: a call failed.
    """
    return _Reconciler(topology, sns=sns, sqs=sqs, dynamodb=dynamodb, dry_run=False).run()


class _Reconciler:
    def __init__(self, topology: Topology, *, sns: Any, sqs: Any, dynamodb: Any, dry_run: bool) -> None:
        self.topology = topology
        self.sns, self.sqs, self.dynamodb = sns, sqs, dynamodb
        self.dry_run = dry_run
        self.live = LiveReader(sns=sns, sqs=sqs, dynamodb=dynamodb)
        self.result = AppliedTopology(routes=topology.routes(), default_topic=topology.default_topic)

    def run(self) -> AppliedTopology:
        self.result.plan.warnings.extend(self.topology.validate())
        if self.topology.tables and self.dynamodb is None:
            raise TopologyError("The topology has tables: pass a DynamoDB client")
        for topic in self.topology.topics:
            self._topic(topic)
        for queue in self.topology.queues:
            dead_letter_queue = queue.dead_letter_queue()
            if dead_letter_queue is not None:
                self._queue(dead_letter_queue, dead_letter_of=queue)
            self._queue(queue)
        for queue in self.topology.queues:
            for subscription in queue.subscriptions:
                self._subscription(queue, subscription)
        for table in self.topology.tables:
            self._table(table)
        return self.result

    def _record(self, action: ChangeAction, kind: str, name: str, details: list[str] | None = None) -> None:
        self.result.plan.changes.append(Change(action=action, kind=kind, name=name, details=tuple(details or ())))

    def _topic(self, topic: Topic) -> None:
        arn = self.live.topic_arns().get(topic.name)
        desired = {"FifoTopic": "true"} if topic.fifo else {}
        if topic.fifo:
            desired["ContentBasedDeduplication"] = str(topic.content_based_deduplication).lower()
        if arn is None:
            self._record(ChangeAction.CREATE, "topic", topic.name, [f"{k}={v}" for k, v in desired.items()])
            if self.dry_run:
                self.result.topic_arns[topic.name] = f"<arn of topic {topic.name}>"
                return
            with translate_errors(f"SNS topic {topic.name}"):
                arn = self.sns.create_topic(Name=topic.name, Attributes=desired)["TopicArn"]
            self.result.topic_arns[topic.name] = arn
            return
        self.result.topic_arns[topic.name] = arn
        live = self.live.topic_attributes(arn)
        if (live.get("FifoTopic", "false").lower() == "true") != topic.fifo:
            raise TopologyError(f"Topic {topic.name!r} exists with another FIFO setting: delete it or rename it")
        changed = {k: v for k, v in desired.items() if k != "FifoTopic" and live.get(k, "false").lower() != v}
        self._update("topic", topic.name, {k: (live.get(k), v) for k, v in changed.items()})
        if changed and not self.dry_run:
            for key, value in changed.items():
                with translate_errors(f"SNS topic {arn}"):
                    self.sns.set_topic_attributes(TopicArn=arn, AttributeName=key, AttributeValue=value)

    def _update(self, kind: str, name: str, differences: dict[str, tuple[Any, Any]]) -> None:
        if differences:
            details = [f"{key}: {_show(old)} → {_show(new)}" for key, (old, new) in differences.items()]
            self._record(ChangeAction.UPDATE, kind, name, details)
        else:
            self._record(ChangeAction.UNCHANGED, kind, name)

    def _queue(self, queue: Queue, *, dead_letter_of: Queue | None = None) -> None:
        kind = "dead-letter queue" if dead_letter_of else "queue"
        dlq_name = queue.dead_letter_queue_name
        dlq_arn = self.result.queue_arns.get(dlq_name) if dlq_name else None
        desired = desired_queue_attributes(queue, dead_letter_queue_arn=dlq_arn)
        url = self._queue_url(queue.name)
        if url is None:
            self._record(ChangeAction.CREATE, kind, queue.name, [f"{k}={v}" for k, v in desired.items()])
            if self.dry_run:
                self.result.queue_arns[queue.name] = f"<arn of queue {queue.name}>"
            else:
                with translate_errors(f"SQS queue {queue.name}"):
                    url = self.sqs.create_queue(QueueName=queue.name, Attributes=desired)["QueueUrl"]
                self._remember_queue(queue.name, url)
            live: dict[str, str] = dict(desired)
        else:
            live = self.live.queue_attributes(url)
            self._remember_queue(queue.name, url, live.get("QueueArn"))
            if (live.get("FifoQueue", "false").lower() == "true") != queue.fifo:
                raise TopologyError(f"Queue {queue.name!r} exists with another FIFO setting: delete it or rename it")
            differences = compare_queue_attributes(desired, live)
            self._update(kind, queue.name, differences)
            if differences and not self.dry_run:
                with translate_errors(f"SQS queue {url}"):
                    self.sqs.set_queue_attributes(QueueUrl=url, Attributes={k: desired[k] for k in differences})
        self._queue_policy(queue, url, live.get("Policy"))

    def _queue_url(self, name: str) -> str | None:
        try:
            return self.live.queue_url(name)
        except QueueNotFoundError:
            return None

    def _remember_queue(self, name: str, url: str, arn: str | None = None) -> None:
        self.result.queue_urls[name] = url
        self.result.queue_arns[name] = arn or self.live.queue_arn(url)

    def _queue_policy(self, queue: Queue, url: str | None, live_policy: str | None) -> None:
        """SNS may send to the queue only from the topics it subscribes to (real AWS enforces it)."""
        topic_arns = sorted({self.result.topic_arns[s.topic] for s in queue.subscriptions})
        if not topic_arns:
            return
        policy = queue_policy(self.result.queue_arns[queue.name], topic_arns)
        live = json.loads(live_policy) if live_policy else None
        if live == policy:
            self._record(ChangeAction.UNCHANGED, "queue policy", queue.name)
            return
        self._record(
            ChangeAction.CREATE if live is None else ChangeAction.UPDATE,
            "queue policy",
            queue.name,
            [f"allow sns.amazonaws.com to sqs:SendMessage from {', '.join(topic_arns)}"],
        )
        if url is not None and not self.dry_run:
            with translate_errors(f"SQS queue {url}"):
                self.sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": json.dumps(policy)})

    def _subscription(self, queue: Queue, subscription: Subscription) -> None:
        topic_arn = self.result.topic_arns[subscription.topic]
        queue_arn = self.result.queue_arns[queue.name]
        name = f"{subscription.topic} → {queue.name}"
        media_types = self.topology.filter_media_types(queue, subscription)
        desired = desired_subscription_attributes(raw=subscription.raw, media_types=media_types)
        existing = None if topic_arn.startswith("<") else self.live.subscription_arn(topic_arn, queue_arn)
        if existing is None:
            self._record(ChangeAction.CREATE, "subscription", name, [f"{k}={v}" for k, v in desired.items()])
            if not self.dry_run:
                with translate_errors(f"SNS topic {topic_arn}"):
                    self.sns.subscribe(
                        TopicArn=topic_arn,
                        Protocol="sqs",
                        Endpoint=queue_arn,
                        Attributes=desired,
                        ReturnSubscriptionArn=True,
                    )
            return
        live = self.live.subscription_attributes(existing)
        differences = _subscription_differences(desired, live)
        self._update("subscription", name, differences)
        if differences and not self.dry_run:
            for key in differences:
                with translate_errors(f"SNS subscription {existing}"):
                    self.sns.set_subscription_attributes(
                        SubscriptionArn=existing, AttributeName=key, AttributeValue=desired.get(key, "{}")
                    )

    def _table(self, table: Table) -> None:
        live = self.live.table(table.name)
        ttl = table.ttl_attribute
        if live is None:
            details = [f"partition key {table.partition_key} (S)", f"TTL on {ttl}" if ttl else "no TTL"]
            self._record(ChangeAction.CREATE, "table", table.name, details)
            if not self.dry_run:
                self._create_table(table)
            return
        if live.partition_key != table.partition_key:
            raise TopologyError(
                f"Table {table.name!r} has partition key {live.partition_key!r}, not {table.partition_key!r}: "
                "keys cannot change, delete the table or rename it"
            )
        differences = {} if live.ttl_attribute == ttl or ttl is None else {"TTL": (live.ttl_attribute, ttl)}
        self._update("table", table.name, differences)
        if differences and not self.dry_run:
            self._enable_ttl(table)

    def _create_table(self, table: Table) -> None:
        with translate_errors(f"DynamoDB table {table.name}"):
            self.dynamodb.create_table(
                TableName=table.name,
                AttributeDefinitions=[{"AttributeName": table.partition_key, "AttributeType": "S"}],
                KeySchema=[{"AttributeName": table.partition_key, "KeyType": "HASH"}],
                BillingMode="PAY_PER_REQUEST",
            )
            self.dynamodb.get_waiter("table_exists").wait(
                TableName=table.name, WaiterConfig={"Delay": 1, "MaxAttempts": 60}
            )
        self._enable_ttl(table)

    def _enable_ttl(self, table: Table) -> None:
        if table.ttl_attribute:
            with translate_errors(f"DynamoDB table {table.name}"):
                self.dynamodb.update_time_to_live(
                    TableName=table.name,
                    TimeToLiveSpecification={"Enabled": True, "AttributeName": table.ttl_attribute},
                )


def _subscription_differences(desired: dict[str, str], live: dict[str, str]) -> dict[str, tuple[Any, Any]]:
    differences: dict[str, tuple[Any, Any]] = {}
    if live.get("RawMessageDelivery", "false").lower() != desired["RawMessageDelivery"]:
        differences["RawMessageDelivery"] = (live.get("RawMessageDelivery", "false"), desired["RawMessageDelivery"])
    live_filter = json.loads(live.get("FilterPolicy") or "{}") or None
    desired_filter = json.loads(desired["FilterPolicy"]) if "FilterPolicy" in desired else None
    if _sorted_filter(live_filter) != _sorted_filter(desired_filter):
        differences["FilterPolicy"] = (live.get("FilterPolicy"), desired.get("FilterPolicy"))
    return differences


def _sorted_filter(policy: dict[str, Any] | None) -> dict[str, Any] | None:
    if policy is None:
        return None
    return {k: sorted(v, key=json.dumps) if isinstance(v, list) else v for k, v in policy.items()}


def _show(value: Any) -> str:
    return "(none)" if value in (None, "") else str(value)


__all__ = ["AppliedTopology", "apply_topology", "plan_topology", "filter_policy"]
