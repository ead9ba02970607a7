"""Where the dashboard's figures come from: the :class:`DashboardSource` contract and :class:`LiveSource`, which
reads an endpoint with :mod:`microbus.ops.inspect`."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from microbus.ops.inspect import TopicInfo, all_queue_stats, list_topic_arns, peek, subscriptions, topic_name

MAX_BODY_CHARS = 256 * 1024
"""Characters of one peeked body sent to the page (SQS bodies reach 1 MiB)."""


class DashboardSource(Protocol):
    """Where the dashboard's figures come from (the live endpoint; a stub in tests)."""

    endpoint: str
    """How the page names where the figures come from."""

    def overview(self) -> dict[str, Any]:
        """Topics with their subscriptions and queues with their counts, as JSON-ready data.

        Raises:
            MicrobusError: the endpoint could not be read.
        """

    def peek(self, queue_name: str, count: int) -> list[dict[str, Any]]:
        """Up to ``count`` messages of the queue, without consuming them.

        Raises:
            QueueNotFoundError: no such queue.
            MicrobusError: the endpoint could not be read.
        """


class LiveSource:
    """Topics, queues and peeks of an endpoint, read with :mod:`microbus.ops.inspect`.

    Parameters:
        sqs, sns: boto3 clients (``AWSSettings.client``).
        endpoint: how the page names the endpoint.
        prefix: show only the queues and topics whose names start with it.
        topics_ttl_s: how long one listing of topics and subscriptions (which change rarely, and cost a call
            per subscription) is shown before it is read again.
    """

    def __init__(
        self, *, sqs: Any, sns: Any, endpoint: str, prefix: str | None = None, topics_ttl_s: float = 10.0
    ) -> None:
        self.sqs, self.sns = sqs, sns
        self.endpoint = endpoint
        self.prefix = prefix
        self._topics = TimedCache(self._read_topics, topics_ttl_s)

    def overview(self) -> dict[str, Any]:
        """``{queues, topics}``; a queue that is another's dead-letter queue says whose.

        Raises:
            TransportError: SQS or SNS could not be read.
        """
        queues = [stats.to_dict() for stats in all_queue_stats(self.sqs, prefix=self.prefix)]
        sources: dict[str, list[str]] = {}
        for queue in queues:
            if queue["dlq_name"]:
                sources.setdefault(queue["dlq_name"], []).append(queue["name"])
        for queue in queues:
            queue["dead_letter_queue_for"] = sources.get(queue["name"], [])
        return {"queues": queues, **self._topics.get()}

    def _read_topics(self) -> dict[str, Any]:
        arns = [arn for arn in list_topic_arns(self.sns) if topic_name(arn).startswith(self.prefix or "")]
        listed = [TopicInfo(name=topic_name(arn), arn=arn, subscriptions=subscriptions(self.sns, arn)) for arn in arns]
        return {"topics": [topic.to_dict() for topic in listed]}

    def peek(self, queue_name: str, count: int) -> list[dict[str, Any]]:
        """Up to ``count`` messages of the queue, received with a short visibility and released at once; a
        body over :data:`MAX_BODY_CHARS` is cut (``body_truncated`` then holds its length).

        Raises:
            QueueNotFoundError, TransportError.
        """
        return [_bounded(message.to_dict()) for message in peek(self.sqs, queue_name, max_messages=count)]


def _bounded(message: dict[str, Any]) -> dict[str, Any]:
    text = message["raw_body"] if message["body"] is None else json.dumps(message["body"], indent=2)
    if text is None or len(text) <= MAX_BODY_CHARS:
        return message
    return {**message, "body": None, "raw_body": text[:MAX_BODY_CHARS], "body_truncated": len(text)}


class TimedCache:
    """The last answer of ``fetch`` for ``ttl_s`` seconds; concurrent callers share one fetch."""

    def __init__(self, fetch: Callable[[], dict[str, Any]], ttl_s: float) -> None:
        self._fetch, self._ttl_s = fetch, ttl_s
        self._lock = threading.Lock()
        self._value: dict[str, Any] | None = None
        self._at = 0.0

    def get(self) -> dict[str, Any]:
        with self._lock:
            if self._value is None or time.monotonic() - self._at >= self._ttl_s:
                self._value, self._at = self._fetch(), time.monotonic()
            return self._value
