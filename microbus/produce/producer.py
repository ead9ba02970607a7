"""SNS producer: validate, encode, choose the topic by media type, publish singly or in batches."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from microcosm.api import defaults

from microbus.errors import (
    ConfigurationError,
    EndpointUnreachableError,
    MessageTooLargeError,
    MessageValidationError,
    PublishError,
    TopicNotDefinedError,
    TopicNotFoundError,
    TransientTransportError,
    TransportError,
)
from microbus.wire.codecs import MESSAGE_ID_KEY, PUBLISHED_KEY, PubSubMessageCodec, merge_content
from microbus.wire.context import OpaqueData, forwarded_opaque_data
from microbus.wire.delivery import DELIVER_AT_KEY, due_time, format_due
from microbus.wire.payloads import S3PayloadStore, size_attribute
from microbus.wire.schemas import SchemaRegistry
from microbus.wire.tracecontext import producer_span, trace_attributes
from microbus.wire.transport import MAX_BATCH, SNSTransport

if TYPE_CHECKING:
    from microcosm.object_graph import ObjectGraph

logger = logging.getLogger(__name__)

SNS_MAX_MESSAGE_BYTES = 262_144
SNS_MAX_BATCH_BYTES = 262_144
"""Largest total size of one PublishBatch request: the messages and their attributes, all entries together."""
FIFO_SUFFIX = ".fifo"
GROUP_ID_FIELD_ATTRIBUTE = "MESSAGE_GROUP_ID_FIELD"
_RETRYABLE = (TransientTransportError, EndpointUnreachableError)
_FIFO_ID = re.compile(r"[A-Za-z0-9!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~]{1,128}")
T = TypeVar("T")

GroupIdSource = str | Callable[[dict[str, Any]], str]
"""Where a media type's message group id comes from: a content field name, or a function of the content."""


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
                f"No SNS topic for media type {media_type!r}: set microbus_sns_topic_arns.default or "
                f"add it to microbus_sns_topic_arns.mappings"
            )
        return topic_arn


@dataclass(frozen=True)
class OutgoingMessage:
    """A validated, encoded message ready to publish."""

    media_type: str
    topic_arn: str
    message: str
    message_attributes: dict[str, Any]
    message_id: str | None = None
    """The stamped ``x-microbus-message-id`` (the deduplication id of a FIFO publish, unless given one)."""
    message_group_id: str | None = None
    """FIFO topics only: the message group (None for a standard topic)."""
    deduplication_id: str | None = None
    """FIFO topics only: the deduplication id the caller gave, if any."""
    offload: bool = False
    """Over the topic's limit: the body goes to S3 when published, and the message carries a pointer."""


class MessageCapture(Protocol):
    """Takes the messages a producer would publish in this context (a deferred block, an outbox transaction)."""

    def capture(self, producer: SNSProducer, messages: Sequence[OutgoingMessage]) -> None:
        """Keep ``messages`` (validated and encoded by ``producer``) instead of publishing them now."""


_capture: ContextVar[MessageCapture | None] = ContextVar("microbus_message_capture", default=None)


def current_capture() -> MessageCapture | None:
    """The capture that takes this context's publishes (thread or task), None when they go to SNS."""
    return _capture.get()


@contextmanager
def capturing(capture: MessageCapture | None) -> Iterator[None]:
    """In the block, :meth:`SNSProducer.publish` and :meth:`~SNSProducer.publish_many` hand their messages to
    ``capture`` instead of SNS (None: to SNS, e.g. to flush what a capture kept). Context-local: other threads
    and tasks are not affected; tasks and threads started with a copy of the context are."""
    token = _capture.set(capture)
    try:
        yield
    finally:
        _capture.reset(token)


def is_fifo_topic(topic_arn: str) -> bool:
    """Whether the topic is a FIFO topic (their names, and only theirs, end in ``.fifo``)."""
    return topic_arn.endswith(FIFO_SUFFIX)


def message_size(message: str, message_attributes: dict[str, Any]) -> int:
    """Bytes SNS counts against its limit: the body plus attribute names, types and values."""
    size = len(message.encode("utf-8", "surrogatepass"))
    for name, value in message_attributes.items():
        size += len(name.encode()) + len(str(value.get("DataType", "")).encode())
        size += len(str(value.get("StringValue", "")).encode("utf-8", "surrogatepass"))
        size += len(value.get("BinaryValue", b""))
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
        group_ids: per media type, the message group id of messages to FIFO topics: the name of a content
            field, or a function of the content. An explicit ``message_group_id=`` wins over it; it wins over
            the schema's ``MESSAGE_GROUP_ID_FIELD``.
        payload_store: where messages over the topic's limit go (S3, in the extended clients' format); None
            (the default): such messages raise :class:`MessageTooLargeError`.
        clock: the current time (delivery times are computed from it).
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
        group_ids: Mapping[str, GroupIdSource] | None = None,
        payload_store: S3PayloadStore | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.transport = transport
        self.schema_registry = schema_registry
        self.topic_arns = topic_arns
        self.opaque = opaque
        self.max_attempts = max_attempts
        self.retry_base_s = retry_base_s
        self.group_ids = dict(group_ids or {})
        self.payload_store = payload_store
        self.clock = clock
        self._topic_attributes: dict[str, dict[str, str]] = {}

    def create_message(
        self,
        media_type: str,
        dct: dict[str, Any] | None = None,
        uri: str | None = None,
        opaque_data: dict[str, Any] | None = None,
        *,
        message_group_id: str | None = None,
        deduplication_id: str | None = None,
        deliver_at: datetime | None = None,
        delay: timedelta | None = None,
        **kwargs: Any,
    ) -> OutgoingMessage:
        """Validate and encode a message without sending it.

        Content may be a dict, keyword arguments, or both, merged without losing a field: ``uri`` and
        ``opaque_data`` may be in the dict or given as arguments (None: not given); a field in both with
        different values is an error. Every field must be declared by the schema, unless it opts into
        ``EXCLUDE`` (see :mod:`microbus.wire.codecs`).

        The opaque data is, by increasing precedence: the graph's ``opaque``, what the message being handled here
        passes on (its cid, ``x-request-id``, ``x-request-ttl`` and other entries, see
        :mod:`microbus.wire.context`), and ``opaque_data``; keys are lower-cased, as microcosm-pubsub sends them.
        It gets a fresh ``x-microbus-message-id``, replacing any inherited from a message being
        handled: it identifies this message across producer retries, SNS duplicates and SQS redeliveries,
        raw or enveloped (the idempotency key).

        For a FIFO topic the message group id is ``message_group_id``, else the producer's ``group_ids`` entry
        for the media type, else the schema's ``MESSAGE_GROUP_ID_FIELD``; both ids are ignored for a standard
        topic. ``deliver_at`` (an aware datetime) or ``delay`` makes the message due later: consumers hold it
        until then (``x-microbus-deliver-at`` in the opaque data). Nothing here calls the network, except for a
        message over 256 KiB: the topic's attributes are read (once per topic) for a larger ``MaximumMessageSize``.

        Raises:
            UnknownMediaTypeError, MessageValidationError, MessageTooLargeError, TopicNotDefinedError;
            ConfigurationError: a FIFO topic, and no way to find the message group id.
        """
        due = due_time(deliver_at=deliver_at, delay=delay, now=self.clock())
        topic_arn = self.topic_arns.choose(media_type)
        codec = self.schema_registry.find(media_type)
        given = {key: value for key, value in (("uri", uri), ("opaque_data", opaque_data)) if value is not None}
        content = merge_content(dct, {**given, **kwargs}, media_type=media_type)
        callers_opaque = content.pop("opaque_data", None) or {}
        if not isinstance(callers_opaque, Mapping):
            raise MessageValidationError(
                f"Invalid {media_type} message: opaque_data: Not a valid mapping: {type(callers_opaque).__name__}."
            )
        opaque = OpaqueData(self.opaque() if self.opaque else {})
        opaque.update(forwarded_opaque_data())
        opaque.update(_case_folded(callers_opaque, media_type))
        opaque[PUBLISHED_KEY] = str(time.time())
        opaque[MESSAGE_ID_KEY] = message_id = uuid.uuid4().hex
        if due is not None:
            opaque[DELIVER_AT_KEY] = format_due(due)
        message = codec.encode(content, media_type=media_type, opaque_data=opaque)
        if is_fifo_topic(topic_arn):
            message_group_id = self._message_group_id(codec, topic_arn, content, message, message_group_id)
            if deduplication_id is not None:
                _check_fifo_id(deduplication_id, "deduplication id", media_type)
        else:
            message_group_id = deduplication_id = None
        attributes = {"media_type": {"DataType": "String", "StringValue": media_type}, **trace_attributes()}
        size = message_size(message, attributes)
        limit = self.max_message_bytes(topic_arn) if size > SNS_MAX_MESSAGE_BYTES else SNS_MAX_MESSAGE_BYTES
        offload = size > limit
        if offload and self.payload_store is None:
            raise MessageTooLargeError(
                f"{media_type} message is {size} bytes, over the SNS limit of {limit}: send a reference (e.g. an "
                "S3 key) instead of the payload, or turn on large payloads (large_payloads.bucket)"
            )
        return OutgoingMessage(
            media_type,
            topic_arn,
            message,
            attributes,
            message_id=message_id,
            message_group_id=message_group_id,
            deduplication_id=deduplication_id,
            offload=offload,
        )

    def max_message_bytes(self, topic_arn: str) -> int:
        """The largest message a topic takes: its ``MaximumMessageSize`` attribute when it has one, else 256 KiB.

        Raises:
            TopicNotFoundError: the topic does not exist.
            TransportError: SNS could not be reached, after retries.
        """
        value = self.topic_attributes(topic_arn).get("MaximumMessageSize", "")
        return int(value) if value.isdigit() else SNS_MAX_MESSAGE_BYTES

    def _offloaded(self, outgoing: OutgoingMessage) -> OutgoingMessage:
        """The message to publish: itself, or (over the limit) a pointer to its body, stored in S3 first."""
        if not outgoing.offload:
            return outgoing
        assert self.payload_store is not None
        pointer = self.payload_store.put(outgoing.message)
        size = len(outgoing.message.encode("utf-8", "surrogatepass"))
        attributes = {**outgoing.message_attributes, **size_attribute(size)}
        logger.debug("Offloaded a %d-byte %s message to S3", size, outgoing.media_type)
        return replace(outgoing, message=pointer.to_body(), message_attributes=attributes, offload=False)

    def _message_group_id(
        self, codec: PubSubMessageCodec, topic_arn: str, content: dict[str, Any], message: str, explicit: str | None
    ) -> str:
        media_type = codec.media_type
        schema_cls = type(codec.schema)
        source: GroupIdSource | None = explicit
        if source is None:
            source = self.group_ids.get(media_type)
        if source is None:
            source = getattr(schema_cls, GROUP_ID_FIELD_ATTRIBUTE, None)
        if source is None:
            raise ConfigurationError(
                f"{media_type} goes to the FIFO topic {topic_arn}, which needs a message group id: pass "
                f"message_group_id=..., map the media type to a field or function in SNSProducer(group_ids=...) "
                f"(config microbus_sns_producer.group_ids), or set MESSAGE_GROUP_ID_FIELD on {schema_cls.__qualname__}."
            )
        if explicit is not None:
            value: Any = explicit
        elif callable(source):
            value = source(dict(content))
        else:
            value = _field_value(codec, source, content, message, topic_arn)
        return _check_fifo_id(value, "message group id", media_type)

    def produce(
        self,
        media_type: str,
        dct: dict[str, Any] | None = None,
        *,
        message_group_id: str | None = None,
        deduplication_id: str | None = None,
        deliver_at: datetime | None = None,
        delay: timedelta | None = None,
        **kwargs: Any,
    ) -> str:
        """Validate and publish one message; return its SNS message id.

        Content may be a dict, keyword arguments, or both; ``uri`` and ``opaque_data`` are optional.
        ``message_group_id`` and ``deduplication_id`` are for FIFO topics; ``deliver_at`` or ``delay`` make it
        due later (see :meth:`create_message`).

        Raises:
            MessageValidationError: a field is missing or wrong (nothing was sent).
            MessageTooLargeError: the message is over the topic's limit, and large payloads are off (nothing
                was sent).
            TopicNotDefinedError: no topic is configured for the media type.
            ConfigurationError: a FIFO topic, and no message group id (nothing was sent).
            TransportError: SNS could not be reached, or refused, after retries.
        """
        with producer_span(self._span_topic(media_type), media_type) as span:
            outgoing = self.create_message(
                media_type,
                dct,
                message_group_id=message_group_id,
                deduplication_id=deduplication_id,
                deliver_at=deliver_at,
                delay=delay,
                **kwargs,
            )
            message_id = self.publish(outgoing)
            if span is not None:
                span.set_attribute("messaging.message.id", message_id)
        return message_id

    def publish(self, outgoing: OutgoingMessage) -> str:
        """Publish an encoded message, retrying transient failures; return its message id.

        To a FIFO topic, the message goes with its group id and deduplication id: the one given, else none
        when the topic has content-based deduplication, else the stamped message id, so that publishing the
        same message again (a retry) is deduplicated. Inside :func:`capturing`, the capture takes the message
        and its ``x-microbus-message-id`` is returned (there is no SNS id yet).
        """
        _check_group_ids([outgoing])
        if (capture := _capture.get()) is not None:
            capture.capture(self, [outgoing])
            return str(outgoing.message_id)
        fifo = self._fifo_ids(outgoing.topic_arn, {0: outgoing})
        outgoing = self._offloaded(outgoing)
        if fifo:
            group_id, dedup_id = fifo[0]
            message_id = self._retrying(
                lambda: self.transport.publish(
                    outgoing.topic_arn,
                    outgoing.message,
                    outgoing.message_attributes,
                    message_group_id=group_id,
                    deduplication_id=dedup_id,
                )
            )
        else:
            message_id = self._retrying(
                lambda: self.transport.publish(outgoing.topic_arn, outgoing.message, outgoing.message_attributes)
            )
        logger.debug("Published %s as %r", outgoing.media_type, message_id)
        return message_id

    def produce_batch(
        self,
        media_type: str,
        contents: Sequence[dict[str, Any]],
        *,
        message_group_id: str | None = None,
        deduplication_ids: Sequence[str | None] | None = None,
        deliver_at: datetime | None = None,
        delay: timedelta | None = None,
    ) -> list[str]:
        """Validate all, then publish in batches (see :meth:`publish_many`); return the message ids in order.

        For a FIFO topic, ``message_group_id`` is the group of every message (else each message's group comes
        from ``group_ids`` or the schema), and ``deduplication_ids`` runs parallel to ``contents``. ``deliver_at``
        or ``delay`` applies to every message.

        Raises:
            MessageValidationError: one of the contents is invalid (nothing was sent).
            ConfigurationError: a FIFO topic, and no message group id (nothing was sent).
            PublishError: some entries failed after retries; it lists which, and the ids of the others.
        """
        if deduplication_ids is not None and len(deduplication_ids) != len(contents):
            raise ValueError(f"{len(deduplication_ids)} deduplication ids for {len(contents)} contents")
        dedup_ids = deduplication_ids or [None] * len(contents)
        with producer_span(self._span_topic(media_type), media_type) as span:
            if span is not None:
                span.set_attribute("messaging.batch.message_count", len(contents))
            return self.publish_many(
                [
                    self.create_message(
                        media_type,
                        content,
                        message_group_id=message_group_id,
                        deduplication_id=dedup_id,
                        deliver_at=deliver_at,
                        delay=delay,
                    )
                    for content, dedup_id in zip(contents, dedup_ids, strict=True)
                ]
            )

    def _span_topic(self, media_type: str) -> str:
        """The topic a media type goes to, for naming its span (empty when none: create_message raises then)."""
        return self.topic_arns.mappings.get(media_type) or self.topic_arns.default or ""

    def publish_many(self, messages: Sequence[OutgoingMessage]) -> list[str]:
        """Publish encoded messages with PublishBatch, per topic, in order.

        A PublishBatch carries at most 10 messages and at most :data:`SNS_MAX_BATCH_BYTES` (256 KiB: bodies and
        attributes of all its entries together), so a batch is cut at whichever comes first; a message that alone
        is near the limit goes alone.

        Raises:
            ConfigurationError: a message to a FIFO topic has no group id (nothing was sent).
            PublishError: some entries failed after retries.

        Inside :func:`capturing`, the capture takes the messages and their ``x-microbus-message-id`` are returned.
        """
        _check_group_ids(messages)
        if (capture := _capture.get()) is not None:
            capture.capture(self, messages)
            return [str(message.message_id) for message in messages]
        messages = [self._offloaded(outgoing) for outgoing in messages]
        ids: list[str | None] = [None] * len(messages)
        errors: dict[int, str] = {}
        for topic_arn, indexes in _group_by_topic(messages).items():
            for chunk in _chunks(indexes, messages):
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
        try:
            fifo_ids = self._fifo_ids(topic_arn, {i: messages[i] for i in chunk})
        except TransportError as exc:  # the topic's attributes could not be read
            return {i: str(exc) for i in chunk}
        for attempt in range(self.max_attempts):
            if attempt:
                time.sleep(self.retry_base_s * 2 ** (attempt - 1))
            entries = [(messages[i].message, messages[i].message_attributes) for i in remaining]
            fifo: dict[str, list[str | None]] = {}
            if fifo_ids:
                fifo["message_group_ids"] = [fifo_ids[i][0] for i in remaining]
                fifo["deduplication_ids"] = [fifo_ids[i][1] for i in remaining]
            try:
                batch_ids, batch_failed = self.transport.publish_batch(topic_arn, entries, **fifo)
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

    def _fifo_ids(self, topic_arn: str, messages: Mapping[int, OutgoingMessage]) -> dict[int, tuple[str, str | None]]:
        """Group and deduplication id of each message to a FIFO topic, by index; empty for a standard topic."""
        if not is_fifo_topic(topic_arn):
            return {}
        _check_group_ids(messages.values())
        given = all(m.deduplication_id is not None for m in messages.values())
        derived = False if given else self.content_based_deduplication(topic_arn)
        return {
            index: (str(m.message_group_id), m.deduplication_id or (None if derived else m.message_id))
            for index, m in messages.items()
        }

    def content_based_deduplication(self, topic_arn: str) -> bool:
        """Whether a FIFO topic derives deduplication ids from the body (read once per topic, then cached).

        Without permission to read the topic's attributes (only ``sns:Publish``), False: the stamped message
        id is sent, which is correct either way.

        Raises:
            TopicNotFoundError: the topic does not exist.
            TransportError: SNS could not be reached, after retries.
        """
        return self.topic_attributes(topic_arn).get("ContentBasedDeduplication", "false").lower() == "true"

    def topic_attributes(self, topic_arn: str) -> dict[str, str]:
        """A topic's attributes, read once per topic, then cached; empty without permission to read them.

        Raises:
            TopicNotFoundError: the topic does not exist.
            TransportError: SNS could not be reached, after retries.
        """
        known = self._topic_attributes.get(topic_arn)
        if known is not None:
            return known
        try:
            attributes = self._retrying(lambda: self.transport.topic_attributes(topic_arn))
        except (TopicNotFoundError, *_RETRYABLE):
            raise
        except TransportError as exc:
            logger.warning(
                "Cannot read the attributes of %s (%s): taking ContentBasedDeduplication as off and the "
                "message size limit as 256 KiB",
                topic_arn,
                exc,
            )
            attributes = {}
        self._topic_attributes[topic_arn] = attributes
        return attributes

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

    def produce(
        self,
        media_type: str,
        dct: dict[str, Any] | None = None,
        *,
        message_group_id: str | None = None,
        deduplication_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        """Validate now (FIFO group id included), publish when the block ends."""
        self.messages.append(
            self.producer.create_message(
                media_type, dct, message_group_id=message_group_id, deduplication_id=deduplication_id, **kwargs
            )
        )

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


def _case_folded(opaque: Mapping[Any, Any], media_type: str) -> OpaqueData:
    """The caller's opaque data with lower-case keys.

    Raises:
        MessageValidationError: two keys differ only in case and have different values.
    """
    folded = OpaqueData(opaque)
    clashes = sorted({str(key) for key, value in opaque.items() if isinstance(key, str) and folded.get(key) != value})
    if clashes:
        raise MessageValidationError(
            f"Invalid {media_type} message: opaque_data keys {', '.join(clashes)} differ only in case, with "
            "different values: opaqueData keys are case-insensitive, give each once."
        )
    return folded


def _check_group_ids(messages: Iterable[OutgoingMessage]) -> None:
    """Raises ConfigurationError when a message to a FIFO topic has no group id (one not from create_message)."""
    for outgoing in messages:
        if outgoing.message_group_id is None and is_fifo_topic(outgoing.topic_arn):
            raise ConfigurationError(
                f"{outgoing.media_type} message for the FIFO topic {outgoing.topic_arn} has no message group id: "
                "create it with SNSProducer.create_message, which finds one."
            )


def _field_value(codec: PubSubMessageCodec, name: str, content: dict[str, Any], message: str, topic_arn: str) -> Any:
    """The value of the group id field ``name`` (declared, attribute or wire name) in content, else on the wire."""
    media_type = codec.media_type
    declared = next(
        ((key, f) for key, f in codec.schema.fields.items() if name in (key, f.attribute, f.data_key)), None
    )
    if declared is None:
        raise ConfigurationError(
            f"The message group id field {name!r} of {media_type} names no field of "
            f"{type(codec.schema).__qualname__}: fix microbus_sns_producer.group_ids or MESSAGE_GROUP_ID_FIELD."
        )
    key, field = declared
    value = content.get(field.attribute or key)
    if value is None:
        value = json.loads(message).get(field.data_key or key)
    if value is None:
        raise MessageValidationError(
            f"Invalid {media_type} message: the FIFO topic {topic_arn} takes its message group id from "
            f"{name!r}, which is missing; give it a value or pass message_group_id=..."
        )
    return value


def _check_fifo_id(value: Any, what: str, media_type: str) -> str:
    """A message group or deduplication id as SNS accepts it: 1-128 ASCII letters, digits and punctuation.

    Raises:
        MessageValidationError: it is not one.
    """
    if isinstance(value, uuid.UUID) or (isinstance(value, int) and not isinstance(value, bool)):
        value = str(value)
    if not isinstance(value, str) or not _FIFO_ID.fullmatch(value):
        shown = repr(value) if len(repr(value)) <= 60 else f"{repr(value)[:60]}… ({len(repr(value))} chars)"
        raise MessageValidationError(
            f"Invalid {media_type} message: its {what} {shown} is not 1 to 128 ASCII letters, digits or punctuation."
        )
    return value


def _chunks(indexes: Sequence[int], messages: Sequence[OutgoingMessage]) -> Iterator[list[int]]:
    """The indexes, in order, cut into PublishBatch requests of at most 10 messages and 256 KiB."""
    chunk: list[int] = []
    chunk_bytes = 0
    for index in indexes:
        size = message_size(messages[index].message, messages[index].message_attributes)
        if chunk and (len(chunk) == MAX_BATCH or chunk_bytes + size > SNS_MAX_BATCH_BYTES):
            yield chunk
            chunk, chunk_bytes = [], 0
        chunk.append(index)
        chunk_bytes += size
    if chunk:
        yield chunk


def _group_by_topic(messages: Iterable[OutgoingMessage]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for index, message in enumerate(messages):
        groups.setdefault(message.topic_arn, []).append(index)
    return groups


@defaults(default=None, mappings={})
def configure_sns_topic_arns(graph: ObjectGraph) -> TopicArns:
    """microcosm factory: ``graph.microbus_sns_topic_arns`` from its section's ``default`` and ``mappings``."""
    config = graph.config.microbus_sns_topic_arns
    return TopicArns(default=config.default or None, mappings=dict(config.mappings or {}))


@defaults(max_attempts=3, retry_base_s=0.2, group_ids={})
def configure_sns_producer(graph: ObjectGraph) -> SNSProducer:
    """microcosm factory: ``graph.microbus_sns_producer``; its ``group_ids`` map media types to group id fields."""
    config = graph.config.microbus_sns_producer
    return SNSProducer(
        transport=SNSTransport(client=graph.sns_client),
        schema_registry=graph.microbus_pubsub_message_schema_registry,
        topic_arns=graph.microbus_sns_topic_arns,
        opaque=graph.opaque.as_dict,
        max_attempts=int(config.max_attempts),
        retry_base_s=float(config.retry_base_s),
        group_ids={str(media_type): str(name) for media_type, name in dict(config.group_ids or {}).items()},
        payload_store=graph.payload_store,
    )


@defaults(bucket=None, key_prefix="", delete_after_ack=False)
def configure_payload_store(graph: ObjectGraph) -> S3PayloadStore | None:
    """microcosm factory: ``graph.payload_store``, the S3 store of large payloads; None (off) without
    ``payload_store.bucket``. ``payload_store.delete_after_ack`` deletes an object once its message was acked."""
    config = graph.config.payload_store
    if not config.bucket:
        return None
    return S3PayloadStore(
        client=graph.s3_client,
        bucket=str(config.bucket),
        key_prefix=str(config.key_prefix or ""),
        delete_after_ack=str(config.delete_after_ack).strip().lower() in ("1", "true", "yes", "on"),
    )
