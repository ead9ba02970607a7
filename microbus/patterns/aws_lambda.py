"""AWS Lambda: the same ``@handles`` handlers behind an SQS event source mapping, with partial batch responses.

:func:`make_lambda_handler` returns the function Lambda calls. Each record goes through the daemon's
dispatcher (:meth:`~microbus.SQSMessageDispatcher.handle`, or ``handle_async`` for ``async def`` handlers):
the same outcomes, attempt limit and dead-letter rules. What Lambda should not delete is reported in
``batchItemFailures``; the rest Lambda deletes. The mapping must have ``ReportBatchItemFailures`` on (or
pass ``partial_batch_response=False``, which fails the whole invocation when a message failed).
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import binascii
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, TypeGuard

from microbus.consume.consumer import QueueInfo, SQSConsumer
from microbus.consume.dispatch import Action, Result, runtime_error
from microbus.consume.message import SQSMessage, decode_raw_message
from microbus.errors import FatalError, LambdaBatchFailedError, LambdaEventError, TransportError
from microbus.wire.sanitize import log_repr
from microbus.wire.transport import SQSTransport

if TYPE_CHECKING:
    from microcosm.object_graph import ObjectGraph

    from microbus.consume.dispatch import SQSMessageDispatcher
    from microbus.wire.schemas import SchemaRegistry

logger = logging.getLogger(__name__)

GraphFactory = Callable[[], "ObjectGraph"]
LambdaResponse = dict[str, list[dict[str, str]]]

_graphs: dict[GraphFactory, ObjectGraph] = {}
_graphs_lock = threading.RLock()
_QUEUE_RETRY_S = 30
"""After the settings of a queue could not be read, records of that queue wait this long before another try."""
_loop: asyncio.AbstractEventLoop | None = None
"""The container's event loop for ``async def`` handlers: kept between invocations, as their clients may be."""


class _MalformedRecordError(ValueError):
    """One record of the event cannot be read; it is reported as failed."""


def graph_of(graph_factory: GraphFactory) -> ObjectGraph:
    """The object graph of ``graph_factory``, built once per container (per process) and then reused.

    Raises:
        Whatever ``graph_factory`` raises; the next call tries again.
    """
    with _graphs_lock:
        graph = _graphs.get(graph_factory)
        if graph is None:
            graph = _graphs[graph_factory] = graph_factory()
        return graph


def _event_loop() -> asyncio.AbstractEventLoop:
    """The container's event loop (created on first use, closed at exit)."""
    global _loop
    with _graphs_lock:
        if _loop is None or _loop.is_closed():
            _loop = asyncio.new_event_loop()
            atexit.register(_loop.close)
        return _loop


class _Verdict(Enum):
    """What became of one record."""

    DONE = "done"
    """Handled, skipped or dead-lettered: Lambda deletes it."""
    FAILED = "failed"
    """Reported in ``batchItemFailures``: it comes back."""
    FATAL = "fatal"
    """The function cannot go on: it and the rest of the batch come back."""


@dataclass
class _Queue:
    """A queue records came from: its consumer and settings (None when they could not be read)."""

    consumer: SQSConsumer | None
    info: QueueInfo | None = None
    dead_letters: SQSTransport | None = None
    retry_at: float = 0.0
    """When the settings could not be read: when to try again."""


@dataclass
class _Invocation:
    """What one invocation decided: the failed message ids, and the visibility changes to make."""

    failed: list[str] = field(default_factory=list)
    visibility: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    """Queue ARN → (receipt handle, seconds) of the records that come back."""

    def fail(self, record: dict[str, Any], visibility_s: int | None) -> None:
        """Report ``record`` as failed; when ``visibility_s`` is given, make it visible again after that."""
        self.failed.append(record["messageId"])
        handle, arn = record.get("receiptHandle"), record.get("eventSourceARN")
        if visibility_s is not None and isinstance(handle, str) and handle and _is_queue_arn(arn):
            self.visibility.setdefault(arn, []).append((handle, visibility_s))


class LambdaHandler:
    """The function Lambda calls: ``handler(event, context)`` → ``{"batchItemFailures": [...]}``.

    Records are handled one at a time, in order. A record starts only when the remaining time
    (``context.get_remaining_time_in_millis()``) covers ``reserve_ms`` plus the expected time of its handler:
    ``handler_timeout_s`` when given, else the longest this container has seen for its media type. The
    records left unstarted are reported as failures and returned to the queue at once (visibility 0); a
    failed one gets the backoff (ChangeMessageVisibility), as in the daemon. A message not due yet is hidden
    (reported as failed, with its visibility) or re-sent as a fresh copy and deleted (not reported), as the
    daemon decides (:mod:`microbus.consume.deferral`). On a FIFO queue a failure in a
    group reports the group's later records as failures too, unstarted.

    Parameters:
        graph_factory: builds the object graph (``graph.microbus_sqs_message_dispatcher``, ``graph.sqs_client``,
            ``graph.microbus_pubsub_message_schema_registry``); called once per container (:func:`graph_of`).
        dispatcher_component: the graph component that dispatches messages.
        reserve_ms: time kept for settling and returning the response.
        handler_timeout_s: the longest a handler may take; None: learn it from the handlers' runs.
        partial_batch_response: the mapping reports batch item failures (``ReportBatchItemFailures``);
            False raises :class:`LambdaBatchFailedError` when a message failed, so Lambda retries the batch.
    """

    def __init__(
        self,
        graph_factory: GraphFactory,
        *,
        dispatcher_component: str = "microbus_sqs_message_dispatcher",
        reserve_ms: int = 1_000,
        handler_timeout_s: float | None = None,
        partial_batch_response: bool = True,
    ) -> None:
        self.graph_factory = graph_factory
        self.dispatcher_component = dispatcher_component
        self.reserve_ms = reserve_ms
        self.handler_timeout_s = handler_timeout_s
        self.partial_batch_response = partial_batch_response
        self._longest_s: dict[str | None, float] = {}
        self._queues: dict[str, _Queue] = {}

    @property
    def graph(self) -> ObjectGraph:
        """The container's object graph (built on first use)."""
        return graph_of(self.graph_factory)

    def __call__(self, event: Any, context: Any = None) -> LambdaResponse:
        """Handle an SQS event; return the records Lambda must not delete.

        Raises:
            LambdaEventError: the event is not an SQS event with a ``messageId`` on every record (nothing
                was handled; Lambda retries the batch).
            LambdaBatchFailedError: a message failed and ``partial_batch_response`` is off.
            Whatever ``graph_factory`` raises (nothing was handled).
        """
        records = _records(event)
        dispatcher: SQSMessageDispatcher = getattr(self.graph, self.dispatcher_component)
        invocation = _Invocation()
        blocked: set[str] = set()
        stopped = False
        for index, record in enumerate(records):
            group = _group(record)
            if stopped or (group is not None and group in blocked):
                invocation.fail(record, 0)
                continue
            verdict = self._process(dispatcher, record, context, invocation, left=len(records) - index - 1)
            if verdict is _Verdict.FATAL:
                stopped = True
            elif verdict is _Verdict.FAILED and _is_fifo(record):
                if group is None:  # a FIFO record without a group: nothing after it may run
                    stopped = True
                else:
                    blocked.add(group)
        self._change_visibility(invocation)
        if invocation.failed and not self.partial_batch_response:
            raise LambdaBatchFailedError(
                f"{len(invocation.failed)} of {len(records)} messages failed and partial batch responses are off: "
                "the batch is retried"
            )
        return {"batchItemFailures": [{"itemIdentifier": message_id} for message_id in invocation.failed]}

    def _process(
        self,
        dispatcher: SQSMessageDispatcher,
        record: dict[str, Any],
        context: Any,
        invocation: _Invocation,
        *,
        left: int,
    ) -> _Verdict:
        """Read, time-check, handle and settle one record."""
        try:
            message = _read(record, self.graph.microbus_pubsub_message_schema_registry)
        except _MalformedRecordError as exc:
            logger.warning("Record %s cannot be read (%s): reported as failed", log_repr(record["messageId"]), exc)
            invocation.fail(record, None)
            return _Verdict.FAILED
        before_ms = _remaining_ms(context)
        if not self._time_for(message, before_ms):
            logger.warning(
                "Not enough time left to start message %s: it and the %d after it return to the queue",
                log_repr(message.message_id),
                left,
            )
            invocation.fail(record, 0)
            return _Verdict.FATAL
        queue = self._queue(record["eventSourceARN"])
        try:
            result = self._run(dispatcher, message, queue)
        except FatalError as exc:
            logger.error(
                "%s: message %s and the rest of the batch return to the queue", exc, log_repr(message.message_id)
            )
            invocation.fail(record, 0)
            return _Verdict.FATAL
        after_ms, elapsed_s = _remaining_ms(context), result.elapsed_s
        if before_ms is not None and after_ms is not None:  # Lambda's clock, when there is one
            elapsed_s = (before_ms - after_ms) / 1000
        self._learn(message, elapsed_s)
        visibility_s = self._settle(dispatcher, result, message, queue)
        if visibility_s is None:
            return _Verdict.DONE
        invocation.fail(record, visibility_s)
        return _Verdict.FAILED

    def _time_for(self, message: SQSMessage, remaining_ms: float | None) -> bool:
        """Whether the remaining time covers the reserve and the message's expected handler time."""
        if remaining_ms is None:
            return True
        expected_s = self.handler_timeout_s
        if expected_s is None:
            expected_s = self._longest_s.get(message.media_type, self._longest_s.get(None, 0.0))
        return remaining_ms >= self.reserve_ms + expected_s * 1000

    def _learn(self, message: SQSMessage, elapsed_s: float) -> None:
        """Remember the longest handler time of the message's media type (and of all)."""
        for key in (message.media_type, None):
            self._longest_s[key] = max(self._longest_s.get(key, 0.0), elapsed_s)

    def _run(self, dispatcher: SQSMessageDispatcher, message: SQSMessage, queue: _Queue) -> Result:
        """The dispatcher's outcome of one message (``async def`` handlers on the container's event loop)."""
        max_attempts = queue.info.max_receive_count if queue.info is not None else None
        try:
            if dispatcher.is_async(message):
                return _event_loop().run_until_complete(dispatcher.handle_async(message, max_attempts=max_attempts))
            return dispatcher.handle(message, max_attempts=max_attempts)
        except FatalError:
            raise
        except Exception as exc:  # the dispatcher never raises for handlers: a bug, the message is retried
            logger.exception("Unexpected error handling message %s; it will be retried", log_repr(message.message_id))
            return runtime_error(message, exc)

    def _settle(
        self, dispatcher: SQSMessageDispatcher, result: Result, message: SQSMessage, queue: _Queue
    ) -> int | None:
        """Act on the outcome; return None when Lambda may delete the message, else its visibility (backoff)."""
        dispatcher.log(result)
        action, delay = result.outcome.action, result.retry_after_s
        if action is Action.DEAD_LETTER:
            if queue.dead_letters is not None and queue.consumer is not None:
                if self._dead_letter(dispatcher, result, message, queue.consumer, queue.dead_letters):
                    return None
                action, delay = Action.RETRY, None
            elif queue.info is not None:  # the queue has no DLQ
                action, delay = dispatcher.without_dead_letter_queue(result, message)
            else:  # the queue's settings could not be read: keep the message
                action, delay = Action.RETRY, None
        if action is Action.ACK or (result.resend and self._resend(message, delay or 0, queue)):
            return None
        if result.resend:  # the copy could not be sent: the original comes back after the backoff
            delay = None
        return delay if delay is not None else dispatcher.retry_policy.backoff(message.approximate_receive_count)

    @staticmethod
    def _resend(message: SQSMessage, delay_s: int, queue: _Queue) -> bool:
        """A deferred message: send its fresh copy and delete it (as the daemon does); True once SQS took the copy.
        When the copy could not be sent the record is kept (reported as failed) and comes back."""
        if queue.consumer is None:
            return False
        try:
            queue.consumer.resend(message, delay_s)
        except TransportError as exc:
            logger.warning(
                "Could not re-send deferred message %s (%s); it will reappear", log_repr(message.message_id), exc
            )
            return False
        return True

    @staticmethod
    def _dead_letter(
        dispatcher: SQSMessageDispatcher,
        result: Result,
        message: SQSMessage,
        consumer: SQSConsumer,
        dead_letters: SQSTransport,
    ) -> bool:
        """Send the message's copy (with the reason) to the DLQ; True once SQS took it."""
        copy = consumer.dead_letter_copy(
            message, reason=result.reason or "rejected", error=result.error, source=dispatcher.source
        )
        try:
            failure = dead_letters.send_entries([copy]).get(copy.key)
        except TransportError as exc:
            logger.warning("Could not dead-letter message %s (%s); it will reappear", log_repr(message.message_id), exc)
            return False
        if failure is not None:
            logger.warning(
                "Could not dead-letter message %s (%s); it will reappear",
                log_repr(message.message_id),
                log_repr(failure.code),
            )
            return False
        return True

    def _queue(self, queue_arn: str) -> _Queue:
        """The queue of ``queue_arn``, read once per container (when that failed, again after a while)."""
        queue = self._queues.get(queue_arn)
        if queue is not None and (queue.info is not None or time.monotonic() < queue.retry_at):
            return queue
        graph = self.graph
        queue = _Queue(consumer=None, retry_at=time.monotonic() + _QUEUE_RETRY_S)
        try:
            url = SQSTransport(client=graph.sqs_client, queue_url=queue_arn).queue_url_of_arn(queue_arn)
            queue.consumer = SQSConsumer(
                transport=SQSTransport(client=graph.sqs_client, queue_url=url),
                schema_registry=graph.microbus_pubsub_message_schema_registry,
            )
            info = queue.consumer.queue_info()
            queue.dead_letters = queue.consumer.dead_letter_transport()
            queue.info = info  # last: known settings mean a known DLQ (or none)
        except TransportError as exc:
            logger.warning(
                "Could not read the settings of %s (%s): messages to dead-letter are kept, attempts are "
                "counted with the default limit; trying again in %ds",
                log_repr(queue_arn),
                exc,
                _QUEUE_RETRY_S,
            )
        self._queues[queue_arn] = queue
        return queue

    def _change_visibility(self, invocation: _Invocation) -> None:
        """Return the failed records: unstarted ones at once, failed ones after their backoff."""
        for queue_arn, changes in invocation.visibility.items():
            queue = self._queues.get(queue_arn)
            if queue is None or queue.consumer is None:
                queue = self._queue(queue_arn)
            if queue.consumer is None:
                continue  # already logged: they come back after the queue's visibility timeout
            try:
                failed = queue.consumer.transport.change_visibility_batch(changes)
            except TransportError as exc:
                failed, reason = [handle for handle, _ in changes], str(exc)
            else:
                reason = "refused"
            if failed:
                logger.warning(
                    "Could not change the visibility of %d failed messages (%s): they come back after the "
                    "queue's visibility timeout",
                    len(failed),
                    reason,
                )


def make_lambda_handler(
    graph_factory: GraphFactory,
    *,
    dispatcher_component: str = "microbus_sqs_message_dispatcher",
    reserve_ms: int = 1_000,
    handler_timeout_s: float | None = None,
    partial_batch_response: bool = True,
) -> LambdaHandler:
    """The Lambda function of an SQS event source mapping, running the ``@handles`` handlers of the graph.

    ``handler = make_lambda_handler(create_graph)`` at module level; the graph is built on the first
    invocation and reused by the container's later ones. See :class:`LambdaHandler` for the parameters.
    """
    return LambdaHandler(
        graph_factory,
        dispatcher_component=dispatcher_component,
        reserve_ms=reserve_ms,
        handler_timeout_s=handler_timeout_s,
        partial_batch_response=partial_batch_response,
    )


def _records(event: Any) -> list[dict[str, Any]]:
    """The event's records, each with a ``messageId`` (a partial batch response can name nothing else).

    Raises:
        LambdaEventError: not an SQS event, or a record without a ``messageId``.
    """
    records = event.get("Records") if isinstance(event, dict) else None
    if not isinstance(records, list):
        raise LambdaEventError(
            f"Not an SQS event (no Records list in a {type(event).__name__}): is the function's trigger an SQS "
            "event source mapping? The batch is retried."
        )
    for index, record in enumerate(records):
        message_id = record.get("messageId") if isinstance(record, dict) else None
        if not isinstance(message_id, str) or not message_id:
            raise LambdaEventError(
                f"Record {index} of the SQS event has no messageId, so it cannot be reported on its own: "
                "the batch is retried"
            )
    return records


def _remaining_ms(context: Any) -> float | None:
    """Lambda's time left for the invocation (None without a Lambda context)."""
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    value = remaining() if callable(remaining) else None
    return float(value) if isinstance(value, int | float) else None


def _is_queue_arn(value: Any) -> TypeGuard[str]:
    """``arn:PARTITION:sqs:REGION:ACCOUNT:NAME``."""
    parts = value.split(":") if isinstance(value, str) else []
    return len(parts) == 6 and parts[0] == "arn" and parts[2] == "sqs" and all(parts[3:])


def _is_fifo(record: dict[str, Any]) -> bool:
    arn = record.get("eventSourceARN")
    return isinstance(arn, str) and arn.endswith(".fifo")


def _group(record: dict[str, Any]) -> str | None:
    """The record's FIFO message group (None on a standard queue, or when it has none)."""
    attributes = record.get("attributes")
    group = attributes.get("MessageGroupId") if isinstance(attributes, dict) else None
    return group if isinstance(group, str) and _is_fifo(record) else None


def _read(record: dict[str, Any], schema_registry: SchemaRegistry) -> SQSMessage:
    """Decode a record as the daemon decodes a received message (a bad body is the dispatcher's business).

    Raises:
        _MalformedRecordError: a field Lambda always sends is missing or of the wrong type.
    """
    for name in ("receiptHandle", "body", "eventSourceARN"):
        if not isinstance(record.get(name), str):
            raise _MalformedRecordError(f"{name} is not a string")
    if record.get("eventSource", "aws:sqs") != "aws:sqs":
        raise _MalformedRecordError(f"eventSource is {log_repr(record.get('eventSource'))}, not aws:sqs")
    if not _is_queue_arn(record["eventSourceARN"]):
        raise _MalformedRecordError(f"eventSourceARN {log_repr(record['eventSourceARN'])} is not a queue ARN")
    attributes = record.get("attributes")
    if not isinstance(attributes, dict) or not all(isinstance(v, str) for v in attributes.values()):
        raise _MalformedRecordError("attributes is not a map of strings")
    count = attributes.get("ApproximateReceiveCount")
    if not isinstance(count, str) or not count.isdigit() or int(count) < 1:
        raise _MalformedRecordError(f"ApproximateReceiveCount {log_repr(count)} is not a positive number")
    raw = {
        "MessageId": record["messageId"],
        "ReceiptHandle": record["receiptHandle"],
        "Body": record["body"],
        "Attributes": attributes,
        "MessageAttributes": _message_attributes(record.get("messageAttributes")),
    }
    return decode_raw_message(raw, schema_registry=schema_registry)


def _message_attributes(attributes: Any) -> dict[str, Any]:
    """Lambda's ``messageAttributes`` (``stringValue``, ``binaryValue`` in base64) as ReceiveMessage gives them."""
    if attributes is None:
        return {}
    if not isinstance(attributes, dict):
        raise _MalformedRecordError("messageAttributes is not a map")
    converted: dict[str, Any] = {}
    for name, value in attributes.items():
        if not isinstance(value, dict) or not isinstance(value.get("dataType"), str):
            raise _MalformedRecordError(f"message attribute {log_repr(name)} has no dataType")
        attribute: dict[str, Any] = {"DataType": value["dataType"]}
        if isinstance(value.get("stringValue"), str):
            attribute["StringValue"] = value["stringValue"]
        elif isinstance(value.get("binaryValue"), str):
            try:
                attribute["BinaryValue"] = base64.b64decode(value["binaryValue"], validate=True)
            except (binascii.Error, ValueError) as exc:
                raise _MalformedRecordError(f"message attribute {log_repr(name)} is not base64") from exc
        else:
            raise _MalformedRecordError(f"message attribute {log_repr(name)} has no value")
        converted[name] = attribute
    return converted
