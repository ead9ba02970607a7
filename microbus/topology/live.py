"""Reading live resources (SNS topics and subscriptions, SQS queues, DynamoDB tables); never changes them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from microbus.wire.transport import translate_errors


@dataclass(frozen=True)
class LiveTable:
    """What a live table looks like, as far as the topology cares."""

    name: str
    status: str
    partition_key: str
    ttl_attribute: str | None


class LiveReader:
    """Reads live resources through injected boto3 clients (topic list cached per instance)."""

    def __init__(self, *, sns: Any, sqs: Any, dynamodb: Any = None) -> None:
        self.sns, self.sqs, self.dynamodb = sns, sqs, dynamodb
        self._topic_arns: dict[str, str] | None = None

    def topic_arns(self) -> dict[str, str]:
        """Topic name → ARN of every topic of the account and region."""
        if self._topic_arns is None:
            self._topic_arns = {}
            with translate_errors("SNS ListTopics"):
                for page in self.sns.get_paginator("list_topics").paginate():
                    for topic in page.get("Topics", []):
                        self._topic_arns[topic["TopicArn"].rsplit(":", 1)[-1]] = topic["TopicArn"]
        return self._topic_arns

    def topic_attributes(self, arn: str) -> dict[str, str]:
        """A topic's attributes."""
        with translate_errors(f"SNS topic {arn}"):
            return dict(self.sns.get_topic_attributes(TopicArn=arn)["Attributes"])

    def queue_url(self, name: str) -> str:
        """A queue's URL. Raises: QueueNotFoundError."""
        with translate_errors(f"SQS queue {name}"):
            return str(self.sqs.get_queue_url(QueueName=name)["QueueUrl"])

    def queue_attributes(self, url: str) -> dict[str, str]:
        """All of a queue's attributes."""
        with translate_errors(f"SQS queue {url}"):
            return dict(self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"])

    def queue_arn(self, url: str) -> str:
        """A queue's ARN."""
        with translate_errors(f"SQS queue {url}"):
            response = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
        return str(response["Attributes"]["QueueArn"])

    def subscriptions(self, topic_arn: str) -> list[dict[str, str]]:
        """The subscriptions of a topic (ARN, protocol, endpoint)."""
        out: list[dict[str, str]] = []
        with translate_errors(f"SNS topic {topic_arn}"):
            for page in self.sns.get_paginator("list_subscriptions_by_topic").paginate(TopicArn=topic_arn):
                out.extend(page.get("Subscriptions", []))
        return out

    def subscription_arn(self, topic_arn: str, queue_arn: str) -> str | None:
        """The ARN of the topic's SQS subscription for a queue, if there is one."""
        for subscription in self.subscriptions(topic_arn):
            if subscription.get("Protocol") == "sqs" and subscription.get("Endpoint") == queue_arn:
                arn = subscription.get("SubscriptionArn", "")
                if arn.startswith("arn:"):  # not "PendingConfirmation"
                    return arn
        return None

    def subscription_attributes(self, arn: str) -> dict[str, str]:
        """A subscription's attributes."""
        with translate_errors(f"SNS subscription {arn}"):
            return dict(self.sns.get_subscription_attributes(SubscriptionArn=arn)["Attributes"])

    def table(self, name: str) -> LiveTable | None:
        """A table's key and TTL, or None when it does not exist."""
        with translate_errors(f"DynamoDB table {name}"):
            try:
                table = self.dynamodb.describe_table(TableName=name)["Table"]
            except self.dynamodb.exceptions.ResourceNotFoundException:
                return None
            ttl = self.dynamodb.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
        key = next(k["AttributeName"] for k in table["KeySchema"] if k["KeyType"] == "HASH")
        enabled = ttl.get("TimeToLiveStatus") in ("ENABLED", "ENABLING")
        return LiveTable(name, table["TableStatus"], key, ttl.get("AttributeName") if enabled else None)
