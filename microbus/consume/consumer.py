"""SQS consumer: receive and decode messages, ack (delete), nack, release, dead-letter."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from microcosm.api import defaults

from microbus.consume.deferral import MAX_DELAY_S
from microbus.consume.message import SQSMessage, decode_raw_message
from microbus.errors import ConfigurationError, TransportError
from microbus.wire.payloads import S3PayloadStore
from microbus.wire.sanitize import ATTRIBUTE_LIMIT, attribute_text
from microbus.wire.schemas import SchemaRegistry
from microbus.wire.transport import MAX_BATCH, OutgoingMessage, SQSTransport

if TYPE_CHECKING:
    from microcosm.object_graph import ObjectGraph

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class QueueInfo:
    """What the consumer needs to know of its queue's live settings."""

    visibility_timeout_seconds: int
    dead_letter_queue_arn: str | None
    max_receive_count: int | None

    @classmethod
    def from_attributes(cls, attributes: dict[str, str]) -> QueueInfo:
        """Build from GetQueueAttributes output."""
        redrive = json.loads(attributes.get("RedrivePolicy") or "{}")
        max_receive_count = redrive.get("maxReceiveCount")
        return cls(
            visibility_timeout_seconds=int(attributes.get("VisibilityTimeout", 30)),
            dead_letter_queue_arn=redrive.get("deadLetterTargetArn"),
            max_receive_count=int(max_receive_count) if max_receive_count is not None else None,
        )


def live_queue_warnings(info: QueueInfo, *, queue_url: str, handler_timeout_s: float | None = None) -> list[str]:
    """Warnings about a live queue: a visibility timeout shorter than the handler timeout, no redrive policy."""
    warnings: list[str] = []
    if handler_timeout_s is not None and info.visibility_timeout_seconds < handler_timeout_s:
        warnings.append(
            f"Queue {queue_url} has a visibility timeout of {info.visibility_timeout_seconds}s, shorter than the "
            f"handler timeout of {handler_timeout_s:g}s: a slow message may be handled twice; raise the queue's "
            "visibility_timeout_s and run `microbus topology apply`."
        )
    if info.max_receive_count is None or info.dead_letter_queue_arn is None:
        warnings.append(
            f"Queue {queue_url} has no redrive policy: messages that keep failing are retried until they "
            "expire; give it max_receive_count and run `microbus topology apply`."
        )
    return warnings


class SQSConsumer:
    """Consumes one SQS queue.

    Parameters:
        transport: the queue's transport.
        schema_registry: finds the schema of each media type.
        limit: messages per receive (≤ 10).
        wait_seconds: long-poll wait.
        dead_letter_queue_url: where poison messages go; by default the queue's redrive target.
        payload_store: fetches offloaded (S3) bodies; with ``delete_after_ack``, deletes each once its message
            was acked. None: an offloaded message is dead-lettered (reason ``payload-pointer-invalid``).
    """

    def __init__(
        self,
        *,
        transport: SQSTransport,
        schema_registry: SchemaRegistry,
        limit: int = MAX_BATCH,
        wait_seconds: int = 5,
        dead_letter_queue_url: str | None = None,
        payload_store: S3PayloadStore | None = None,
    ) -> None:
        self.transport = transport
        self.payload_store = payload_store
        self.schema_registry = schema_registry
        self.limit = limit
        self.wait_seconds = wait_seconds
        self._dead_letter_queue_url = dead_letter_queue_url
        self._dead_letter_transport: SQSTransport | None = None
        self._queue_info: QueueInfo | None = None
        self._lock = threading.Lock()

    @property
    def queue_url(self) -> str:
        """The URL of the consumed queue."""
        return self.transport.queue_url

    def consume(self, limit: int | None = None) -> list[SQSMessage]:
        """Receive and decode up to ``limit`` messages (possibly none).

        Messages that cannot be decoded are returned too, with ``content`` None and ``error`` set,
        so that one bad message never holds up the rest of its batch.

        Raises:
            TransportError: the queue could not be reached or does not exist.
        """
        raw_messages = self.transport.receive(max_messages=limit or self.limit, wait_time_seconds=self.wait_seconds)
        return [
            decode_raw_message(
                raw, schema_registry=self.schema_registry, consumer=self, payload_store=self.payload_store
            )
            for raw in raw_messages
        ]

    def queue_info(self) -> QueueInfo:
        """The queue's live settings (read once, then cached)."""
        with self._lock:
            if self._queue_info is None:
                self._queue_info = QueueInfo.from_attributes(self.transport.get_attributes())
            return self._queue_info

    def ack(self, message: SQSMessage) -> None:
        """Delete one message (and then its offloaded payload, when configured to).

        Raises:
            TransportError: the queue could not be reached, or SQS refused the delete (e.g. a stale receipt
                handle: the visibility timeout ran out and the message may be handled again elsewhere).
        """
        self._delete(message)
        self.acked([message])

    def acked(self, messages: Sequence[SQSMessage]) -> None:
        """Messages were deleted from the queue: delete their offloaded payloads, when configured to (never
        before: a message whose delete failed reappears and needs its payload). Never raises."""
        store = self.payload_store
        if store is None or not store.delete_after_ack:
            return
        for message in messages:
            if message.payload_pointer is not None:
                store.delete(message.payload_pointer)

    def _delete(self, message: SQSMessage) -> None:
        failure = self.transport.delete_entries([message.receipt_handle]).get(message.receipt_handle)
        if failure is not None:
            raise TransportError(
                f"Could not delete message {message.message_id!r} from {self.queue_url}: {failure.code}: "
                f"{failure.message}"
            )

    def ack_many(self, messages: Sequence[SQSMessage]) -> list[SQSMessage]:
        """Delete messages in batches of 10; return those that could not be deleted."""
        failed = set(self.transport.delete_batch([m.receipt_handle for m in messages]))
        self.acked([m for m in messages if m.receipt_handle not in failed])
        return [m for m in messages if m.receipt_handle in failed]

    def nack(self, message: SQSMessage, visibility_timeout_seconds: int = 0) -> None:
        """Make a message visible again after ``visibility_timeout_seconds``."""
        self.transport.change_visibility(message.receipt_handle, visibility_timeout_seconds)

    def release(self, messages: Sequence[SQSMessage]) -> None:
        """Return received-but-unstarted messages to the queue at once (visibility 0)."""
        if messages:
            self.transport.change_visibility_batch([(m.receipt_handle, 0) for m in messages])

    def dead_letter_queue_url(self) -> str | None:
        """The dead-letter queue's URL: configured, or the queue's redrive target, or None."""
        if self._dead_letter_queue_url is None:
            arn = self.queue_info().dead_letter_queue_arn
            if arn is not None:
                self._dead_letter_queue_url = self.transport.queue_url_of_arn(arn)
        return self._dead_letter_queue_url

    def dead_letter_transport(self) -> SQSTransport | None:
        """The dead-letter queue's transport, or None when there is none."""
        url = self.dead_letter_queue_url()
        if url is None:
            return None
        if self._dead_letter_transport is None:
            self._dead_letter_transport = self.transport.for_queue(url)
        return self._dead_letter_transport

    def dead_letter_copy(
        self, message: SQSMessage, *, reason: str, error: BaseException | None, source: str
    ) -> OutgoingMessage:
        """The copy of a message to send to the dead-letter queue: its body, with the reason as attributes."""
        fifo = (self.dead_letter_queue_url() or "").endswith(".fifo")
        return OutgoingMessage(
            key=message.receipt_handle,
            body=message.body,
            attributes=dead_letter_attributes(message, reason, error, source),
            group_id=(message.message_group_id or "microbus-dead-letters") if fifo else None,
            deduplication_id=message.message_id if fifo else None,
        )

    def resend_copy(self, message: SQSMessage, delay_s: int) -> OutgoingMessage:
        """A fresh copy of a deferred message for this queue: the same body (SNS envelope, S3 pointer and due time
        unchanged) and message attributes, delayed by ``delay_s`` (≤ 900; not on a FIFO queue, where the copy
        joins the end of its group, deduplicated by the original's id). See :mod:`microbus.consume.deferral`."""
        fifo = self.queue_url.endswith(".fifo")
        return OutgoingMessage(
            key=message.receipt_handle,
            body=message.body,
            attributes=_resendable(message.message_attributes),
            group_id=(message.message_group_id or "microbus-deferred") if fifo else None,
            deduplication_id=f"deferred-{message.message_id}"[:128] if fifo else None,
            delay_seconds=None if fifo else max(0, min(MAX_DELAY_S, delay_s)),
        )

    def resend(self, message: SQSMessage, delay_s: int) -> bool:
        """Send a fresh copy of a deferred message (:meth:`resend_copy`), then delete the original.

        Returns False when the copy was sent but the original could not be deleted (it reappears and is re-sent
        again: a duplicate, which its idempotency key identifies). The offloaded payload is never deleted here:
        the copy points to it.

        Raises:
            TransportError: the copy could not be sent; the original is then not deleted.
        """
        copy = self.resend_copy(message, delay_s)
        failure = self.transport.send_entries([copy]).get(copy.key)
        if failure is not None:
            raise TransportError(f"Could not re-send deferred message {message.message_id!r}: {failure.code}")
        try:
            self._delete(message)
        except TransportError as exc:
            logger.warning("Deferred message %r re-sent, but the original was not deleted: %s", message.message_id, exc)
            return False
        return True

    def dead_letter(self, message: SQSMessage, *, reason: str, error: BaseException | None, source: str) -> bool:
        """Send a copy of the message, with the reason attached, to the DLQ, then delete the original.

        Returns False when there is no dead-letter queue (the message is left alone), and False when the
        copy was sent but the original could not be deleted (it will reappear, and be dead-lettered again).

        Raises:
            TransportError: the copy could not be sent; the original is then not deleted.
        """
        transport = self.dead_letter_transport()
        if transport is None:
            return False
        copy = self.dead_letter_copy(message, reason=reason, error=error, source=source)
        failure = transport.send_entries([copy]).get(copy.key)
        if failure is not None:
            raise TransportError(f"Could not send the dead-letter copy of {message.message_id!r}: {failure.code}")
        try:
            self._delete(message)  # the copy points to the same payload: it stays
        except TransportError as exc:
            logger.warning("Dead-letter copy of %r sent, but the original was not deleted: %s", message.message_id, exc)
            return False
        return True


def _resendable(attributes: dict[str, Any]) -> dict[str, Any]:
    """Received message attributes as SendMessage takes them: the data type and its one value."""
    out: dict[str, Any] = {}
    for name, value in attributes.items():
        if not isinstance(value, dict) or not isinstance(value.get("DataType"), str):
            continue
        kept = {key: value[key] for key in ("DataType", "StringValue", "BinaryValue") if key in value}
        if len(kept) > 1:
            out[name] = kept
    return out


def dead_letter_attributes(
    message: SQSMessage, reason: str, error: BaseException | None, source: str
) -> dict[str, Any]:
    """Message attributes that carry why a message was dead-lettered (at most 10).

    Every text is sanitised (only characters SQS accepts) and bounded (:data:`ATTRIBUTE_LIMIT` characters and
    UTF-8 bytes): the media type and the error's text come from the message, which is untrusted. Eight
    attributes of at most 1 KiB each stay far below SQS's limits, beside a body that fitted its queue.
    """

    def text(value: str) -> dict[str, str]:
        return {"DataType": "String", "StringValue": attribute_text(value, ATTRIBUTE_LIMIT) or "-"}

    attributes = {
        "microbus.reason": text(reason),
        "microbus.error_class": text(type(error).__name__ if error else "-"),
        "microbus.error_message": text(str(error) if error else "-"),
        "microbus.daemon": text(source),
        "microbus.dead_lettered_at": text(datetime.now(UTC).isoformat()),
        "microbus.receive_count": {"DataType": "Number", "StringValue": str(message.approximate_receive_count)},
        "microbus.source_message_id": text(message.message_id),
    }
    if message.media_type:
        attributes["media_type"] = text(message.media_type)
    return attributes


@defaults(
    sqs_queue_url=None,
    limit=MAX_BATCH,
    wait_seconds=5,
    dead_letter_queue_url=None,
)
def configure_sqs_consumer(graph: ObjectGraph) -> SQSConsumer:
    """microcosm factory: ``graph.microbus_sqs_consumer``, reading the ``microbus_sqs_consumer`` config section."""
    config = graph.config.microbus_sqs_consumer
    if not config.sqs_queue_url:
        raise ConfigurationError("No SQS queue configured: set microbus_sqs_consumer.sqs_queue_url (--sqs-queue-url)")
    return SQSConsumer(
        transport=SQSTransport(client=graph.sqs_client, queue_url=config.sqs_queue_url),
        schema_registry=graph.microbus_pubsub_message_schema_registry,
        limit=int(config.limit),
        wait_seconds=int(config.wait_seconds),
        dead_letter_queue_url=config.dead_letter_queue_url or None,
        payload_store=graph.payload_store,
    )
