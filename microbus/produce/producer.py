"""SNS producer: validate, encode, choose the topic by media type, publish singly or in batches."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from microcosm.api import defaults

from microbus.errors import (
    EndpointUnreachableError,
    MessageTooLargeError,
    PublishError,
    TopicNotDefinedError,
    TransientTransportError,
    TransportError,
)
from microbus.wire.codecs import MESSAGE_ID_KEY, PUBLISHED_KEY
from microbus.wire.schemas import SchemaRegistry
from microbus.wire.transport import MAX_BATCH, SNSTransport

if TYPE_CHECKING:
    from microcosm.object_graph import ObjectGraph

logger = logging.getLogger(__name__)

SNS_MAX_MESSAGE_BYTES = 262_144
_RETRYABLE = (TransientTransportError, EndpointUnreachableError)
T = TypeVar("T")


@dataclass(frozen=True)
class TopicArns:
    """Chooses the SNS topic of a media type: a per-media-type mapping, else the default."""

    default: str | None = None
    mappings: dict[str, str] = field(default_factory=dict)

    def choose(self, media_type: str) -> str:
        """Return the topic ARN for a media type.

        Raises:
            TopicNotDefinedError: neither a mapping nor a default topic is configured.
        """
        topic_arn = self.mappings.get(media_type) or self.default
        if not topic_arn:
            raise TopicNotDefinedError(
                f"No SNS topic for media type {media_type!r}: set sns_topic_arns.default or "
                f"add it to sns_topic_arns.mappings"
            )
        return topic_arn


@dataclass(frozen=True)
class OutgoingMessage:
    """A validated, encoded message ready to publish."""

    media_type: str
    topic_arn: str
    message: str
    message_attributes: dict[str, Any]


def message_size(message: str, message_attributes: dict[str, Any]) -> int:
    """Bytes SNS counts against its limit: the body plus attribute names, types and values."""
    size = len(message.encode())
    for name, value in message_attributes.items():
        size += len(name.encode()) + len(value["DataType"].encode()) + len(value["StringValue"].encode())
    return size


class SNSProducer:
    """Produces media-typed messages to SNS topics.

    Parameters:
        transport: publishes to SNS.
        schema_registry: validates and encodes content by media type.
        topic_arns: chooses the topic of each media type.
        opaque: returns the opaque data to attach (request ids …); None for none.
        max_attempts: tries per publish for transient failures (throttling, 5xx, connection errors).
        retry_base_s: first backoff between tries; doubles each time.
    """

    def __init__(
        self,
        *,
        transport: SNSTransport,
        schema_registry: SchemaRegistry,
        topic_arns: TopicArns,
        opaque: Callable[[], dict[str, Any]] | None = None,
        max_attempts: int = 3,
        retry_base_s: float = 0.2,
    ) -> None:
        self.transport = transport
        self.schema_registry = schema_registry
        self.topic_arns = topic_arns
        self.opaque = opaque
        self.max_attempts = max_attempts
        self.retry_base_s = retry_base_s

    def create_message(
        self,
        media_type: str,
        dct: dict[str, Any] | None = None,
        uri: str | None = None,
        opaque_data: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> OutgoingMessage:
        """Validate and encode a message without sending it.

        The opaque data gets a fresh ``x-microbus-message-id``, replacing any inherited from a message being
        handled: it identifies this message across producer retries, SNS duplicates and SQS redeliveries,
        raw or enveloped (the idempotency key).

        Raises:
            UnknownMediaTypeError, MessageValidationError, MessageTooLargeError, TopicNotDefinedError.
        """
        topic_arn = self.topic_arns.choose(media_type)
        opaque = dict(self.opaque() if self.opaque else {})
        opaque.update(opaque_data or {})
        opaque[PUBLISHED_KEY] = str(time.time())
        opaque[MESSAGE_ID_KEY] = uuid.uuid4().hex
        message = self.schema_registry.find(media_type).encode(
            dct, media_type=media_type, uri=uri, opaque_data=opaque, **kwargs
        )
        attributes = {"media_type": {"DataType": "String", "StringValue": media_type}}
        size = message_size(message, attributes)
        if size > SNS_MAX_MESSAGE_BYTES:
            raise MessageTooLargeError(
                f"{media_type} message is {size} bytes, over the SNS limit of {SNS_MAX_MESSAGE_BYTES}: "
                "send a reference (e.g. an S3 key) instead of the payload"
            )
        return OutgoingMessage(media_type, topic_arn, message, attributes)

    def produce(self, media_type: str, dct: dict[str, Any] | None = None, **kwargs: Any) -> str:
        """Validate and publish one message; return its SNS message id.

        Content may be a dict, keyword arguments, or both; ``uri`` and ``opaque_data`` are optional.

        Raises:
            MessageValidationError: a field is missing or wrong (nothing was sent).
            MessageTooLargeError: the message is over 256 KiB (nothing was sent).
            TopicNotDefinedError: no topic is configured for the media type.
            TransportError: SNS could not be reached, or refused, after retries.
        """
        outgoing = self.create_message(media_type, dct, **kwargs)
        return self.publish(outgoing)

    def publish(self, outgoing: OutgoingMessage) -> str:
        """Publish an encoded message, retrying transient failures; return its message id."""
        message_id = self._retrying(
            lambda: self.transport.publish(outgoing.topic_arn, outgoing.message, outgoing.message_attributes)
        )
        logger.debug("Published %s as %r", outgoing.media_type, message_id)
        return message_id

    def produce_batch(self, media_type: str, contents: Sequence[dict[str, Any]]) -> list[str]:
        """Validate all, then publish in batches of 10; return the message ids in order.

        Raises:
            MessageValidationError: one of the contents is invalid (nothing was sent).
            PublishError: some entries failed after retries; it lists which, and the ids of the others.
        """
        return self.publish_many([self.create_message(media_type, content) for content in contents])

    def publish_many(self, messages: Sequence[OutgoingMessage]) -> list[str]:
        """Publish encoded messages with PublishBatch, per topic, 10 at a time.

        Raises:
            PublishError: some entries failed after retries.
        """
        ids: list[str | None] = [None] * len(messages)
        errors: dict[int, str] = {}
        for topic_arn, indexes in _group_by_topic(messages).items():
            for start in range(0, len(indexes), MAX_BATCH):
                chunk = indexes[start : start + MAX_BATCH]
                errors.update(self._publish_chunk(topic_arn, chunk, messages, ids))
        if errors:
            raise PublishError(
                f"{len(errors)} of {len(messages)} messages were not published: "
                f"{'; '.join(sorted(set(errors.values())))}",
                message_ids=ids,
                failed=errors,
            )
        return [message_id for message_id in ids if message_id is not None]

    def _publish_chunk(
        self, topic_arn: str, chunk: list[int], messages: Sequence[OutgoingMessage], ids: list[str | None]
    ) -> dict[int, str]:
        remaining = chunk
        failed: dict[int, str] = {}
        for attempt in range(self.max_attempts):
            if attempt:
                time.sleep(self.retry_base_s * 2 ** (attempt - 1))
            entries = [(messages[i].message, messages[i].message_attributes) for i in remaining]
            try:
                batch_ids, batch_failed = self.transport.publish_batch(topic_arn, entries)
            except _RETRYABLE as exc:
                failed = {i: str(exc) for i in remaining}
                continue
            except TransportError as exc:  # not worth retrying (no such topic, access denied): report, go on
                return {i: str(exc) for i in remaining}
            for position, index in enumerate(remaining):
                ids[index] = batch_ids[position]
            failed = {remaining[position]: reason for position, reason in batch_failed.items()}
            remaining = sorted(failed)
            if not remaining:
                break
        return failed

    def _retrying(self, call: Callable[[], T]) -> T:
        for attempt in range(1, self.max_attempts + 1):
            try:
                return call()
            except _RETRYABLE as exc:
                if attempt == self.max_attempts:
                    raise
                delay = self.retry_base_s * 2 ** (attempt - 1)
                logger.warning("Publish failed (%s); retry %d in %.1fs", type(exc).__name__, attempt, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")

    @contextmanager
    def deferred(self) -> Iterator[DeferredProducer]:
        """Collect messages in a block (e.g. a web request) and publish them in batches on success."""
        with DeferredProducer(self) as deferred:
            yield deferred


class DeferredProducer:
    """Validates at once, publishes at the end of a block that raised nothing."""

    def __init__(self, producer: SNSProducer) -> None:
        self.producer = producer
        self.messages: list[OutgoingMessage] = []

    def produce(self, media_type: str, dct: dict[str, Any] | None = None, **kwargs: Any) -> None:
        """Validate now, publish when the block ends."""
        self.messages.append(self.producer.create_message(media_type, dct, **kwargs))

    def __enter__(self) -> DeferredProducer:
        self.messages = []
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None and self.messages:
            self.producer.publish_many(self.messages)


def _group_by_topic(messages: Iterable[OutgoingMessage]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for index, message in enumerate(messages):
        groups.setdefault(message.topic_arn, []).append(index)
    return groups


@defaults(default=None, mappings={})
def configure_sns_topic_arns(graph: ObjectGraph) -> TopicArns:
    """microcosm factory: ``graph.sns_topic_arns`` from ``sns_topic_arns.default`` and ``.mappings``."""
    config = graph.config.sns_topic_arns
    return TopicArns(default=config.default or None, mappings=dict(config.mappings or {}))


@defaults(max_attempts=3, retry_base_s=0.2)
def configure_sns_producer(graph: ObjectGraph) -> SNSProducer:
    """microcosm factory: ``graph.sns_producer``."""
    config = graph.config.sns_producer
    return SNSProducer(
        transport=SNSTransport(client=graph.sns_client),
        schema_registry=graph.pubsub_message_schema_registry,
        topic_arns=graph.sns_topic_arns,
        opaque=graph.opaque.as_dict,
        max_attempts=int(config.max_attempts),
        retry_base_s=float(config.retry_base_s),
    )
