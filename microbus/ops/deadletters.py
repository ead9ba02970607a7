"""Dead letters: list them with microbus's reasons, redrive them to their source queue, purge them.

A queue argument may be the source queue (its dead-letter queue is found through its redrive policy) or the
dead-letter queue itself (its source is then asked of SQS, ``ListDeadLetterSourceQueues``).

Redrive never deletes a dead letter before its copy was sent: SQS's own ``StartMessageMoveTask`` where the
endpoint has it and no filter is given (AWS, LocalStack; standard queues only), else copy-and-delete: receive
from the dead-letter queue, send each matching message to the source queue, and delete it from the
dead-letter queue only once SQS confirmed the copy.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from microbus.errors import (
    ConfigurationError,
    EndpointUnreachableError,
    QueueNotFoundError,
    TransientTransportError,
    TransportError,
)
from microbus.ops.inspect import (
    DEAD_LETTER_PREFIX,
    PeekedMessage,
    message_of,
    peek,
    queue_attributes,
    queue_name,
    queue_url,
    receive_held,
    redrive_policy,
    release,
    url_of_arn,
)
from microbus.wire.sanitize import log_text
from microbus.wire.transport import translate_errors

MOVE_TASK = "StartMessageMoveTask"
COPY_AND_DELETE = "copy-and-delete"
REDRIVE_VISIBILITY_S = 300
"""How long a dead letter being redriven (or skipped by a filter) is held; skipped ones are released at the end."""
_MOVE_TASK_MISSING = {"UnsupportedOperation", "InvalidAction", "NotImplemented", "InternalFailure", "500"}
ProgressCallback = Callable[[int, int | None], None]
"""Called with (dead letters processed so far: moved, left or refused; total expected or None) as a redrive goes."""


@dataclass(frozen=True)
class DeadLetterQueue:
    """A dead-letter queue and the source queues whose redrive policy names it."""

    url: str
    arn: str
    fifo: bool
    source_urls: tuple[str, ...]

    @property
    def name(self) -> str:
        """The dead-letter queue's name."""
        return queue_name(self.url)

    def only_source(self) -> str:
        """The URL of its one source queue.

        Raises:
            ConfigurationError: it is the dead-letter queue of several queues (or of none any more).
        """
        if len(self.source_urls) == 1:
            return self.source_urls[0]
        if not self.source_urls:
            raise ConfigurationError(f"No queue uses {self.name!r} as its dead-letter queue: say where to redrive to")
        names = ", ".join(queue_name(url) for url in self.source_urls[:5])
        raise ConfigurationError(
            f"{self.name!r} is the dead-letter queue of {len(self.source_urls)} queues ({names}): say which one "
            "to redrive to (--to QUEUE)"
        )


def dead_letter_queue(sqs: Any, queue: str) -> DeadLetterQueue:
    """The dead-letter queue of ``queue`` (name or URL of the source queue, or of the dead-letter queue itself).

    Raises:
        QueueNotFoundError: the queue does not exist.
        ConfigurationError: the queue has no redrive policy and no queue uses it as its dead-letter queue.
        TransportError: SQS could not be reached, or refused.
    """
    url = queue_url(sqs, queue)
    attributes = queue_attributes(sqs, url)
    policy = redrive_policy(attributes)
    if policy is not None:
        dlq_arn = str(policy["deadLetterTargetArn"])
        dlq_url = url_of_arn(sqs, dlq_arn)
        with_this_one = sorted(set(_sources(sqs, dlq_url)) | {url})
        return DeadLetterQueue(
            url=dlq_url, arn=dlq_arn, fifo=dlq_arn.endswith(".fifo"), source_urls=tuple(with_this_one)
        )
    sources = _sources(sqs, url)
    if not sources:
        raise ConfigurationError(
            f"SQS queue {queue_name(url)!r} has no dead-letter queue and is no queue's dead-letter queue: "
            "give the source queue (with a redrive policy) or its dead-letter queue"
        )
    return DeadLetterQueue(url=url, arn=attributes["QueueArn"], fifo=_fifo(attributes), source_urls=tuple(sources))


def _sources(sqs: Any, dlq_url: str) -> list[str]:
    """The queues whose redrive policy names this one (ListDeadLetterSourceQueues), sorted."""
    sources: list[str] = []
    kwargs: dict[str, Any] = {"QueueUrl": dlq_url, "MaxResults": 1000}
    with translate_errors(f"SQS queue {dlq_url}"):
        while True:
            response = sqs.list_dead_letter_source_queues(**kwargs)
            sources.extend(str(url) for url in response.get("queueUrls", []))
            token = response.get("NextToken")
            if not token:
                return sorted(sources)
            kwargs["NextToken"] = token


def _fifo(attributes: dict[str, str]) -> bool:
    return attributes.get("FifoQueue", "").lower() == "true"


def list_dead_letters(sqs: Any, queue: str, *, max_messages: int = 10) -> list[PeekedMessage]:
    """Up to ``max_messages`` dead letters of ``queue``, peeked (see :func:`~microbus.ops.inspect.peek`).

    Each one's :attr:`~microbus.ops.inspect.PeekedMessage.dead_letter` holds microbus's reason attributes.

    Raises:
        QueueNotFoundError, ConfigurationError, TransportError: as :func:`dead_letter_queue`.
    """
    return peek(sqs, dead_letter_queue(sqs, queue).url, max_messages=max_messages)


@dataclass(frozen=True)
class RedriveFilter:
    """Which dead letters to redrive; all of them when every field is None.

    ``min_age_s``/``max_age_s`` bound the time since the message was dead-lettered (microbus's
    ``dead_lettered_at``, else when SQS moved it there).
    """

    media_types: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()
    min_age_s: float | None = None
    max_age_s: float | None = None

    @property
    def everything(self) -> bool:
        """True when no filter is set."""
        return not (self.media_types or self.reasons) and self.min_age_s is None and self.max_age_s is None

    def matches(self, message: PeekedMessage, *, now: float) -> bool:
        """Whether ``message`` passes every filter set."""
        if self.media_types and message.media_type not in self.media_types:
            return False
        if self.reasons and message.dead_letter.get("reason") not in self.reasons:
            return False
        age = dead_lettered_age_s(message, now=now)
        if self.min_age_s is not None and (age is None or age < self.min_age_s):
            return False
        return not (self.max_age_s is not None and (age is None or age > self.max_age_s))


def dead_lettered_age_s(message: PeekedMessage, *, now: float) -> float | None:
    """Seconds since the message was dead-lettered: microbus's ``dead_lettered_at``, else its send time."""
    stamp = message.dead_letter.get("dead_lettered_at")
    if stamp:
        from datetime import datetime

        try:
            return max(0.0, now - datetime.fromisoformat(stamp).timestamp())
        except ValueError:
            pass
    return message.age_s(now)


@dataclass
class RedriveResult:
    """What a redrive did: the path used, and counts.

    ``moved``: copies confirmed in the source queue (and, for copy-and-delete, deleted from the dead-letter
    queue, except ``not_deleted`` of them, which are then in both queues). ``skipped``: dead letters left by a
    filter. ``failed``: copies SQS refused, left in the dead-letter queue.
    """

    path: str
    source_url: str
    dead_letter_queue_url: str
    moved: int = 0
    skipped: int = 0
    failed: int = 0
    not_deleted: int = 0
    errors: list[str] = field(default_factory=list)
    move_task_status: str | None = None
    fallback_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return asdict(self)


def redrive(
    sqs: Any,
    queue: str,
    *,
    to: str | None = None,
    only: RedriveFilter | None = None,
    max_messages: int | None = None,
    use_move_task: bool = True,
    on_progress: ProgressCallback | None = None,
    timeout_s: float = 600.0,
) -> RedriveResult:
    """Move dead letters of ``queue`` back to their source queue (``to``, name or URL, where it has several).

    With no filter and no ``max_messages``, and ``use_move_task``, SQS's ``StartMessageMoveTask`` moves them
    (on a standard queue where the endpoint has it); else, and when the endpoint refuses it, copy-and-delete.

    Raises:
        QueueNotFoundError, ConfigurationError: as :func:`dead_letter_queue`, and the dead-letter queue has
            several source queues and ``to`` is None.
        TransportError: SQS could not be reached; what was moved before stays moved.
    """
    dlq = dead_letter_queue(sqs, queue)
    destination = _Destination(
        url := queue_url(sqs, to) if to else dlq.only_source(), queue_attributes(sqs, url)["QueueArn"]
    )
    only = only or RedriveFilter()
    fallback = None
    if use_move_task and only.everything and max_messages is None and not dlq.fifo:
        try:
            return _move_task(sqs, dlq, destination, on_progress=on_progress, timeout_s=timeout_s)
        except _MoveTaskUnavailable as exc:
            fallback = str(exc)
    result = _copy_and_delete(sqs, dlq, destination.url, only=only, max_messages=max_messages, on_progress=on_progress)
    result.fallback_reason = fallback
    return result


@dataclass(frozen=True)
class _Destination:
    url: str
    arn: str


class _MoveTaskUnavailable(Exception):
    """The endpoint has no StartMessageMoveTask (moto)."""


def _move_task(
    sqs: Any, dlq: DeadLetterQueue, destination: _Destination, *, on_progress: ProgressCallback | None, timeout_s: float
) -> RedriveResult:
    result = RedriveResult(path=MOVE_TASK, source_url=destination.url, dead_letter_queue_url=dlq.url)
    try:
        with translate_errors(f"SQS queue {dlq.url}"):
            sqs.start_message_move_task(SourceArn=dlq.arn, DestinationArn=destination.arn)
    except TransportError as exc:
        response = getattr(exc.__cause__, "response", None) or {}
        code = str(response.get("Error", {}).get("Code", ""))
        status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
        if code in _MOVE_TASK_MISSING or status in (500, 501):
            raise _MoveTaskUnavailable(f"the endpoint has no {MOVE_TASK} ({code or status})") from exc
        raise
    deadline = time.monotonic() + timeout_s
    while True:
        task = _latest_task(sqs, dlq)
        moved = int(task.get("ApproximateNumberOfMessagesMoved", 0))
        total = task.get("ApproximateNumberOfMessagesToMove")
        if on_progress is not None:
            on_progress(moved, int(total) if total is not None else None)
        task_status = str(task.get("Status", ""))
        if task_status in ("COMPLETED", "FAILED", "CANCELLED"):
            result.moved, result.move_task_status = moved, task_status
            if task.get("FailureReason"):
                result.errors.append(str(task["FailureReason"]))
            return result
        if time.monotonic() >= deadline:
            raise TransportError(
                f"The {MOVE_TASK} of {dlq.name} is still {task_status} after {timeout_s:.0f} s ({moved} moved): "
                "it goes on in SQS; see `aws sqs list-message-move-tasks`"
            )
        time.sleep(0.5)


def _latest_task(sqs: Any, dlq: DeadLetterQueue) -> dict[str, Any]:
    with translate_errors(f"SQS queue {dlq.url}"):
        tasks = sqs.list_message_move_tasks(SourceArn=dlq.arn, MaxResults=1).get("Results", [])
    return dict(tasks[0]) if tasks else {"Status": "RUNNING"}


def _copy_and_delete(
    sqs: Any,
    dlq: DeadLetterQueue,
    source_url: str,
    *,
    only: RedriveFilter,
    max_messages: int | None,
    on_progress: ProgressCallback | None,
) -> RedriveResult:
    result = RedriveResult(path=COPY_AND_DELETE, source_url=source_url, dead_letter_queue_url=dlq.url)
    depth = _depth(sqs, dlq.url)
    total = depth if max_messages is None else min(depth, max_messages)
    held: list[str] = []  # skipped or refused: released at the end
    pending: list[str] = []  # chosen, not yet confirmed deleted: released too if the redrive stops on an error
    limit = max_messages if max_messages is not None else 10**9
    try:
        for batch in receive_held(sqs, dlq.url, max_messages=10**9, visibility_timeout_s=REDRIVE_VISIBILITY_S):
            now = time.time()
            chosen: list[dict[str, Any]] = []
            for raw in batch:
                message = message_of(raw)
                if result.moved + len(chosen) < limit and only.matches(message, now=now):
                    chosen.append(raw)
                else:
                    held.append(raw["ReceiptHandle"])
                    result.skipped += 1
            pending = [raw["ReceiptHandle"] for raw in chosen]
            held.extend(_copy_batch(sqs, source_url, dlq, chosen, result))
            pending = []
            if on_progress is not None:
                on_progress(result.moved + result.skipped + result.failed, total)
            if result.moved >= limit:
                break
    finally:
        release(sqs, dlq.url, held + pending)
    return result


def _copy_batch(
    sqs: Any, source_url: str, dlq: DeadLetterQueue, batch: list[dict[str, Any]], result: RedriveResult
) -> list[str]:
    """Send copies of ``batch`` to the source queue, then delete the originals whose copy SQS confirmed; return
    the receipt handles of those whose copy was refused (to release)."""
    if not batch:
        return []
    entries = [_copy_entry(str(i), raw, fifo=dlq.fifo) for i, raw in enumerate(batch)]
    refused = _send_copies(sqs, source_url, entries)
    result.errors.extend(refused.values())
    sent = [raw for i, raw in enumerate(batch) if str(i) not in refused]
    result.failed += len(refused)
    if sent:
        deletes = [{"Id": str(i), "ReceiptHandle": raw["ReceiptHandle"]} for i, raw in enumerate(sent)]
        with translate_errors(f"SQS queue {dlq.url}"):
            deleted = sqs.delete_message_batch(QueueUrl=dlq.url, Entries=deletes)
        result.not_deleted += len(deleted.get("Failed", []))
    result.moved += len(sent)
    return [raw["ReceiptHandle"] for i, raw in enumerate(batch) if str(i) in refused]


def _send_copies(sqs: Any, url: str, entries: list[dict[str, Any]]) -> dict[str, str]:
    """Send a batch; when SQS refuses the whole batch (one message too large …), each message alone. Return
    the refused entries' reasons by entry id.

    Raises:
        TransportError: SQS could not be reached, the queue is gone, or it failed transiently.
    """
    try:
        with translate_errors(f"SQS queue {url}"):
            response = sqs.send_message_batch(QueueUrl=url, Entries=entries)
    except (QueueNotFoundError, TransientTransportError, EndpointUnreachableError):
        raise
    except TransportError:
        return dict(filter(None, (_send_one(sqs, url, entry) for entry in entries)))
    return {str(e["Id"]): f"{e.get('Code', '')}: {log_text(e.get('Message', ''))}" for e in response.get("Failed", [])}


def _send_one(sqs: Any, url: str, entry: dict[str, Any]) -> tuple[str, str] | None:
    kwargs = {key: value for key, value in entry.items() if key != "Id"}
    try:
        with translate_errors(f"SQS queue {url}"):
            sqs.send_message(QueueUrl=url, **kwargs)
    except (QueueNotFoundError, TransientTransportError, EndpointUnreachableError):
        raise
    except TransportError as exc:
        return str(entry["Id"]), str(exc)
    return None


def _copy_entry(entry_id: str, raw: dict[str, Any], *, fifo: bool) -> dict[str, Any]:
    """A SendMessageBatch entry copying a dead letter: its body and attributes, without microbus's reasons."""
    attributes = {
        name: value
        for name, value in raw.get("MessageAttributes", {}).items()
        if not name.startswith(DEAD_LETTER_PREFIX)
    }
    entry: dict[str, Any] = {"Id": entry_id, "MessageBody": raw["Body"]}
    if attributes:
        entry["MessageAttributes"] = attributes
    if fifo:
        system = raw.get("Attributes", {})
        entry["MessageGroupId"] = system.get("MessageGroupId", "redrive")
        # not the original's: within SQS's 5-minute window the source queue would drop the copy as a duplicate
        entry["MessageDeduplicationId"] = f"redrive-{raw['MessageId']}"
    return entry


def _depth(sqs: Any, url: str) -> int:
    attributes = queue_attributes(sqs, url)
    return int(attributes.get("ApproximateNumberOfMessages", 0))


def purge(sqs: Any, queue: str) -> tuple[DeadLetterQueue, int]:
    """Delete every message of the dead-letter queue of ``queue``; return it and its approximate depth before.

    Raises:
        QueueNotFoundError, ConfigurationError: as :func:`dead_letter_queue`.
        TransportError: SQS refused (one purge per queue per 60 s) or could not be reached.
    """
    dlq = dead_letter_queue(sqs, queue)
    attributes = queue_attributes(sqs, dlq.url)
    depth = sum(
        int(attributes.get(name, 0))
        for name in (
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        )
    )
    with translate_errors(f"SQS queue {dlq.url}"):
        sqs.purge_queue(QueueUrl=dlq.url)
    return dlq, depth
