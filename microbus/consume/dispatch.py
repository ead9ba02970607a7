"""Dispatch: call the handler of a message and turn the outcome into a value, then apply it.

:meth:`SQSMessageDispatcher.handle` never touches the queue; :meth:`SQSMessageDispatcher.apply`
is the one place where an outcome becomes an ack, a retry or a dead letter.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, ClassVar

from microcosm.api import defaults

from microbus.consume.deferral import MAX_VISIBILITY_S, plan_deferral
from microbus.consume.handlers import Handler, HandlerRegistry
from microbus.consume.message import SQSMessage
from microbus.consume.records import RecordTemplate
from microbus.errors import (
    ConfigurationError,
    DecodeError,
    FatalError,
    IgnoreMessage,
    Nack,
    NoHandlerError,
    SkipMessage,
    TransportError,
)
from microbus.wire.context import (
    DEFAULT_INITIAL_TTL,
    TTL_KEY,
    MessageContext,
    build_context,
    message_context,
    parse_ttl,
)
from microbus.wire.delivery import DELIVER_AT_KEY, parse_due
from microbus.wire.sanitize import log_repr, log_text
from microbus.wire.tracecontext import consumer_span, end_consumer_span

if TYPE_CHECKING:
    from microcosm.object_graph import ObjectGraph

    from microbus.consume.consumer import SQSConsumer

logger = logging.getLogger(__name__)

TTL_EXPIRED = "ttl-expired"
"""The reason of a message whose ``x-request-ttl`` ran out: its handler never ran."""


class Action(Enum):
    """What happens to a message on the queue."""

    ACK = "ack"
    RETRY = "retry"
    DEAD_LETTER = "dead-letter"


class Outcome(Enum):
    """How handling a message ended; each member carries its log level and its action."""

    SUCCEEDED = ("SUCCEEDED", logging.INFO, Action.ACK)
    SKIPPED = ("SKIPPED", logging.INFO, Action.ACK)
    IGNORED = ("IGNORED", logging.DEBUG, Action.ACK)
    RETRIED = ("RETRIED", logging.INFO, Action.RETRY)
    DEFERRED = ("DEFERRED", logging.DEBUG, Action.RETRY)
    """Not due yet (``deliver_at``): hidden, or re-sent (``Result.resend``), until it is; its handler not run."""
    FAILED = ("FAILED", logging.WARNING, Action.RETRY)
    EXPIRED = ("EXPIRED", logging.WARNING, Action.DEAD_LETTER)
    REJECTED = ("REJECTED", logging.WARNING, Action.DEAD_LETTER)

    def __init__(self, label: str, level: int, action: Action) -> None:
        self.label = label
        self.level = level
        self.action = action


# The members the per-message path compares with, read once: on Python 3.11 each ``Outcome.X`` costs ~0.2 µs.
_ACK, _RETRY, _DEAD_LETTER = Action.ACK, Action.RETRY, Action.DEAD_LETTER
_SUCCEEDED, _SKIPPED, _FAILED = Outcome.SUCCEEDED, Outcome.SKIPPED, Outcome.FAILED
_FAILURES = (Outcome.FAILED, Outcome.EXPIRED, Outcome.REJECTED)


@dataclass
class Result:
    """The outcome of handling one message."""

    outcome: Outcome
    media_type: str | None
    message_id: str
    receive_count: int
    elapsed_s: float = 0.0
    retry_after_s: int | None = None
    reason: str | None = None
    error: BaseException | None = None
    response: Any = None
    extra: dict[str, Any] = field(default_factory=dict)
    resend: bool = False
    """DEFERRED: send a copy delayed by ``retry_after_s`` and delete this one, instead of hiding it (the copy's
    receive count starts again; see :mod:`microbus.consume.deferral`)."""

    def __repr__(self) -> str:
        """Ids, outcome and bounded wire values; never the handler's response or extra (they may hold content)."""
        return (
            f"Result({self.outcome.label}, media_type={log_repr(self.media_type)}, message_id={self.message_id!r}, "
            f"receive_count={self.receive_count}, reason={log_repr(self.reason)}, "
            f"error={type(self.error).__name__ if self.error is not None else None})"
        )


def compute_backoff(
    *, attempt: int, base_s: float, max_s: float, jitter: bool = True, rand: Callable[[], float] = random.random
) -> int:
    """Seconds until a failed message is retried: ``base_s * 2**(attempt-1)``, capped, with full jitter.

    The result is at least 1 second and at most ``max_s`` (≤ 12 h, SQS's visibility limit).
    """
    ceiling = min(max_s, base_s * 2 ** max(0, attempt - 1), 43_200)
    delay = ceiling * rand() if jitter else ceiling
    return max(1, int(round(delay)))


@dataclass(frozen=True)
class RetryPolicy:
    """When to retry and when to give up.

    ``max_attempts`` None means: take the queue's redrive ``maxReceiveCount``, else ``default_max_attempts``.
    """

    base_s: float = 1.0
    max_s: float = 300.0
    jitter: bool = True
    max_attempts: int | None = None
    default_max_attempts: int = 5

    def backoff(self, attempt: int) -> int:
        """Seconds before retry number ``attempt``."""
        return compute_backoff(attempt=attempt, base_s=self.base_s, max_s=self.max_s, jitter=self.jitter)


@dataclass(frozen=True)
class HandlerCall:
    """The call of one message's handler, as middleware sees it."""

    message: SQSMessage
    source: str
    """The daemon's name."""
    idempotent: bool
    """The handler was registered with ``idempotent=True``."""
    call: Callable[[], Any]


@dataclass(frozen=True)
class AsyncHandlerCall:
    """The call of one message's async handler, as middleware sees it (``await call.call()``)."""

    message: SQSMessage
    source: str
    idempotent: bool
    call: Callable[[], Awaitable[Any]]


class Middleware:
    """Extension points around handling one message; every hook is a no-op by default.

    ``after_handle`` sees the outcome after retry limits were applied, and may change it (e.g. turn a
    failure into an ack once it was reported elsewhere). Hooks must not raise; one that does turns
    the outcome into a retry (FAILED, reason ``middleware-error``). ``before_handle`` and ``after_handle``
    may be ``async def``; for an async handler they run on the worker's event loop (a blocking sync hook
    holds up the loop's other handlers). ``around_handler`` wraps sync handlers, ``around_handler_async``
    async ones.
    """

    guards_idempotent_handlers: ClassVar[bool] = False
    """True for the middleware that runs handlers registered with ``idempotent=True`` at most once."""

    def before_handle(self, message: SQSMessage) -> None:
        """Called before the message's handler is looked up and called."""

    def around_handler(self, call: HandlerCall) -> Any:
        """Wraps the call of the handler (``call.call()``); may skip it by raising :class:`SkipMessage` or
        :class:`Nack`. Middleware wraps in order: the first is the outermost."""
        return call.call()

    async def around_handler_async(self, call: AsyncHandlerCall) -> Any:
        """The same for async handlers: ``await call.call()``."""
        return await call.call()

    def after_handle(self, message: SQSMessage, result: Result) -> None:
        """Called once the handler returned or raised, before the outcome is applied to the queue."""


class SQSMessageDispatcher:
    """Calls handlers and applies their outcomes.

    Parameters:
        handler_registry: media type → handler.
        retry_policy: backoff and attempt limit.
        source: the daemon's name, recorded on dead letters.
        skip_unknown_media_types: ack (IGNORED) messages this daemon has no handler/schema for,
            for queues that carry several services' messages; otherwise they are dead-lettered.
        delete_undeliverable: when there is no DLQ, delete (and log) poison messages (REJECTED: undecodable,
            unknown media type, no handler, schema violation) instead of leaving them to the queue's redrive
            policy. Messages that exhausted their attempts (EXPIRED) are never deleted: they may succeed once
            the handler is fixed, so the redrive policy keeps them.
        middleware: hooks run around each message, in order (``after_handle`` in reverse order).
        initial_ttl: the hops a message without ``x-request-ttl`` starts with (microcosm-pubsub's 32); each
            message's TTL is decremented once here and passed on to the messages its handler produces, and one
            that arrives at 1 or below has expired (a loop): it is acked without calling the handler (SKIPPED,
            reason :data:`TTL_EXPIRED`) and logged at WARNING, as microcosm-pubsub drops it. None disables the TTL.
        dead_letter_expired_ttl: dead-letter messages whose TTL expired (REJECTED) instead of dropping them.

    While a message is handled (middleware included), its :class:`~microbus.wire.context.MessageContext` is
    current: :func:`~microbus.current_cid` returns its cid, and the producer forwards its context.
        clock: epoch seconds now; a message due later (``x-microbus-deliver-at``) is hidden again until then.

    Raises:
        ConfigurationError: some handlers are idempotent and no middleware guards them (an
            :class:`~microbus.IdempotencyGuard`).
    """

    def __init__(
        self,
        *,
        handler_registry: HandlerRegistry,
        retry_policy: RetryPolicy | None = None,
        source: str = "microbus",
        skip_unknown_media_types: bool = False,
        delete_undeliverable: bool = False,
        middleware: Sequence[Middleware] = (),
        initial_ttl: int | None = DEFAULT_INITIAL_TTL,
        dead_letter_expired_ttl: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if handler_registry.idempotent and not any(m.guards_idempotent_handlers for m in middleware):
            raise ConfigurationError(
                f"Handlers of {', '.join(sorted(handler_registry.idempotent))} are idempotent: "
                "give the dispatcher an idempotency guard as middleware (graph.idempotency_guard)"
            )
        self.handler_registry = handler_registry
        self.middleware = tuple(middleware)
        self.retry_policy = retry_policy or RetryPolicy()
        self.source = source
        self.skip_unknown_media_types = skip_unknown_media_types
        self.delete_undeliverable = delete_undeliverable
        self.initial_ttl = initial_ttl
        self.dead_letter_expired_ttl = dead_letter_expired_ttl
        self.clock = clock

    def is_async(self, message: SQSMessage) -> bool:
        """True when the message's handler is a coroutine function (run it with :meth:`handle_async`)."""
        return message.media_type is not None and self.handler_registry.is_async(message.media_type)

    def handle(self, message: SQSMessage, *, max_attempts: int | None = None) -> Result:
        """Call the message's handler and return the outcome; never raises for handler errors.

        ``max_attempts`` is the queue's redrive ``maxReceiveCount``; a configured
        ``retry_policy.max_attempts`` takes precedence over it. An async handler (or one that returns an
        awaitable) is run to completion on an event loop of its own: in a worker, async handlers go
        through :meth:`handle_async` on the worker's loop instead.
        """
        context = self.context_of(message)
        with message_context(context):
            return self._handle(message, max_attempts, context)

    def _handle(self, message: SQSMessage, max_attempts: int | None, context: MessageContext) -> Result:
        started = time.monotonic()
        early = self._not_due(message, max_attempts)
        if early is not None:
            return early
        with consumer_span(message, queue_url=_queue_url(message), daemon=self.source) as span:
            for middleware in self.middleware:
                self._hook(message, None, functools.partial(_sync_hook, middleware.before_handle, message))
            handler, rejected = self._find(message, context)
            result = rejected or self._outcome(message, self._call, handler, message)
            result = self._finish(message, result, started, max_attempts, sync=True)
            if span is not None:
                _end_span(span, result)
        return result

    async def handle_async(self, message: SQSMessage, *, max_attempts: int | None = None) -> Result:
        """Like :meth:`handle`, awaiting the handler and any async middleware hooks."""
        context = self.context_of(message)
        with message_context(context):
            with consumer_span(message, queue_url=_queue_url(message), daemon=self.source) as span:
                result = await self._handle_async(message, max_attempts, context)
                if span is not None:
                    _end_span(span, result)
            return result

    async def _handle_async(self, message: SQSMessage, max_attempts: int | None, context: MessageContext) -> Result:
        started = time.monotonic()
        early = self._not_due(message, max_attempts)
        if early is not None:
            return early
        for middleware in self.middleware:
            await self._hook_async(message, None, functools.partial(middleware.before_handle, message))
        handler, result = self._find(message, context)
        if result is None:
            assert handler is not None
            try:
                response = await self._call_async(handler, message)
            except FatalError:
                raise
            except BaseException as exc:  # noqa: B036 - CancelledError too: the message is retried, never acked
                result = self._outcome(message, _reraise, exc)
            else:
                result = self._outcome(message, _returned, response)
        result = self._finish(message, result, started, max_attempts, sync=False)
        for middleware in reversed(self.middleware):
            await self._hook_async(message, result, functools.partial(middleware.after_handle, message, result))
        self._retry_delay(message, result)
        return result

    def context_of(self, message: SQSMessage) -> MessageContext:
        """The context the message passes on: its cid (the inbound ``x-microbus-cid``, else its most stable id),
        its opaqueData and its decremented TTL. A malformed TTL is logged and counts as none."""
        opaque = message.folded_opaque_data()  # read only: build_context copies what it passes on
        context = build_context(opaque, fallback_cid=message.idempotency_key_in(opaque), initial_ttl=self.initial_ttl)
        if context.malformed_ttl is not None:
            logger.warning(
                "Message %r has a malformed %s %s (not an integer): handled as if it had none",
                message.message_id,
                TTL_KEY,
                context.malformed_ttl,
            )
        if context.skipped and logger.isEnabledFor(logging.DEBUG):
            names = ", ".join(log_text(key, 60) for key in context.skipped[:10])
            logger.debug(
                "Message %r: opaqueData entries not passed on (not text, or too long): %s", message.message_id, names
            )
        return context

    def _not_due(self, message: SQSMessage, max_attempts: int | None) -> Result | None:
        """A message that is not due yet is DEFERRED: hidden for up to 12 h (SQS's limit) or re-sent so that its
        receive count starts again (:func:`~microbus.consume.deferral.plan_deferral`, against the queue's
        ``max_attempts``); no middleware and no handler run. A malformed due time is REJECTED. None: handle it now."""
        if message.error is not None:
            return None
        due_text = dict.get(message.folded_opaque_data(), DELIVER_AT_KEY)  # a lower-case key, the keys are folded
        if due_text is None:
            return None
        try:
            remaining = parse_due(due_text).timestamp() - self.clock()
        except DecodeError as exc:
            return _result(message, Outcome.REJECTED, reason=exc.reason, error=exc)
        if remaining <= 0:
            return None
        limit = max_attempts or self.retry_policy.max_attempts or self.retry_policy.default_max_attempts
        fifo = message.message_group_id is not None
        plan = plan_deferral(
            remaining_s=remaining, receive_count=message.approximate_receive_count, receive_limit=limit, fifo=fifo
        )
        reason = f"due in {remaining:.0f}s"
        return _result(message, Outcome.DEFERRED, retry_after_s=plan.seconds, reason=reason, resend=plan.resend)

    def _finish(
        self, message: SQSMessage, result: Result, started: float, max_attempts: int | None, *, sync: bool
    ) -> Result:
        """Elapsed time, the attempt limit, and (sync) the ``after_handle`` hooks and the retry delay."""
        result.elapsed_s = time.monotonic() - started
        if result.outcome is _FAILED:
            policy = self.retry_policy
            limit = policy.max_attempts or max_attempts or policy.default_max_attempts
            if message.approximate_receive_count >= limit:
                result.outcome = Outcome.EXPIRED
                result.reason = "max-attempts"
        if sync:
            if self.middleware:
                for middleware in reversed(self.middleware):
                    hook = functools.partial(_sync_hook, middleware.after_handle, message, result)
                    self._hook(message, result, hook)
            self._retry_delay(message, result)
        return result

    def _retry_delay(self, message: SQSMessage, result: Result) -> None:
        if result.outcome.action is _RETRY and result.retry_after_s is None:
            result.retry_after_s = self.retry_policy.backoff(message.approximate_receive_count)

    def _hook(self, message: SQSMessage, result: Result | None, call: Callable[[], Any]) -> None:
        """Run one middleware hook; a raising ``after_handle`` turns the outcome into a retry."""
        try:
            call()
        except FatalError:
            raise
        except Exception as exc:
            self._hook_failed(message, result, exc)

    async def _hook_async(self, message: SQSMessage, result: Result | None, call: Callable[[], Any]) -> None:
        try:
            value = call()
            if inspect.isawaitable(value):
                await value
        except FatalError:
            raise
        except Exception as exc:
            self._hook_failed(message, result, exc)

    def _hook_failed(self, message: SQSMessage, result: Result | None, exc: Exception) -> None:
        logger.error("Middleware failed on message %r", message.message_id, exc_info=exc)
        if result is not None and result.outcome.action is not Action.DEAD_LETTER:
            result.outcome, result.reason, result.error = Outcome.FAILED, "middleware-error", exc

    def _find(self, message: SQSMessage, context: MessageContext) -> tuple[Handler | None, Result | None]:
        """The message's handler, or the result of rejecting it (undecodable, TTL expired, no handler)."""
        if message.error is not None:
            return None, self._reject(message, message.error)
        if context.ttl is not None and context.ttl <= 0:
            return None, self._expired(message)
        handler = self.handler_registry.find(message.media_type) if message.media_type else None
        if handler is None:
            error = NoHandlerError(f"No handler for media type {log_repr(message.media_type)}")
            return None, self._reject(message, error)
        return handler, None

    def _expired(self, message: SQSMessage) -> Result:
        """A message whose TTL ran out: dropped (acked), or dead-lettered with ``dead_letter_expired_ttl``."""
        fate = "dead-lettered" if self.dead_letter_expired_ttl else "dropped without calling its handler"
        logger.warning(
            "Message %r (%s) has used up its %s (a loop of handlers producing messages?): %s",
            message.message_id,
            log_text(message.media_type),
            TTL_KEY,
            fate,
        )
        outcome = Outcome.REJECTED if self.dead_letter_expired_ttl else Outcome.SKIPPED
        return _result(message, outcome, reason=TTL_EXPIRED)

    def _outcome(self, message: SQSMessage, call: Callable[..., Any], *args: Any) -> Result:
        """Call the handler, ``call(*args)`` (or replay its async outcome), and turn what happened into a Result."""
        try:
            response = call(*args)
        except Nack as exc:
            visibility = _visibility(exc.visibility_timeout_seconds)
            return _result(message, Outcome.RETRIED, retry_after_s=visibility, error=exc, extra=exc.extra)
        except SkipMessage as exc:
            return _result(message, Outcome.SKIPPED, reason=str(exc), extra=exc.extra)
        except IgnoreMessage as exc:
            return _result(message, Outcome.IGNORED, reason=str(exc), extra=exc.extra)
        except FatalError:
            raise  # the worker stops: see FatalError
        except BaseException as exc:  # SystemExit or CancelledError from a handler must not end the worker thread
            return _result(message, Outcome.FAILED, reason="handler-error", error=exc)
        return _result(message, _SKIPPED if response is False else _SUCCEEDED, response=response)

    def _call(self, handler: Handler | None, message: SQSMessage) -> Any:
        assert handler is not None and message.content is not None
        content = message.content
        if not self.middleware:
            return _complete(handler(content))
        idempotent = self.handler_registry.is_idempotent(message.media_type or "")
        call = HandlerCall(message, self.source, idempotent, lambda: _complete(handler(content)))
        for middleware in reversed(self.middleware):
            call = HandlerCall(message, self.source, idempotent, functools.partial(middleware.around_handler, call))
        return call.call()

    async def _call_async(self, handler: Handler, message: SQSMessage) -> Any:
        assert message.content is not None
        content = message.content

        async def call_handler() -> Any:
            value = handler(content)
            return await value if inspect.isawaitable(value) else value

        idempotent = self.handler_registry.is_idempotent(message.media_type or "")
        call = AsyncHandlerCall(message, self.source, idempotent, call_handler)
        for middleware in reversed(self.middleware):
            call = AsyncHandlerCall(
                message, self.source, idempotent, functools.partial(middleware.around_handler_async, call)
            )
        return await call.call()

    def _reject(self, message: SQSMessage, error: DecodeError) -> Result:
        if error.retryable:  # e.g. its S3 payload could not be fetched now: retried, then dead-lettered
            return _result(message, Outcome.FAILED, reason=error.reason, error=error)
        unknown = error.reason in ("unknown-media-type", "no-handler")
        if unknown and self.skip_unknown_media_types:
            return _result(message, Outcome.IGNORED, reason=error.reason)
        return _result(message, Outcome.REJECTED, reason=error.reason, error=error)

    def apply(
        self, result: Result, message: SQSMessage, *, consumer: SQSConsumer, ack: Callable[[SQSMessage], None]
    ) -> None:
        """Act on the queue at once, for code that consumes without a Worker: ack via ``ack``, retry later,
        or dead-letter (a :class:`Worker` settles in batches instead, from the same decisions).

        Transport errors are logged, not raised: the message then reappears after its visibility timeout.
        """
        log_result(result, message=message, daemon=self.source, queue=consumer.queue_url.rsplit("/", 1)[-1])
        action, delay = result.outcome.action, result.retry_after_s or 0
        try:
            if action is _DEAD_LETTER and consumer.dead_letter_queue_url() is None:
                action, delay = self.without_dead_letter_queue(result, message)
            if action is _ACK:
                ack(message)
            elif result.resend:
                consumer.resend(message, delay)
            elif action is _RETRY:
                consumer.nack(message, delay)
            elif not consumer.dead_letter(
                message, reason=result.reason or "rejected", error=result.error, source=self.source
            ):
                logger.warning("Message %r was not dead-lettered completely; it will reappear", message.message_id)
        except TransportError as exc:
            logger.warning("Could not %s message %r: %s", action.value, message.message_id, exc)

    def without_dead_letter_queue(self, result: Result, message: SQSMessage) -> tuple[Action, int]:
        """What to do with a message to dead-letter when the queue has none: delete it when it is poison
        (REJECTED) and ``delete_undeliverable`` is set, else leave it to the queue's redrive policy, visible
        again after the backoff."""
        if self.delete_undeliverable and result.outcome is Outcome.REJECTED:
            logger.error("Deleting undeliverable message %r (no DLQ): %s", message.message_id, result.reason)
            return Action.ACK, 0
        logger.error(
            "Message %r cannot be handled (%s) and the queue has no DLQ: left to the queue's redrive policy",
            message.message_id,
            result.reason,
        )
        return Action.RETRY, self.retry_policy.backoff(message.approximate_receive_count)

    def log(self, result: Result) -> None:
        """One line per message outcome, at the outcome's level; never the body."""
        log_result(result)


_RESULT_LINE = "%s %s id=%r receive_count=%d elapsed=%.3fs%s%s%s%s"
_BODY_LIMIT = 2000
"""Characters of a body in an outcome line, when bodies are logged at all."""
_ERROR_LIMIT = 300
"""Characters of an error's text in the outcome line (it may embed wire values, each already bounded)."""
_ID_LIMIT = 100
"""Characters of an id taken from a message body (the SNS MessageId, the cid) in a log line."""
_WITH_TRACEBACK = (Outcome.FAILED, Outcome.EXPIRED)
RECORD_FIELDS = "microbus"
"""The log record attribute holding an outcome line's fields (a dict), for structured (JSON) formatters."""
_RECORDS = {
    level: RecordTemplate(logger, level=level, pathname=__file__, func="log_result", msg=_RESULT_LINE)
    for level in sorted({outcome.level for outcome in Outcome})
}
"""The outcome lines' records, by level: the records ``logger.makeRecord`` would make (see RecordTemplate)."""


def log_result(
    result: Result,
    *,
    message: SQSMessage | None = None,
    daemon: str | None = None,
    queue: str | None = None,
    with_body: bool = False,
) -> None:
    """One line per message outcome, at the outcome's level; never the body. Costs nothing when disabled.

    The line names the daemon and queue (when given), the media type, the SQS and SNS message ids, the cid,
    the attempt (receive count), the outcome and the handler's elapsed time; the record carries the same as a
    dict in its ``microbus`` attribute (:data:`RECORD_FIELDS`). A handler's exception comes with its traceback
    on the first attempt (at the outcome's level, WARNING), and on later attempts only when DEBUG is enabled.
    Values from the wire (media type, SQS and SNS ids, cid, reason, error text) are bounded (:func:`log_text`). The
    body is left out unless ``with_body`` (then it is bounded to :data:`_BODY_LIMIT` characters).
    """
    level = result.outcome.level
    if not logger.isEnabledFor(level):
        return
    media_type = log_text(result.media_type) if result.media_type is not None else None
    message_id = result.message_id if len(result.message_id) <= _ID_LIMIT else log_text(result.message_id, _ID_LIMIT)
    sns_message_id = cid = body = None
    if message is not None:
        sns_message_id = _bounded(message.sns_message_id)
        cid = log_text(message.cid, _ID_LIMIT)
        if with_body:
            body = log_text(message.body, _BODY_LIMIT)
    reason = log_text(result.reason) if result.reason else None
    error = f"{type(result.error).__name__}: {log_text(result.error, _ERROR_LIMIT)}" if result.error else None
    fields: dict[str, Any] = {
        "daemon": daemon,
        "queue": queue,
        "media_type": media_type,
        "message_id": message_id,
        "sns_message_id": sns_message_id,
        "cid": cid,
        "attempt": result.receive_count,
        "outcome": result.outcome.label,
        "elapsed_s": round(result.elapsed_s, 6),
        "reason": reason,
        "error": error,
        "body": body,
    }
    tail = f" daemon={daemon}" if daemon else ""
    if queue:
        tail += f" queue={queue}"
    if sns_message_id:
        tail += f" sns_message_id={sns_message_id!r}"
    if cid:
        tail += f" cid={cid!r}"
    args = (
        result.outcome.label,
        media_type,
        message_id,
        result.receive_count,
        result.elapsed_s,
        tail,
        f" reason={reason}" if reason else "",
        f" error={error}" if error else "",
        f" body={body}" if body is not None else "",
    )
    # the record makeRecord would make, and handle: the same record and handlers as logger.log, without walking the
    # stack for the caller
    exc_info = None if result.error is None else _traceback(result)
    logger.handle(_RECORDS[level].record(args, exc_info, {RECORD_FIELDS: fields}))


def _bounded(value: str | None) -> str | None:
    return None if value is None else log_text(value, _ID_LIMIT)


def _traceback(result: Result) -> tuple[type[BaseException], BaseException, Any] | None:
    """A handler's exception for the outcome line: on its first attempt, or on any attempt at DEBUG."""
    error = result.error
    if error is None or result.outcome not in _WITH_TRACEBACK or isinstance(error, (Nack, DecodeError)):
        return None
    if result.receive_count > 1 and not logger.isEnabledFor(logging.DEBUG):
        return None
    return type(error), error, error.__traceback__


@defaults(
    backoff_base_s=1.0,
    backoff_max_s=300.0,
    backoff_jitter=True,
    max_attempts=None,
    skip_unknown_media_types=False,
    delete_undeliverable=False,
    middleware=[],
    enable_ttl=True,
    initial_ttl=DEFAULT_INITIAL_TTL,
    dead_letter_expired_ttl=False,
)
def configure_sqs_message_dispatcher(graph: ObjectGraph) -> SQSMessageDispatcher:
    """microcosm factory: ``graph.microbus_sqs_message_dispatcher``; ``middleware`` names graph components."""
    config = graph.config.microbus_sqs_message_dispatcher
    return SQSMessageDispatcher(
        handler_registry=graph.microbus_sqs_message_handler_registry,
        retry_policy=RetryPolicy(
            base_s=float(config.backoff_base_s),
            max_s=float(config.backoff_max_s),
            jitter=_truthy(config.backoff_jitter),
            max_attempts=int(config.max_attempts) if config.max_attempts else None,
        ),
        source=graph.metadata.name,
        skip_unknown_media_types=_truthy(config.skip_unknown_media_types),
        delete_undeliverable=_truthy(config.delete_undeliverable),
        middleware=_middleware(graph, list(config.middleware or ())),
        initial_ttl=_initial_ttl(config.initial_ttl) if _truthy(config.enable_ttl) else None,
        dead_letter_expired_ttl=_truthy(config.dead_letter_expired_ttl),
    )


def _middleware(graph: ObjectGraph, names: list[str]) -> list[Middleware]:
    """The named graph components; with idempotent handlers, ``idempotency_guard`` innermost unless named."""
    if graph.microbus_sqs_message_handler_registry.idempotent and "idempotency_guard" not in names:
        names.append("idempotency_guard")
    return [getattr(graph, name) for name in names]


def _result(message: SQSMessage, outcome: Outcome, **kwargs: Any) -> Result:
    return Result(outcome, message.media_type, message.message_id, message.approximate_receive_count, **kwargs)


def runtime_error(message: SQSMessage, error: BaseException) -> Result:
    """The outcome of a message whose handling failed outside its handler (a bug, a shutdown): retried."""
    return _result(message, Outcome.FAILED, reason="runtime-error", error=error)


def _queue_url(message: SQSMessage) -> str | None:
    url = getattr(message.consumer, "queue_url", None)
    return url if isinstance(url, str) else None


def _end_span(span: Any, result: Result) -> None:
    failed = result.outcome in _FAILURES
    end_consumer_span(span, outcome=result.outcome.label, error=result.error, failed=failed)


def _sync_hook(hook: Callable[..., Any], *args: Any) -> None:
    _complete(hook(*args))


def _reraise(exc: BaseException) -> Any:
    raise exc


def _returned(value: Any) -> Any:
    return value


def _complete(value: Any) -> Any:
    """A sync call's value; an awaitable (an async function called from the sync path) is run to completion.

    Never mistake a coroutine for a handler's success: it is awaited, on a loop of its own.
    """
    if value is None or not inspect.isawaitable(value):
        return value

    async def wait() -> Any:
        return await value

    return asyncio.run(wait())


def _visibility(seconds: int | None) -> int | None:
    """A handler's requested retry delay, within SQS's 0..12 h; None means: use the backoff."""
    return None if seconds is None else max(0, min(MAX_VISIBILITY_S, int(seconds)))


def _initial_ttl(value: Any) -> int:
    """``microbus_sqs_message_dispatcher.initial_ttl``: a positive integer.

    Raises:
        ConfigurationError: it is not one.
    """
    ttl = parse_ttl(value)
    if ttl is None or ttl < 1:
        raise ConfigurationError(
            f"microbus_sqs_message_dispatcher.initial_ttl must be a positive integer (hops), not {log_repr(value)}"
        )
    return ttl


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)
