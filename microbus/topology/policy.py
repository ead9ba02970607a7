"""Least-privilege IAM policy documents for the daemons and producers of a topology (pure)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from microbus.topology.model import Daemon, Producer, Queue, Topology

CONSUME_ACTIONS = [
    "sqs:ChangeMessageVisibility",
    "sqs:DeleteMessage",
    "sqs:GetQueueAttributes",
    "sqs:GetQueueUrl",
    "sqs:ReceiveMessage",
]
SEND_ACTIONS = ["sqs:GetQueueUrl", "sqs:SendMessage"]
PUBLISH_ACTIONS = ["sns:Publish"]
TABLE_ACTIONS = [
    "dynamodb:DeleteItem",  # the idempotency store releases a failed run's claim
    "dynamodb:GetItem",  # both stores read records
    "dynamodb:PutItem",  # the idempotency store claims and completes keys
    "dynamodb:UpdateItem",  # the fan-in store records targets and claims on-final callbacks
]
"""What microbus's stores call on a table (tests/integration/test_iam_calls.py records the calls and checks them)."""


@dataclass(frozen=True, kw_only=True)
class ArnBuilder:
    """Builds ARNs of one account and region (``*`` where unknown)."""

    account_id: str = "*"
    region: str = "*"
    partition: str = "aws"

    def arn(self, service: str, resource: str) -> str:
        """``arn:partition:service:region:account:resource``."""
        return f"arn:{self.partition}:{service}:{self.region}:{self.account_id}:{resource}"

    def kms_key(self, key_id: str) -> str:
        """A KMS key (or alias) ARN from an id, alias or ARN."""
        if key_id.startswith("arn:"):
            return key_id
        return self.arn("kms", key_id if key_id.startswith("alias/") else f"key/{key_id}")


def iam_policy(topology: Topology, name: str, *, arns: ArnBuilder) -> dict[str, Any]:
    """The IAM policy document the daemon or producer ``name`` needs, and nothing more.

    A daemon receives, deletes and changes the visibility of its queue's messages and sends poison
    messages to its DLQ; anyone publishes its ``produces`` media types to their topics, sends to its
    ``sends_to`` queues (a callback daemon lists its own queue: it sends invocations back to it) and
    gets/puts/updates/deletes items of its ``tables`` (the fan-in and idempotency stores' calls).

    Raises:
        TopologyError: no daemon or producer has that name.
    """
    principal = topology.principal(name)
    statements: list[dict[str, Any]] = []
    kms_keys: dict[str, set[str]] = {}
    if isinstance(principal, Daemon):
        queue = topology.queue(principal.queue)
        statements.append(_statement("Consume", CONSUME_ACTIONS, [arns.arn("sqs", queue.name)]))
        if queue.dead_letter_queue_name:
            statements.append(_statement("DeadLetter", SEND_ACTIONS, [arns.arn("sqs", queue.dead_letter_queue_name)]))
        _add_kms(kms_keys, queue, "kms:Decrypt", "kms:GenerateDataKey")
    topics = sorted({t for m in principal.produces if (t := topology.topic_for(m))})
    if topics:
        statements.append(_statement("Publish", PUBLISH_ACTIONS, [arns.arn("sns", t) for t in topics]))
    if principal.sends_to:
        statements.append(_statement("Send", SEND_ACTIONS, [arns.arn("sqs", q) for q in sorted(principal.sends_to)]))
        for queue_name in principal.sends_to:
            _add_kms(kms_keys, topology.queue(queue_name), "kms:GenerateDataKey", "kms:Decrypt")
    if principal.tables:
        resources = [arns.arn("dynamodb", f"table/{t}") for t in sorted(principal.tables)]
        statements.append(_statement("Tables", TABLE_ACTIONS, resources))
    for key, actions in sorted(kms_keys.items()):
        statements.append(_statement(f"Kms{_sid(key)}", sorted(actions), [arns.kms_key(key)]))
    return {"Version": "2012-10-17", "Statement": statements}


def iam_policies(topology: Topology, *, arns: ArnBuilder) -> dict[str, dict[str, Any]]:
    """Policy documents of every daemon and producer, by name."""
    principals: list[Producer] = [*topology.daemons, *topology.producers]
    return {p.name: iam_policy(topology, p.name, arns=arns) for p in principals}


def _add_kms(keys: dict[str, set[str]], queue: Queue, *actions: str) -> None:
    if queue.kms_master_key_id:
        keys.setdefault(queue.kms_master_key_id, set()).update(actions)


def _statement(sid: str, actions: list[str], resources: list[str]) -> dict[str, Any]:
    return {"Sid": sid, "Effect": "Allow", "Action": actions, "Resource": resources}


def _sid(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "", text.title())[:64]
