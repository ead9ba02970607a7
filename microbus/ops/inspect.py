"""Look at queues and topics without consuming: depths, subscriptions, and messages peeked and released.

Plain functions over boto3 clients (``AWSSettings.client("sqs")`` / ``("sns")``), shared by the CLI and the
dashboard. Every AWS error comes out as a :class:`~microbus.errors.TransportError` (a missing queue as
:class:`~microbus.errors.QueueNotFoundError`).

SQS counts are approximate by nature (its ``Approximate*`` attributes are eventually consistent, to within
about a minute on AWS). SQS gives no age of the oldest message (CloudWatch's ``ApproximateAgeOfOldestMessage``
does); :attr:`QueueStats.oldest_age_s` is None unless a caller measured it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from microbus.consume.worker import queue_name as queue_name  # re-exported: the name of a queue, from its URL
from microbus.errors import DecodeError, MalformedBodyError, QueueNotFoundError, TopicNotFoundError
from microbus.wire.envelope import unwrap_envelope
from microbus.wire.sanitize import log_repr
from microbus.wire.transport import MAX_BATCH, translate_errors

DEAD_LETTER_PREFIX = "microbus."
"""Prefix of the attributes microbus writes on a dead letter (``microbus.reason``, ``microbus.error_class`` …)."""
PEEK_VISIBILITY_S = 10
"""How long a peeked message stays invisible at most; it is released (visibility 0) as soon as the peek ends."""
_STAT_ATTRIBUTES = {
    "visible": "ApproximateNumberOfMessages",
    "in_flight": "ApproximateNumberOfMessagesNotVisible",
    "delayed": "ApproximateNumberOfMessagesDelayed",
}


def is_queue_url(queue: str) -> bool:
    """Whether ``queue`` is a queue URL (else a queue name)."""
    return queue.startswith(("http://", "https://"))


def queue_url(sqs: Any, queue: str) -> str:
    """The URL of a queue given by name or URL (a URL is returned as it is).

    Raises:
        QueueNotFoundError: no queue has that name.
        TransportError: SQS could not be reached, or refused.
    """
    if is_queue_url(queue):
        return queue
    with translate_errors(f"SQS queue {log_repr(queue, 100)}"):
        return str(sqs.get_queue_url(QueueName=queue)["QueueUrl"])


def list_queue_urls(sqs: Any, prefix: str | None = None) -> list[str]:
    """The URLs of all queues (whose names start with ``prefix``), sorted by name.

    Raises:
        TransportError: SQS could not be reached, or refused.
    """
    urls: list[str] = []
    kwargs: dict[str, Any] = {"MaxResults": 1000}
    if prefix:
        kwargs["QueueNamePrefix"] = prefix
    with translate_errors("SQS ListQueues"):
        while True:
            response = sqs.list_queues(**kwargs)
            urls.extend(response.get("QueueUrls", []))
            token = response.get("NextToken")
            if not token:
                break
            kwargs["NextToken"] = token
    return sorted(urls, key=queue_name)


@dataclass(frozen=True)
class QueueStats:
    """The depth of a queue and of its dead-letter queue.

    ``visible``, ``in_flight``, ``delayed`` and ``dlq_visible`` are SQS's approximate counts (see
    :data:`APPROXIMATE`); ``oldest_age_s`` is None where the service does not give it (SQS never does).
    """

    name: str
    url: str
    visible: int
    in_flight: int
    delayed: int
    fifo: bool
    dlq_name: str | None = None
    dlq_url: str | None = None
    dlq_visible: int | None = None
    max_receive_count: int | None = None
    dlq_missing: bool = False
    """The redrive policy names a dead-letter queue that does not exist (``dlq_visible`` is then None)."""
    oldest_age_s: float | None = None
    approximate: tuple[str, ...] = ("visible", "in_flight", "delayed", "dlq_visible")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        data = asdict(self)
        data["approximate"] = list(self.approximate)
        return data


APPROXIMATE = QueueStats.__dataclass_fields__["approximate"].default
"""The :class:`QueueStats` figures that are approximate (SQS's ``Approximate*`` attributes)."""


def redrive_policy(attributes: dict[str, str]) -> dict[str, Any] | None:
    """A queue's ``RedrivePolicy`` (``deadLetterTargetArn``, ``maxReceiveCount``), None when it has none."""
    text = attributes.get("RedrivePolicy")
    if not text:
        return None
    try:
        policy = json.loads(text)
    except ValueError:
        return None
    return policy if isinstance(policy, dict) and policy.get("deadLetterTargetArn") else None


def queue_attributes(sqs: Any, url: str) -> dict[str, str]:
    """All attributes of a queue.

    Raises:
        QueueNotFoundError: the queue does not exist.
        TransportError: SQS could not be reached, or refused.
    """
    with translate_errors(f"SQS queue {url}"):
        return dict(sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"]).get("Attributes", {}))


def url_of_arn(sqs: Any, arn: str) -> str:
    """The URL of a queue given by ARN.

    Raises:
        QueueNotFoundError: the queue does not exist.
    """
    parts = arn.split(":")
    with translate_errors(f"SQS queue {arn}"):
        return str(sqs.get_queue_url(QueueName=parts[-1], QueueOwnerAWSAccountId=parts[4])["QueueUrl"])


def queue_stats(sqs: Any, queue: str) -> QueueStats:
    """The depth of one queue (name or URL) and of its dead-letter queue (found through its redrive policy).

    A dead-letter queue that does not exist is reported (``dlq_missing``), not an error: that is when an
    operator most needs to see the queue.

    Raises:
        QueueNotFoundError: the queue does not exist.
        TransportError: SQS could not be reached, or refused.
    """
    url = queue_url(sqs, queue)
    attributes = queue_attributes(sqs, url)
    policy = redrive_policy(attributes)
    dlq: dict[str, Any] = {}
    if policy is not None:
        arn = str(policy["deadLetterTargetArn"])
        dlq = {"dlq_name": arn.split(":")[-1], "max_receive_count": int(policy.get("maxReceiveCount", 0)) or None}
        try:
            dlq_url = url_of_arn(sqs, arn)
            dlq_attributes = queue_attributes(sqs, dlq_url)
        except QueueNotFoundError:
            dlq["dlq_missing"] = True
        else:
            dlq["dlq_url"] = dlq_url
            dlq["dlq_visible"] = int(dlq_attributes.get(_STAT_ATTRIBUTES["visible"], 0))
    return QueueStats(
        name=queue_name(url),
        url=url,
        visible=int(attributes.get(_STAT_ATTRIBUTES["visible"], 0)),
        in_flight=int(attributes.get(_STAT_ATTRIBUTES["in_flight"], 0)),
        delayed=int(attributes.get(_STAT_ATTRIBUTES["delayed"], 0)),
        fifo=attributes.get("FifoQueue", "").lower() == "true",
        **dlq,
    )


def all_queue_stats(sqs: Any, queues: list[str] | None = None, *, prefix: str | None = None) -> list[QueueStats]:
    """:func:`queue_stats` of the given queues (names or URLs), else of every queue (with ``prefix``).

    A queue deleted between the listing and its stats is left out; a queue given by the caller is not.

    Raises:
        QueueNotFoundError: a given queue does not exist.
        TransportError: SQS could not be reached, or refused.
    """
    if queues:
        return [queue_stats(sqs, queue) for queue in queues]
    out: list[QueueStats] = []
    for url in list_queue_urls(sqs, prefix):
        try:
            out.append(queue_stats(sqs, url))
        except QueueNotFoundError:
            continue
    return out


@dataclass(frozen=True)
class SubscriptionInfo:
    """One subscription of a topic: where it delivers, raw or enveloped, and its filter policy."""

    arn: str
    protocol: str
    endpoint: str
    raw: bool | None = None
    filter_policy: dict[str, Any] | None = None

    @property
    def queue_name(self) -> str | None:
        """The name of the subscribed queue (SQS subscriptions), else None."""
        return self.endpoint.rsplit(":", 1)[-1] if self.protocol == "sqs" else None


@dataclass(frozen=True)
class TopicInfo:
    """A topic and its subscriptions."""

    name: str
    arn: str
    subscriptions: list[SubscriptionInfo] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, subscriptions with their queue names."""
        data = asdict(self)
        for entry, subscription in zip(data["subscriptions"], self.subscriptions, strict=True):
            entry["queue_name"] = subscription.queue_name
        return data


def topic_name(arn: str) -> str:
    """The name of a topic, from its ARN."""
    return arn.rsplit(":", 1)[-1]


def list_topic_arns(sns: Any) -> list[str]:
    """The ARNs of all topics, sorted by name.

    Raises:
        TransportError: SNS could not be reached, or refused.
    """
    arns: list[str] = []
    kwargs: dict[str, Any] = {}
    with translate_errors("SNS ListTopics"):
        while True:
            response = sns.list_topics(**kwargs)
            arns.extend(str(topic["TopicArn"]) for topic in response.get("Topics", []))
            token = response.get("NextToken")
            if not token:
                break
            kwargs["NextToken"] = token
    return sorted(arns, key=topic_name)


def topic_arn(sns: Any, topic: str) -> str:
    """The ARN of a topic given by name or ARN.

    Raises:
        TopicNotFoundError: no topic has that name (or ARN).
        TransportError: SNS could not be reached, or refused.
    """
    arns = list_topic_arns(sns)
    if topic in arns:
        return topic
    for arn in arns:
        if topic_name(arn) == topic:
            return arn
    raise TopicNotFoundError(
        f"SNS topic {log_repr(topic, 100)} does not exist: create it (microbus topology apply) or fix the name"
    )


def subscriptions(sns: Any, arn: str) -> list[SubscriptionInfo]:
    """The subscriptions of one topic, with their delivery mode and filter policy.

    Raises:
        TopicNotFoundError: the topic does not exist.
        TransportError: SNS could not be reached, or refused.
    """
    found: list[SubscriptionInfo] = []
    kwargs: dict[str, Any] = {"TopicArn": arn}
    with translate_errors(f"SNS topic {arn}"):
        while True:
            response = sns.list_subscriptions_by_topic(**kwargs)
            for entry in response.get("Subscriptions", []):
                found.append(_subscription(sns, entry))
            token = response.get("NextToken")
            if not token:
                break
            kwargs["NextToken"] = token
    return found


def _subscription(sns: Any, entry: dict[str, Any]) -> SubscriptionInfo:
    arn, protocol, endpoint = str(entry["SubscriptionArn"]), str(entry["Protocol"]), str(entry["Endpoint"])
    if not arn.startswith("arn:"):  # "PendingConfirmation": no attributes to read yet
        return SubscriptionInfo(arn=arn, protocol=protocol, endpoint=endpoint)
    attributes = sns.get_subscription_attributes(SubscriptionArn=arn).get("Attributes", {})
    policy: dict[str, Any] | None = None
    if attributes.get("FilterPolicy"):
        try:
            policy = json.loads(attributes["FilterPolicy"])
        except ValueError:
            policy = {"unparsed": attributes["FilterPolicy"]}
    raw = str(attributes.get("RawMessageDelivery", "false")).lower() == "true"
    return SubscriptionInfo(arn=arn, protocol=protocol, endpoint=endpoint, raw=raw, filter_policy=policy)


def topics(sns: Any) -> list[TopicInfo]:
    """Every topic with its subscriptions, sorted by name.

    Raises:
        TransportError: SNS could not be reached, or refused.
    """
    return [
        TopicInfo(name=topic_name(arn), arn=arn, subscriptions=subscriptions(sns, arn)) for arn in list_topic_arns(sns)
    ]


@dataclass(frozen=True)
class PeekedMessage:
    """One message as it sits in a queue: ids, media type, receive count, size, the decoded body.

    ``body`` is the microbus message (the SNS envelope unwrapped), None when the body is not a JSON object
    (``body_error`` then says why and ``raw_body`` holds the text). ``dead_letter`` holds the attributes
    microbus wrote when it dead-lettered the message, without their ``microbus.`` prefix (``reason``,
    ``error_class``, ``error_message``, ``daemon``, ``dead_lettered_at``, ``receive_count``,
    ``source_message_id``); empty for a message SQS moved itself after ``maxReceiveCount`` receives.
    """

    message_id: str
    sns_message_id: str | None
    media_type: str | None
    receive_count: int
    size: int
    sent_at: float | None
    body: dict[str, Any] | None
    raw_body: str | None = None
    body_error: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)
    dead_letter: dict[str, str] = field(default_factory=dict)
    topic_arn: str | None = None
    message_group_id: str | None = None
    receipt_handle: str = field(default="", repr=False, compare=False)

    def age_s(self, now: float | None = None) -> float | None:
        """Seconds since the message was sent to this queue (None if SQS did not say)."""
        if self.sent_at is None:
            return None
        return max(0.0, (time.time() if now is None else now) - self.sent_at)

    def to_dict(self, *, body: bool = True) -> dict[str, Any]:
        """A JSON-ready dict (without the receipt handle); ``body`` False leaves the body out."""
        data = asdict(self)
        del data["receipt_handle"]
        if not body:
            for key in ("body", "raw_body"):
                del data[key]
        return data


def message_of(raw: dict[str, Any]) -> PeekedMessage:
    """A :class:`PeekedMessage` of one ReceiveMessage entry (with system and message attributes)."""
    body_text = str(raw.get("Body", ""))
    system = raw.get("Attributes", {})
    attributes = {str(name): _attribute_value(value) for name, value in raw.get("MessageAttributes", {}).items()}
    decoded: dict[str, Any] | None = None
    topic: str | None = None
    sns_id: str | None = None
    error: str | None = None
    try:
        decoded, topic, sns_id = unwrap_envelope(body_text)
    except (DecodeError, MalformedBodyError) as exc:
        error = str(exc)
    media_type = decoded.get("mediaType") if decoded is not None else None
    if not isinstance(media_type, str):
        media_type = attributes.get("media_type")
    sent_ms = system.get("SentTimestamp")
    return PeekedMessage(
        message_id=str(raw.get("MessageId", "")),
        sns_message_id=sns_id,
        media_type=media_type,
        receive_count=int(system.get("ApproximateReceiveCount", 0)),
        size=len(body_text.encode("utf-8", "surrogatepass")),
        sent_at=int(sent_ms) / 1000 if sent_ms else None,
        body=decoded,
        raw_body=body_text if decoded is None else None,
        body_error=error,
        attributes=attributes,
        dead_letter={
            name[len(DEAD_LETTER_PREFIX) :]: value
            for name, value in attributes.items()
            if name.startswith(DEAD_LETTER_PREFIX)
        },
        topic_arn=topic,
        message_group_id=system.get("MessageGroupId"),
        receipt_handle=str(raw.get("ReceiptHandle", "")),
    )


def _attribute_value(value: dict[str, Any]) -> str:
    if "StringValue" in value:
        return str(value["StringValue"])
    return f"<{value.get('DataType', 'Binary')}: {len(value.get('BinaryValue', b''))} bytes>"


def receive_held(
    sqs: Any, url: str, *, max_messages: int, visibility_timeout_s: int = PEEK_VISIBILITY_S, wait_time_s: int = 1
) -> Iterator[list[dict[str, Any]]]:
    """Receive batches of up to 10 raw messages, each held invisible, until ``max_messages`` or the queue is empty.

    The caller releases or deletes what it received; a batch with only messages already seen ends the loop.

    Raises:
        QueueNotFoundError, TransportError.
    """
    seen: set[str] = set()
    while len(seen) < max_messages:
        with translate_errors(f"SQS queue {url}"):
            batch = sqs.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=min(MAX_BATCH, max_messages - len(seen)),
                WaitTimeSeconds=wait_time_s,
                VisibilityTimeout=visibility_timeout_s,
                MessageSystemAttributeNames=["All"],
                MessageAttributeNames=["All"],
            ).get("Messages", [])
        fresh = [message for message in batch if message["MessageId"] not in seen]
        if not batch:
            return
        seen.update(message["MessageId"] for message in batch)
        yield batch
        if not fresh:
            return


def release(sqs: Any, url: str, receipt_handles: list[str]) -> int:
    """Make held messages visible again at once (visibility 0); return how many SQS refused (already gone …).

    Raises:
        TransportError: SQS could not be reached.
    """
    refused = 0
    for start in range(0, len(receipt_handles), MAX_BATCH):
        chunk = receipt_handles[start : start + MAX_BATCH]
        entries = [{"Id": str(i), "ReceiptHandle": handle, "VisibilityTimeout": 0} for i, handle in enumerate(chunk)]
        with translate_errors(f"SQS queue {url}"):
            response = sqs.change_message_visibility_batch(QueueUrl=url, Entries=entries)
        refused += len(response.get("Failed", []))
    return refused


def peek(
    sqs: Any, queue: str, *, max_messages: int = 10, visibility_timeout_s: int = PEEK_VISIBILITY_S
) -> list[PeekedMessage]:
    """Up to ``max_messages`` messages of a queue (name or URL), without consuming them.

    Each message is received with a short visibility timeout and released (visibility 0) as soon as the
    peek is over, also when it fails. A peek still counts as a receive: it raises ``ApproximateReceiveCount``,
    which SQS compares with the redrive policy's ``maxReceiveCount``.

    Raises:
        QueueNotFoundError: the queue does not exist.
        TransportError: SQS could not be reached, or refused.
    """
    url = queue_url(sqs, queue)
    held: list[dict[str, Any]] = []
    try:
        for batch in receive_held(sqs, url, max_messages=max_messages, visibility_timeout_s=visibility_timeout_s):
            held.extend(batch)
    finally:
        release(sqs, url, [message["ReceiptHandle"] for message in held])
    unique = {message["MessageId"]: message for message in held}
    return [message_of(message) for message in unique.values()][:max_messages]
