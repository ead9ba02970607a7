"""Validation of a topology: broken references and AWS rules are errors; likely mistakes are warnings."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from microbus.topology.model import FIFO_SUFFIX, MAX_RETENTION_S, MAX_VISIBILITY_TIMEOUT_S, Queue

if TYPE_CHECKING:
    from microbus.topology.model import Topology


def check_topology(topology: Topology) -> tuple[list[str], list[str]]:
    """Return (errors, warnings) for a topology."""
    errors: list[str] = []
    warnings: list[str] = []
    errors += _duplicates(topology)
    for topic in topology.topics:
        if topic.fifo != topic.name.endswith(FIFO_SUFFIX):
            errors.append(f"topic {topic.name!r}: FIFO topic names end in {FIFO_SUFFIX!r}, others must not")
    if topology.default_topic is not None and topology.default_topic not in {t.name for t in topology.topics}:
        errors.append(f"default_topic {topology.default_topic!r} is not a topic of the topology")
    routed = Counter(m for topic in topology.topics for m in topic.media_types)
    errors += [f"media type {m!r} is routed to more than one topic" for m, n in sorted(routed.items()) if n > 1]
    for queue in topology.queues:
        queue_errors, queue_warnings = _check_queue(topology, queue)
        errors += queue_errors
        warnings += queue_warnings
    errors += _check_principals(topology)
    warnings += _check_daemons(topology)
    return errors, warnings


def _duplicates(topology: Topology) -> list[str]:
    errors = []
    for kind in ("topics", "queues", "tables"):
        counts = Counter(item.name for item in getattr(topology, kind))
        errors += [f"{kind[:-1]} {name!r} is declared {n} times" for name, n in sorted(counts.items()) if n > 1]
    counts = Counter(p.name for p in (*topology.daemons, *topology.producers))
    errors += [f"daemon/producer {name!r} is declared {n} times" for name, n in sorted(counts.items()) if n > 1]
    dlq_names = {q.dead_letter_queue_name for q in topology.queues} - {None}
    errors += [f"queue {q.name!r} has the name of another queue's DLQ" for q in topology.queues if q.name in dlq_names]
    return errors


def _check_queue(topology: Topology, queue: Queue) -> tuple[list[str], list[str]]:
    errors: list[str] = []
    warnings: list[str] = []
    where = f"queue {queue.name!r}"
    if queue.fifo != queue.name.endswith(FIFO_SUFFIX):
        errors.append(f"{where}: FIFO queue names end in {FIFO_SUFFIX!r}, others must not")
    if not 0 <= queue.visibility_timeout_s <= MAX_VISIBILITY_TIMEOUT_S:
        errors.append(f"{where}: visibility_timeout_s must be 0..{MAX_VISIBILITY_TIMEOUT_S}")
    for name, value in (
        ("message_retention_s", queue.message_retention_s),
        ("dead_letter_retention_s", queue.dead_letter_retention_s),
    ):
        if not 60 <= value <= MAX_RETENTION_S:
            errors.append(f"{where}: {name} must be 60..{MAX_RETENTION_S}")
    if queue.max_receive_count is None:
        warnings.append(f"{where} has no dead-letter queue: messages that keep failing are retried until they expire")
    elif not 1 <= queue.max_receive_count <= 1000:
        errors.append(f"{where}: max_receive_count must be 1..1000")
    if queue.kms_master_key_id and queue.subscriptions:
        warnings.append(
            f"{where} uses KMS key {queue.kms_master_key_id!r}: its key policy must let sns.amazonaws.com "
            "use kms:GenerateDataKey and kms:Decrypt"
        )
    subscription_errors, subscription_warnings = _check_subscriptions(topology, queue)
    return errors + subscription_errors, warnings + subscription_warnings


def _check_subscriptions(topology: Topology, queue: Queue) -> tuple[list[str], list[str]]:
    errors: list[str] = []
    warnings: list[str] = []
    where = f"queue {queue.name!r}"
    topics = {t.name: t for t in topology.topics}
    for subscription in queue.subscriptions:
        topic = topics.get(subscription.topic)
        if topic is None:
            errors.append(f"{where} subscribes to unknown topic {subscription.topic!r}")
            continue
        if queue.fifo and not topic.fifo:
            errors.append(f"{where} is FIFO and cannot subscribe to standard topic {topic.name!r}")
        if topology.filter_media_types(queue, subscription) is None:
            warnings.append(
                f"{where} subscribes to {topic.name!r} without a media_type filter: it receives every media type"
            )
    return errors, warnings


def _check_principals(topology: Topology) -> list[str]:
    errors = []
    queues = {q.name for q in topology.queues}
    tables = {t.name for t in topology.tables}
    for principal in (*topology.daemons, *topology.producers):
        where = f"{type(principal).__name__.lower()} {principal.name!r}"
        errors += [f"{where} sends to unknown queue {q!r}" for q in principal.sends_to if q not in queues]
        errors += [f"{where} uses unknown table {t!r}" for t in principal.tables if t not in tables]
        errors += [
            f"{where} produces {m!r}, which no topic routes and there is no default_topic"
            for m in principal.produces
            if topology.topic_for(m) is None
        ]
    for daemon in topology.daemons:
        if daemon.queue not in queues:
            errors.append(f"daemon {daemon.name!r} consumes unknown queue {daemon.queue!r}")
    return errors


def _check_daemons(topology: Topology) -> list[str]:
    warnings = []
    queues = {q.name: q for q in topology.queues}
    for daemon in topology.daemons:
        queue = queues.get(daemon.queue)
        if queue is None or daemon.handler_timeout_s is None:
            continue
        if queue.visibility_timeout_s < daemon.handler_timeout_s:
            warnings.append(
                f"queue {queue.name!r}: visibility timeout {queue.visibility_timeout_s}s is shorter than daemon "
                f"{daemon.name!r}'s handler timeout {daemon.handler_timeout_s:g}s: messages may be handled twice"
            )
    return warnings
