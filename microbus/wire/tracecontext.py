"""W3C trace context on the wire, and the spans around producing and handling (``pip install 'microbus[otel]'``).

The producer puts the current trace context into one message attribute, ``traceparent`` (plus ``tracestate``
only when the context carries one), so a message keeps at least 8 of SQS's 10 attributes free; SNS passes
them to raw subscriptions as SQS attributes and to enveloped ones inside the envelope. microcosm-pubsub
ignores message attributes, so its consumers are not affected. The consumer continues the trace: the
handler runs inside a CONSUMER span whose parent is the producer's span, with OpenTelemetry's messaging
attributes. Only the OpenTelemetry API is used; until a tracer provider (the SDK's) is set, and without
OpenTelemetry installed, nothing is added to messages, nothing is read and no span is made.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, Protocol

TRACE_ATTRIBUTES = ("traceparent", "tracestate")
"""The message attributes that carry the trace context."""
_MAX_VALUE = 512
"""Longest trace attribute value taken from the wire (a traceparent is 55 characters)."""
TRACER_NAME = "microbus"


class TracedMessage(Protocol):
    """What a consumer span reads of a received message (an :class:`~microbus.SQSMessage`)."""

    message_id: str
    body: str
    approximate_receive_count: int
    media_type: str | None

    @property
    def cid(self) -> str | None:
        """The correlation id."""

    def attribute(self, name: str) -> str | None:
        """A string message attribute."""


@functools.cache
def _otel() -> Any:
    """The OpenTelemetry API modules, or None when it is not installed."""
    try:
        from opentelemetry import propagate, trace
    except ImportError:
        return None
    return propagate, trace


def tracing_available() -> bool:
    """True when the OpenTelemetry API is installed."""
    return _otel() is not None


@functools.cache
def _placeholder_providers() -> tuple[type, ...]:
    """The tracer provider classes OpenTelemetry returns until a real provider (the SDK's) is set."""
    trace = _otel()[1]
    return trace.ProxyTracerProvider, trace.NoOpTracerProvider


_recording_since: Any = None
"""The OpenTelemetry API modules, once a real tracer provider was seen: OpenTelemetry sets the global provider
only once, so from then on every message is traced and the provider need not be looked up again."""
_looked_up = False
"""Whether the provider was looked up once through ``get_tracer_provider`` (which loads the one its environment
variable names, if any): from then on, while none is set, the global is read instead."""
_UNKNOWN = object()


def _recording() -> Any:
    """The OpenTelemetry API modules when a tracer provider is configured, else None: until an SDK provider
    is set, spans would be no-ops, and skipping them saves ~50 µs per message. Until then the provider is
    looked up at every call, so one set later (after the worker started) is picked up at the next message.

    The first lookup goes through ``get_tracer_provider`` (it loads the provider ``OTEL_PYTHON_TRACER_PROVIDER``
    names); later ones read the global it sets, where OpenTelemetry keeps it: ``get_tracer_provider`` reads the
    environment at each call while none is set (1–2 µs, a tenth of a message's dispatch)."""
    global _recording_since, _looked_up
    if _recording_since is not None:
        return _recording_since
    otel = _otel()
    if otel is None:
        return None
    trace = otel[1]
    provider = getattr(trace, "_TRACER_PROVIDER", _UNKNOWN) if _looked_up else _UNKNOWN
    if provider is None:
        return None
    if provider is _UNKNOWN:
        provider = trace.get_tracer_provider()
        _looked_up = True
    if isinstance(provider, _placeholder_providers()):
        return None
    _recording_since = otel
    return otel


def trace_attributes() -> dict[str, dict[str, str]]:
    """Message attributes carrying the current trace context (none without a current span, or without OTel)."""
    otel = _recording()
    if otel is None:
        return {}
    carrier: dict[str, str] = {}
    otel[0].inject(carrier)
    return {
        name: {"DataType": "String", "StringValue": value}
        for name, value in carrier.items()
        if name in TRACE_ATTRIBUTES and isinstance(value, str) and 0 < len(value) <= _MAX_VALUE
    }


def _name(arn_or_url: str | None) -> str:
    return (arn_or_url or "").rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]


@contextmanager
def producer_span(topic_arn: str, media_type: str) -> Iterator[Any]:
    """A PRODUCER span around a publish to ``topic_arn`` (None without OTel); messages created inside it
    carry it as their parent. Set ``messaging.message.id`` on it once known."""
    otel = _recording()
    if otel is None:
        yield None
        return
    trace = otel[1]
    topic = _name(topic_arn)
    attributes = {
        "messaging.system": "aws_sns",
        "messaging.operation.type": "send",
        "messaging.operation.name": "publish",
        "messaging.destination.name": topic,
        "microbus.media_type": media_type,
    }
    tracer = trace.get_tracer(TRACER_NAME)
    with tracer.start_as_current_span(f"send {topic}", kind=trace.SpanKind.PRODUCER, attributes=attributes) as span:
        yield span


_NO_SPAN: AbstractContextManager[None] = nullcontext()
"""The context manager of a message handled without tracing (stateless, shared: no generator per message)."""


def consumer_span(message: TracedMessage, *, queue_url: str | None, daemon: str) -> AbstractContextManager[Any]:
    """A CONSUMER span around handling ``message``, continuing the trace its attributes carry (None without
    OTel). Values from the wire are bounded; a malformed ``traceparent`` starts a new trace."""
    otel = _recording()
    if otel is None:
        return _NO_SPAN
    return _consumer_span(otel, message, queue_url=queue_url, daemon=daemon)


@contextmanager
def _consumer_span(otel: Any, message: TracedMessage, *, queue_url: str | None, daemon: str) -> Iterator[Any]:
    propagate, trace = otel
    carrier = {
        name: value
        for name in TRACE_ATTRIBUTES
        if (value := message.attribute(name)) is not None and len(value) <= _MAX_VALUE
    }
    queue = _name(queue_url) or "unknown"
    attributes: dict[str, Any] = {
        "messaging.system": "aws_sqs",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": queue,
        "messaging.message.id": message.message_id,
        "messaging.message.body.size": len(message.body),
        "messaging.consumer.group.name": daemon,
        "microbus.attempt": message.approximate_receive_count,
    }
    if message.cid is not None:
        attributes["messaging.message.conversation_id"] = message.cid[:_MAX_VALUE]
    if message.media_type is not None:
        attributes["microbus.media_type"] = message.media_type[:_MAX_VALUE]
    tracer = trace.get_tracer(TRACER_NAME)
    context = propagate.extract(carrier)
    with tracer.start_as_current_span(
        f"process {queue}", context=context, kind=trace.SpanKind.CONSUMER, attributes=attributes
    ) as span:
        yield span


def end_consumer_span(span: Any, *, outcome: str, error: BaseException | None, failed: bool) -> None:
    """Record a message's outcome on its span: ``microbus.outcome``, and the error when it failed."""
    if span is None:
        return
    span.set_attribute("microbus.outcome", outcome)
    if failed:
        trace = _otel()[1]
        if error is not None:
            span.record_exception(error)
        span.set_status(trace.Status(trace.StatusCode.ERROR, outcome))
