"""Target side of parallel execution: report each finished target to its callback queue.

Patterns layer, installed as dispatcher middleware (``sqs_message_dispatcher.middleware =
["parallel_reporter"]``) in the daemons that run targets.
"""

from __future__ import annotations

import logging
import threading
import traceback
import uuid
from contextvars import Token
from enum import Enum
from typing import TYPE_CHECKING, Any

from microcosm.api import defaults

from microbus.consume.dispatch import Middleware, Outcome, Result
from microbus.consume.message import SQSMessage
from microbus.errors import (
    ConfigurationError,
    PatternError,
    ResponseNotSerializableError,
    ResponseTooLargeError,
    TransportError,
)
from microbus.patterns.parallel import (
    CID_KEY,
    ParallelRequest,
    TargetReport,
    bind_cid,
    target_payload,
    unbind_cid,
    utc_now,
)
from microbus.wire.schemas import SchemaRegistry
from microbus.wire.transport import SQSTransport

if TYPE_CHECKING:
    from microcosm.object_graph import ObjectGraph

logger = logging.getLogger(__name__)

CALLBACK_MAX_BYTES = 262_144
_EXCEPTION_TEXT_LIMIT = 32_768


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


class ParallelReporter(Middleware):
    """Target-daemon middleware: sets the current cid, and reports each finished target to its callback queue.

    The target's message is acked only after its report was sent; a failed send turns the outcome
    into a retry (reason ``callback-send-failed``).

    Parameters:
        sqs_client: sends reports.
        schema_registry: encodes reports.
        mode: what to do when a target's handler raised (:class:`FailureMode`).
        max_message_bytes: size limit of a report; a larger response is reported as a failure.
    """

    def __init__(
        self,
        *,
        sqs_client: Any,
        schema_registry: SchemaRegistry,
        mode: FailureMode = FailureMode.REPORT,
        max_message_bytes: int = CALLBACK_MAX_BYTES,
    ) -> None:
        self.sqs_client = sqs_client
        self.schema_registry = schema_registry
        self.mode = mode
        self.max_message_bytes = max_message_bytes
        self._active: dict[int, tuple[ParallelRequest | None, Token[str | None]]] = {}
        self._lock = threading.Lock()

    def before_handle(self, message: SQSMessage) -> None:
        request = ParallelRequest.from_message(message)  # read once per message, kept until after_handle
        token = bind_cid(request.cid if request else None)
        with self._lock:
            self._active[id(message)] = (request, token)

    def after_handle(self, message: SQSMessage, result: Result) -> None:
        with self._lock:
            request, token = self._active.pop(id(message), (None, None))
        if token is not None:
            unbind_cid(token)
        if request is None or not should_report(result.outcome, self.mode):
            return
        try:
            self.send_report(request, result)
        except TransportError as exc:
            logger.warning("Could not report target %r of cid %r: %s", request.target, request.cid, exc)
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
        ok = result.outcome in (Outcome.SUCCEEDED, Outcome.SKIPPED)
        response = result.response if ok else None
        exception = None if ok else exception_text(result.error, result.reason)
        body = self._encode(request, response=response, ok=ok, exception=exception)
        problem = self._unsendable(request, body)
        if problem is not None:
            logger.error("%s (cid %r)", problem, request.cid)
            body = self._encode(request, response=None, ok=False, exception=f"{type(problem).__name__}: {problem}")
        assert body is not None
        transport = SQSTransport(client=self.sqs_client, queue_url=request.reply_to)
        return transport.send(body, {"media_type": {"DataType": "String", "StringValue": TargetReport.MEDIA_TYPE}})

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


@defaults(mode=FailureMode.REPORT.value, max_message_bytes=CALLBACK_MAX_BYTES)
def configure_parallel_reporter(graph: ObjectGraph) -> ParallelReporter:
    """microcosm factory: ``graph.parallel_reporter``; list it in ``sqs_message_dispatcher.middleware``.

    Raises:
        ConfigurationError: ``parallel_reporter.mode`` is neither ``report`` nor ``retry-first``.
    """
    config = graph.config.parallel_reporter
    try:
        mode = FailureMode(config.mode)
    except ValueError:
        raise ConfigurationError(f"parallel_reporter.mode is {config.mode!r}: use 'report' or 'retry-first'") from None
    return ParallelReporter(
        sqs_client=graph.sqs_client,
        schema_registry=graph.pubsub_message_schema_registry,
        mode=mode,
        max_message_bytes=int(config.max_message_bytes),
    )
