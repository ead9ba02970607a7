"""A received SQS message, decoded from its (raw or SNS-enveloped) body."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from microbus.errors import DecodeError, MissingMediaTypeError, PayloadError
from microbus.wire.codecs import MESSAGE_ID_KEY
from microbus.wire.context import CID_KEY, OpaqueData
from microbus.wire.envelope import unwrap
from microbus.wire.payloads import PayloadPointer, is_offloaded

if TYPE_CHECKING:
    from microbus.wire.payloads import S3PayloadStore
    from microbus.wire.schemas import SchemaRegistry


class MessageQueue(Protocol):
    """What a message needs of the queue it came from to ack or nack itself (an :class:`SQSConsumer`)."""

    def ack(self, message: SQSMessage) -> None:
        """Delete the message."""

    def nack(self, message: SQSMessage, visibility_timeout_seconds: int = 0) -> None:
        """Make the message visible again after ``visibility_timeout_seconds``."""


@dataclass
class SQSMessage:
    """One received message.

    ``content`` is the decoded message (schema fields plus ``media_type`` and ``opaque_data``); it is
    None when the message could not be decoded, and then ``error`` says why.
    """

    consumer: MessageQueue | None
    message_id: str
    receipt_handle: str
    body: str
    approximate_receive_count: int = 1
    media_type: str | None = None
    content: dict[str, Any] | None = None
    error: DecodeError | None = None
    topic_arn: str | None = None
    sns_message_id: str | None = None
    message_group_id: str | None = None
    message_attributes: dict[str, Any] = field(default_factory=dict)
    sent_at: float | None = None
    """When it was published, as epoch seconds: the SNS envelope's ``Timestamp``, else SQS's ``SentTimestamp``."""
    envelope_attributes: dict[str, str] = field(default_factory=dict)
    """The SNS envelope's string message attributes (enveloped delivery), name → value."""
    payload_pointer: PayloadPointer | None = None
    """Where the body was fetched from, when it was offloaded to S3 (``body`` is then the pointer)."""
    _opaque: tuple[object, OpaqueData] | None = field(default=None, init=False, repr=False, compare=False)
    """The case-folded ``opaque_data`` and the content entry it was folded from (folded once, copied per read)."""

    def __repr__(self) -> str:
        """Ids and sizes only: never the body, the content, the attributes' values or the receipt handle."""
        return (
            f"SQSMessage(message_id={self.message_id!r}, sns_message_id={self.sns_message_id!r}, "
            f"receive_count={self.approximate_receive_count}, body={len(self.body)} chars, "
            f"attributes={len(self.message_attributes)}, decoded={self.content is not None}, "
            f"error={type(self.error).__name__ if self.error is not None else None})"
        )

    @property
    def opaque_data(self) -> OpaqueData:
        """The opaque data carried through the flow (request ids, publish time, …): a copy, keys lower-cased
        as microcosm-pubsub sends them, looked up in any case."""
        return self.folded_opaque_data().copy()

    def folded_opaque_data(self) -> OpaqueData:
        """:attr:`opaque_data` itself, not a copy: for reading only (the framework's per-message lookups).

        Folded once per ``content["opaque_data"]`` object: a new one put into ``content`` is folded again.
        """
        raw = self.content.get("opaque_data") if self.content is not None else None
        cached = self._opaque
        if cached is None or cached[0] is not raw:
            cached = self._opaque = (raw, OpaqueData(raw or {}))
        return cached[1]

    @property
    def cid(self) -> str:
        """The correlation id its handler runs under: the inbound ``x-microbus-cid``, else :attr:`idempotency_key`."""
        opaque = self.folded_opaque_data()
        cid = dict.get(opaque, CID_KEY)  # the keys are folded already
        return cid if isinstance(cid, str) and cid else self.idempotency_key_in(opaque)

    def attribute(self, name: str) -> str | None:
        """A string message attribute: the SQS one (raw delivery), else the SNS envelope's."""
        value = self.message_attributes.get(name)
        if isinstance(value, dict) and isinstance(value.get("StringValue"), str):
            return str(value["StringValue"])
        return self.envelope_attributes.get(name)

    @property
    def idempotency_key(self) -> str:
        """The most stable id of this message: the producer's ``x-microbus-message-id``, else the SNS
        MessageId (enveloped delivery), else the SQS MessageId (same across redeliveries of one SQS message)."""
        return self.idempotency_key_in(self.folded_opaque_data())

    def idempotency_key_in(self, opaque_data: OpaqueData) -> str:
        """:attr:`idempotency_key`, from this message's ``opaque_data`` already at hand."""
        stamped = dict.get(opaque_data, MESSAGE_ID_KEY)  # a lower-case key: folding it would change nothing
        if isinstance(stamped, str) and stamped:
            return stamped
        return self.sns_message_id or self.message_id

    def ack(self) -> None:
        """Delete the message from its queue."""
        self._require_consumer().ack(self)

    def nack(self, visibility_timeout_seconds: int = 0) -> None:
        """Make the message visible again after ``visibility_timeout_seconds``."""
        self._require_consumer().nack(self, visibility_timeout_seconds)

    def _require_consumer(self) -> MessageQueue:
        if self.consumer is None:
            raise RuntimeError("This message was not received through a consumer")
        return self.consumer

    def __enter__(self) -> SQSMessage:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.ack()


def decode_raw_message(
    raw: dict[str, Any],
    *,
    schema_registry: SchemaRegistry,
    consumer: MessageQueue | None = None,
    payload_store: S3PayloadStore | None = None,
) -> SQSMessage:
    """Build an :class:`SQSMessage` from a ReceiveMessage entry; never raises for bad content.

    An offloaded body (an S3 pointer, raw or inside the SNS envelope) is fetched from ``payload_store``; without
    one, or when the object is missing, ``error`` says why (a :class:`~microbus.errors.PayloadError`).
    """
    attributes = raw.get("Attributes", {})
    message = SQSMessage(
        consumer=consumer,
        message_id=raw["MessageId"],
        receipt_handle=raw["ReceiptHandle"],
        body=raw.get("Body", ""),
        approximate_receive_count=int(attributes.get("ApproximateReceiveCount", 1)),
        message_attributes=raw.get("MessageAttributes", {}),
        message_group_id=attributes.get("MessageGroupId"),
        sent_at=_epoch_ms(attributes.get("SentTimestamp")),
    )
    try:
        body = _fetched_body(message, payload_store)
        unwrapped = unwrap(body)
        obj, message.topic_arn, message.sns_message_id = (
            unwrapped.message,
            unwrapped.topic_arn,
            unwrapped.sns_message_id,
        )
        message.envelope_attributes = unwrapped.attributes
        message.sent_at = unwrapped.published_at or message.sent_at
        media_type = obj.get("mediaType")
        if not isinstance(media_type, str) or not media_type:
            raise MissingMediaTypeError("Message has no mediaType")
        message.media_type = media_type
        message.content = schema_registry.find(media_type).decode(obj)
    except DecodeError as exc:
        message.error = exc
    except Exception as exc:  # whatever the content, one message never takes its batch down
        message.error = DecodeError(f"Message could not be decoded: {type(exc).__name__}: {exc}")
    return message


def _epoch_ms(value: Any) -> float | None:
    """SQS's epoch milliseconds (a string of digits) as epoch seconds; None when absent or malformed."""
    if not isinstance(value, str) or not value.isdigit() or len(value) > 16:
        return None
    return int(value) / 1000


def _fetched_body(message: SQSMessage, payload_store: S3PayloadStore | None) -> str:
    """The body to decode: the message's own, or the offloaded one it points to (raw or enveloped delivery).

    Raises:
        PayloadError: the body is offloaded and cannot be fetched (see :meth:`S3PayloadStore.get`).
    """
    envelope: dict[str, Any] | None = None
    pointer_text = message.body if is_offloaded(message.message_attributes) else None
    if pointer_text is None and message.body.startswith("{") and '"Notification"' in message.body:
        outer = json.loads(message.body)
        if (
            isinstance(outer, dict)
            and outer.get("Type") == "Notification"
            and is_offloaded(outer.get("MessageAttributes"))
        ):
            envelope, pointer_text = outer, outer.get("Message")
    if pointer_text is None:
        return message.body
    pointer = PayloadPointer.from_body(pointer_text if isinstance(pointer_text, str) else "")
    if payload_store is None:
        raise PayloadError(
            "The message's payload was offloaded to S3, and this consumer reads no payloads: set payload_store.bucket"
        )
    payload = payload_store.get(pointer)
    message.payload_pointer = pointer
    if envelope is None:
        return payload
    return json.dumps({**envelope, "Message": payload})
