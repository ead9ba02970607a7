"""An in-memory SQS queue with the transport's contract, for fast unit tests."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from microbus.consume.consumer import SQSConsumer
from microbus.errors import TransportError
from microbus.wire.schemas import SchemaRegistry
from microbus.wire.transport import EntryFailure, OutgoingMessage

_ids = itertools.count(1)
_STALE = EntryFailure("ReceiptHandleIsInvalid", "The receipt handle is not valid (stale or deleted)", sender_fault=True)


@dataclass
class _Stored:
    message_id: str
    body: str
    attributes: dict[str, Any]
    receive_count: int = 0
    visible_at: float = 0.0
    receipt_handle: str = ""


@dataclass
class StubQueue:
    """In-memory queue implementing :class:`~microbus.transport.SQSTransport`'s methods.

    ``dead_letters`` collects what was sent to its dead-letter queue, with attributes. Visibility
    timeouts are honoured with the real clock.
    """

    queue_url: str = "stub://queue"
    visibility_timeout_s: int = 30
    max_receive_count: int | None = None
    messages: dict[str, _Stored] = field(default_factory=dict)
    dead_letters: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    client: Any = None

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def put(self, body: str | dict[str, Any], attributes: dict[str, Any] | None = None) -> str:
        """Enqueue a raw body (a dict is JSON-encoded); return its message id."""
        message_id = f"stub-{next(_ids)}"
        text = body if isinstance(body, str) else json.dumps(body)
        with self._lock:
            self.messages[message_id] = _Stored(message_id, text, attributes or {})
        return message_id

    def consumer(self, schema_registry: SchemaRegistry | None = None) -> SQSConsumer:
        """A consumer reading this queue, dead-lettering into ``dead_letters``."""
        return SQSConsumer(
            transport=self,  # type: ignore[arg-type]
            schema_registry=schema_registry or SchemaRegistry(),
            wait_seconds=0,
            dead_letter_queue_url="stub://dlq",
        )

    def receive(
        self, *, max_messages: int, wait_time_seconds: int, visibility_timeout_seconds: int | None = None
    ) -> list[dict[str, Any]]:
        now = time.time()
        out: list[dict[str, Any]] = []
        with self._lock:
            for stored in self.messages.values():
                if len(out) >= max_messages:
                    break
                if stored.visible_at > now:
                    continue
                stored.receive_count += 1
                stored.visible_at = now + (visibility_timeout_seconds or self.visibility_timeout_s)
                stored.receipt_handle = f"{stored.message_id}#{stored.receive_count}"
                out.append(
                    {
                        "MessageId": stored.message_id,
                        "ReceiptHandle": stored.receipt_handle,
                        "Body": stored.body,
                        "Attributes": {"ApproximateReceiveCount": str(stored.receive_count)},
                        "MessageAttributes": stored.attributes,
                    }
                )
        return out

    def _find(self, receipt_handle: str) -> _Stored | None:
        stored = self.messages.get(receipt_handle.split("#", 1)[0])
        return stored if stored is not None and stored.receipt_handle == receipt_handle else None

    def delete_batch(self, receipt_handles: Sequence[str]) -> list[str]:
        failed: list[str] = []
        with self._lock:
            for handle in receipt_handles:
                stored = self._find(handle)
                if stored is None:
                    failed.append(handle)
                else:
                    del self.messages[stored.message_id]
                    self.deleted.append(stored.message_id)
        return failed

    def delete_entries(self, receipt_handles: Sequence[str]) -> dict[str, EntryFailure]:
        """Through :meth:`delete_batch` (a test may override either); a failed handle is a stale one."""
        return {handle: _STALE for handle in self.delete_batch(receipt_handles)}

    def change_visibility(self, receipt_handle: str, visibility_timeout_seconds: int) -> None:
        failure = self.change_visibility_entries([(receipt_handle, visibility_timeout_seconds)]).get(receipt_handle)
        if failure is not None:
            raise TransportError(f"{self.queue_url}: {failure.code}")

    def change_visibility_batch(self, changes: Sequence[tuple[str, int]]) -> list[str]:
        failed: list[str] = []
        with self._lock:
            for handle, seconds in changes:
                stored = self._find(handle)
                if stored is None:
                    failed.append(handle)
                else:
                    stored.visible_at = time.time() + seconds
        return failed

    def change_visibility_entries(self, changes: Sequence[tuple[str, int]]) -> dict[str, EntryFailure]:
        """Through :meth:`change_visibility_batch` (a test may override either)."""
        return {handle: _STALE for handle in self.change_visibility_batch(changes)}

    def send(self, body: str, message_attributes: dict[str, Any] | None = None, **fifo: str | None) -> str:
        self.dead_letters.append((body, message_attributes or {}))
        return f"stub-dlq-{len(self.dead_letters)}"

    def send_entries(self, messages: Sequence[OutgoingMessage]) -> dict[str, EntryFailure]:
        for message in messages:
            self.send(message.body, message.attributes)
        return {}

    def get_attributes(self) -> dict[str, str]:
        attributes = {"VisibilityTimeout": str(self.visibility_timeout_s)}
        if self.max_receive_count is not None:
            attributes["RedrivePolicy"] = json.dumps(
                {"deadLetterTargetArn": "arn:stub:dlq", "maxReceiveCount": self.max_receive_count}
            )
        return attributes

    def queue_url_of_arn(self, queue_arn: str) -> str:
        return "stub://dlq"

    def for_queue(self, queue_url: str) -> StubQueue:
        """The dead-letter queue: this stub itself, whose ``send`` records into ``dead_letters``."""
        return self

    @property
    def depth(self) -> int:
        """Messages still in the queue (visible or not)."""
        with self._lock:
            return len(self.messages)
