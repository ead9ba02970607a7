"""Target side of parallel execution: report each finished target to its callback queue.

Patterns layer, installed as dispatcher middleware (``microbus_sqs_message_dispatcher.middleware =
["parallel_reporter"]``) in the daemons that run targets.

A target message names its callback queue (``x-microbus-reply-to``), and whoever may publish to the
target's topic chooses it: the reporter only reports to the queues it is configured with
(``parallel_reporter.allowed_reply_queues``, default ``parallel.callback_queue_url``). A target naming
another queue is not run; it is dead-lettered (REJECTED, reason ``reply-to-not-allowed``) with one
bounded log line.
"""

from __future__ import annotations

import logging
import re
import threading
import traceback
import uuid
from collections.abc import Iterable
from contextvars import Token
from enum import Enum
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from microcosm.api import defaults

from microbus.consume.dispatch import (
    TTL_EXPIRED,
    Action,
    AsyncHandlerCall,
    HandlerCall,
    Middleware,
    Outcome,
    Result,
)
from microbus.consume.message import SQSMessage
from microbus.errors import (
    ConfigurationError,
    PatternError,
    ResponseNotSerializableError,
    ResponseTooLargeError,
    SkipMessage,
    TransportError,
)
from microbus.patterns.idempotency import stored_response
from microbus.patterns.parallel import (
    CID_KEY,
    ParallelRequest,
    TargetReport,
    target_payload,
    utc_now,
)
from microbus.wire.context import bind_cid, unbind_cid
from microbus.wire.sanitize import log_repr
from microbus.wire.schemas import SchemaRegistry
from microbus.wire.transport import SQSTransport

if TYPE_CHECKING:
    from microcosm.object_graph import ObjectGraph

logger = logging.getLogger(__name__)

CALLBACK_MAX_BYTES = 262_144
_EXCEPTION_TEXT_LIMIT = 32_768
_LOGGED_LIMIT = 200
REPLY_TO_NOT_ALLOWED = "reply-to-not-allowed"


class FailureMode(Enum):
    """What a target daemon does when a target's handler raised."""

    REPORT = "report"
    """Report ``ok`` false at once and ack the target's message once the report was sent (default)."""
    RETRY_FIRST = "retry-first"
    """Retry the target like any message; report only its final outcome (success, expiry, rejection)."""


def should_report(outcome: Outcome, mode: FailureMode) -> bool:
    """Whether a target that ended with ``outcome`` is reported now.

    Nacked and ignored messages are not finished (or not for this daemon); a failure is reported
    at once only in :attr:`FailureMode.REPORT`.
    """
    if outcome in (Outcome.RETRIED, Outcome.IGNORED):
        return False
    if outcome is Outcome.FAILED:
        return mode is FailureMode.REPORT
    return True


def exception_text(error: BaseException | None, reason: str | None) -> str:
    """The traceback of ``error`` (bounded), or the reason when there is no exception."""
    if error is None:
        return reason or "failed"
    text = "".join(traceback.format_exception(error))
    return text if len(text) <= _EXCEPTION_TEXT_LIMIT else text[-_EXCEPTION_TEXT_LIMIT:]


def _bounded(value: str) -> str:
    """A wire value fit for a log line: repr, truncated, with its original length."""
    shown = repr(value)
    return shown if len(shown) <= _LOGGED_LIMIT else f"{shown[:_LOGGED_LIMIT]}… ({len(value)} chars)"


class ReplyQueues:
    """The callback queues a target daemon may report to: queue URLs, SQS ARNs or bare queue names.

    A URL matches itself (ignoring a trailing slash); an ARN matches URLs of its account and queue name (and
    region, when the URL names one, as AWS's do); a name matches a URL whose last path segment it is, on the
    host and account of ``home_queue_url`` (the daemon's own queue) when given, else on any. A name ending in
    ``*`` matches every queue name it starts (``microbus-reply-*``: the per-process reply queues of requesters),
    on the same host and account the same way.
    """

    _AWS_REGION = re.compile(r"(?:^|\.)(?:sqs\.)?([a-z]{2}(?:-[a-z]+)+-\d+)\.")

    def __init__(self, entries: Iterable[str], *, home_queue_url: str | None = None) -> None:
        self.entries = tuple(e.strip() for e in entries if e and e.strip())
        self._home = _host_and_account(home_queue_url) if home_queue_url else None
        self._urls = {e.rstrip("/") for e in self.entries if "://" in e}
        names = {e for e in self.entries if "://" not in e and not e.startswith("arn:")}
        self._names = {e for e in names if not e.endswith("*")}
        self._prefixes = tuple(e[:-1] for e in names if e.endswith("*") and len(e) > 1)
        self._arns: set[tuple[str, str, str]] = set()
        for entry in self.entries:
            parts = entry.split(":")
            if entry.startswith("arn:") and len(parts) == 6 and parts[2] == "sqs":
                self._arns.add((parts[3], parts[4], parts[5]))

    def __bool__(self) -> bool:
        return bool(self.entries)

    def allows(self, reply_to: str) -> bool:
        """Whether ``reply_to`` (a queue URL from the wire) is one of these queues."""
        if reply_to.rstrip("/") in self._urls:
            return True
        parts = _queue_parts(reply_to)
        if parts is None:
            return False
        host, region, account, name = parts
        if name in self._names or name.startswith(self._prefixes):
            return self._home is None or self._home == (host, account)
        if region is None:
            found = self._AWS_REGION.search(host)
            region = found.group(1) if found else None
        return any(
            arn_account == account and arn_name == name and (region is None or arn_region in (region, "*"))
            for arn_region, arn_account, arn_name in self._arns
        )


def _queue_parts(url: str) -> tuple[str, str | None, str, str] | None:
    """Host, region (when the path names one), account and name of a queue URL: AWS's and the emulators'
    ``/<account>/<name>``, or LocalStack's path style ``/queue/<region>/<account>/<name>``; None otherwise."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or parts.query or parts.fragment:
        return None
    path = [p for p in parts.path.split("/") if p]
    host = (parts.hostname or "").lower()
    if len(path) == 2:
        return host, None, path[0], path[1]
    if len(path) == 4 and path[0] == "queue":
        return host, path[1], path[2], path[3]
    return None


def _host_and_account(url: str) -> tuple[str, str]:
    """The host and the account of a queue URL (empty when it is not one)."""
    parts = _queue_parts(url)
    return (parts[0], parts[2]) if parts is not None else ("", "")


class ParallelReporter(Middleware):
    """Target-daemon middleware: sets the current cid, and reports each finished target to its callback queue.

    The target's message is acked only after its report was sent; a failed send turns the outcome
    into a retry (reason ``callback-send-failed``). A duplicate of an idempotent target (its handler not
    run again) reports the response its first run stored.

    Parameters:
        sqs_client: sends reports.
        schema_registry: encodes reports.
        allowed_reply_queues: the callback queues reports may go to (URLs, SQS ARNs or names); a target
            naming another is dead-lettered without running (see :class:`ReplyQueues`).
        home_queue_url: the daemon's own queue; names in ``allowed_reply_queues`` match only on its host and
            account.
        mode: what to do when a target's handler raised (:class:`FailureMode`).
        max_message_bytes: size limit of a report; a larger response is reported as a failure.

    Raises:
        ConfigurationError: no allowed reply queue.
    """

    def __init__(
        self,
        *,
        sqs_client: Any,
        schema_registry: SchemaRegistry,
        allowed_reply_queues: Iterable[str],
        mode: FailureMode = FailureMode.REPORT,
        max_message_bytes: int = CALLBACK_MAX_BYTES,
        home_queue_url: str | None = None,
    ) -> None:
        self.reply_queues = ReplyQueues(
            [allowed_reply_queues] if isinstance(allowed_reply_queues, str) else allowed_reply_queues,
            home_queue_url=home_queue_url,
        )
        if not self.reply_queues:
            raise ConfigurationError(
                "The parallel reporter has no reply queue to report to: set parallel_reporter.allowed_reply_queues "
                "(or parallel.callback_queue_url) to the callback queues this daemon's targets report to"
            )
        self.sqs_client = sqs_client
        self.schema_registry = schema_registry
        self.mode = mode
        self.max_message_bytes = max_message_bytes
        self._active: dict[int, tuple[ParallelRequest | None, Token[str | None] | None]] = {}
        self._refused: set[int] = set()
        self._lock = threading.Lock()

    def allows(self, reply_to: str) -> bool:
        """Whether reports may be sent to ``reply_to``."""
        return self.reply_queues.allows(reply_to)

    def before_handle(self, message: SQSMessage) -> None:
        request = ParallelRequest.from_message(message)  # read once per message, kept until after_handle
        token = bind_cid(request.cid) if request else None  # others keep the message's cid
        refused = request is not None and not self.allows(request.reply_to)
        if refused:
            assert request is not None
            logger.warning(
                "Target %s of cid %s (message %r) asks to report to %s, which is not one of "
                "parallel_reporter.allowed_reply_queues: dead-lettered without running it",
                _bounded(request.target),
                _bounded(request.cid),
                message.message_id,
                _bounded(request.reply_to),
            )
        with self._lock:
            self._active[id(message)] = (request, token)
            if refused:
                self._refused.add(id(message))

    def _is_refused(self, message: SQSMessage) -> bool:
        with self._lock:
            return id(message) in self._refused

    def around_handler(self, call: HandlerCall) -> Any:
        """A target with a foreign reply queue is not run (``after_handle`` dead-letters it)."""
        if self._is_refused(call.message):
            raise SkipMessage(REPLY_TO_NOT_ALLOWED)
        return call.call()

    async def around_handler_async(self, call: AsyncHandlerCall) -> Any:
        """The same for async targets."""
        if self._is_refused(call.message):
            raise SkipMessage(REPLY_TO_NOT_ALLOWED)
        return await call.call()

    def after_handle(self, message: SQSMessage, result: Result) -> None:
        with self._lock:
            request, token = self._active.pop(id(message), (None, None))
            refused = id(message) in self._refused
            self._refused.discard(id(message))
        if token is not None:
            unbind_cid(token)
        if refused:
            if result.outcome.action is not Action.DEAD_LETTER:
                result.outcome, result.reason, result.response = Outcome.REJECTED, REPLY_TO_NOT_ALLOWED, None
                result.error = PatternError("x-microbus-reply-to is not one of parallel_reporter.allowed_reply_queues")
            return
        if request is None or not should_report(result.outcome, self.mode):
            return
        try:
            self.send_report(request, result)
        except TransportError as exc:
            logger.warning(
                "Could not report target %s of cid %s: %s", log_repr(request.target), log_repr(request.cid), exc
            )
            result.outcome, result.reason, result.error, result.retry_after_s = (
                Outcome.FAILED,
                "callback-send-failed",
                exc,
                None,
            )
            return
        if result.outcome is Outcome.FAILED:
            result.outcome, result.reason = Outcome.SKIPPED, "failure-reported"

    def send_report(self, request: ParallelRequest, result: Result) -> str:
        """Encode and send the report of a finished target; return its SQS message id.

        A response that is not JSON, or too large, is reported as ``ok`` false with the reason.

        Raises:
            TransportError: the callback queue could not be reached.
        """
        ok = result.outcome in (Outcome.SUCCEEDED, Outcome.SKIPPED) and result.reason != TTL_EXPIRED  # never ran
        response = result.response if ok else None
        exception = None if ok else exception_text(result.error, result.reason)
        stored = stored_response(result)
        if stored is not None:  # a duplicate: report what its first run stored
            response = stored.value
            if stored.problem is not None:
                ok, exception = False, f"{type(lost := self._lost(request, stored.problem)).__name__}: {lost}"
        body = self._encode(request, response=response, ok=ok, exception=exception)
        problem = self._unsendable(request, body)
        if problem is not None:
            logger.error("%s (cid %s)", problem, log_repr(request.cid))
            body = self._encode(request, response=None, ok=False, exception=f"{type(problem).__name__}: {problem}")
        assert body is not None
        transport = SQSTransport(client=self.sqs_client, queue_url=request.reply_to)
        return transport.send(body, {"media_type": {"DataType": "String", "StringValue": TargetReport.MEDIA_TYPE}})

    @staticmethod
    def _lost(request: ParallelRequest, problem: str) -> PatternError:
        """Why a duplicate's report cannot carry the response of the run that completed it."""
        text = (
            f"The response of target {request.target!r} was not kept by the idempotency guard ({problem}), and this "
            f"delivery is a duplicate of the run that returned it"
        )
        if "bytes" in problem:
            return ResponseTooLargeError(f"{text}: return a reference (e.g. an S3 key) instead")
        if "not JSON" in problem:
            return ResponseNotSerializableError(f"{text}: return plain data")
        return PatternError(text)

    def _unsendable(self, request: ParallelRequest, body: str | None) -> PatternError | None:
        """Why a report cannot travel as it is (its response is not JSON, or too large), else None."""
        if body is None:
            return ResponseNotSerializableError(
                f"The response of target {request.target!r} is not JSON-serializable: return plain data"
            )
        size = len(body.encode())
        if size > self.max_message_bytes:
            return ResponseTooLargeError(
                f"The response of target {request.target!r} is {size} bytes, over the callback message limit of "
                f"{self.max_message_bytes}: return a reference (e.g. an S3 key) instead"
            )
        return None

    def _encode(self, request: ParallelRequest, *, response: Any, ok: bool, exception: str | None) -> str | None:
        content = target_payload(request, response=response, ok=ok, exception=exception, resp_ts_utc=utc_now())
        content.update(
            report_id=uuid.uuid4().hex,
            on_target=list(request.on_target),
            on_final=list(request.on_final),
            expected=request.expected,
        )
        try:
            return self.schema_registry.find(TargetReport.MEDIA_TYPE).encode(
                content, opaque_data={CID_KEY: request.cid}
            )
        except (TypeError, ValueError):
            return None


@defaults(mode=FailureMode.REPORT.value, max_message_bytes=CALLBACK_MAX_BYTES, allowed_reply_queues=None)
def configure_parallel_reporter(graph: ObjectGraph) -> ParallelReporter:
    """microcosm factory: ``graph.parallel_reporter``; list it in ``microbus_sqs_message_dispatcher.middleware``.

    ``parallel_reporter.allowed_reply_queues`` is a list (or comma-separated text) of queue URLs, SQS ARNs or
    names; without it, ``parallel.callback_queue_url``.

    Raises:
        ConfigurationError: ``parallel_reporter.mode`` is neither ``report`` nor ``retry-first``, or no reply
            queue is allowed.
    """
    config = graph.config.parallel_reporter
    try:
        mode = FailureMode(config.mode)
    except ValueError:
        raise ConfigurationError(f"parallel_reporter.mode is {config.mode!r}: use 'report' or 'retry-first'") from None
    allowed = config.allowed_reply_queues
    if isinstance(allowed, str):
        allowed = allowed.split(",")
    if not allowed:
        callback_queue_url = graph.config.parallel.callback_queue_url if "parallel" in graph.config else None
        allowed = [callback_queue_url] if callback_queue_url else []
    return ParallelReporter(
        sqs_client=graph.sqs_client,
        schema_registry=graph.microbus_pubsub_message_schema_registry,
        allowed_reply_queues=list(allowed),
        home_queue_url=graph.config.microbus_sqs_consumer.sqs_queue_url or None,
        mode=mode,
        max_message_bytes=int(config.max_message_bytes),
    )
