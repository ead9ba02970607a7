"""OpenTelemetry: one trace from the producer through SNS and SQS to the handler, on the emulator.

The SDK's in-memory exporter records the spans. The global tracer provider can be set only once per process,
so the fixture puts OpenTelemetry's globals back afterwards (private names, as OpenTelemetry's own test
utilities do), and microbus's memory of a provider seen: other tests then see no provider, as without tracing.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk", reason="needs microbus[otel]")

from microbus.reference.schemas import OrderPlaced  # noqa: E402
from microcosm.api import create_object_graph, load_from_dict  # noqa: E402
from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from opentelemetry.util._once import Once  # noqa: E402

from microbus import HandlerRegistry, Outcome, SQSMessageDispatcher, Worker  # noqa: E402
from microbus.testing import wait_for  # noqa: E402
from microbus.wire import tracecontext  # noqa: E402

pytestmark = pytest.mark.integration


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    saved = trace._TRACER_PROVIDER, trace._TRACER_PROVIDER_SET_ONCE
    trace._TRACER_PROVIDER, trace._TRACER_PROVIDER_SET_ONCE = None, Once()
    trace.set_tracer_provider(provider)
    try:
        yield exporter
    finally:
        trace._TRACER_PROVIDER, trace._TRACER_PROVIDER_SET_ONCE = saved
        tracecontext._recording_since = None  # microbus remembers a provider once seen: forget it too
        provider.shutdown()


def run_one(queue: Any, handler: Any) -> Worker:
    graph = create_object_graph("trace-test", testing=True, loader=load_from_dict(queue.graph_config()))
    graph.use("microbus_sns_producer", "microbus_sqs_consumer")
    dispatcher = SQSMessageDispatcher(handler_registry=HandlerRegistry({OrderPlaced.MEDIA_TYPE: handler}))
    worker = Worker(consumer=graph.microbus_sqs_consumer, dispatcher=dispatcher)
    worker.start()
    graph.microbus_sns_producer.produce(OrderPlaced.MEDIA_TYPE, order_id="o-1")
    return worker


@pytest.mark.parametrize("raw", [False, True], ids=["enveloped", "raw"])
def test_one_trace_runs_from_the_producer_through_sns_and_sqs_to_the_handler(make_queue, spans, raw):
    # Given a queue subscribed to a topic, and a handler that opens a span of its own
    queue = make_queue(raw=raw)
    tracer = trace.get_tracer("test")
    seen: list[Any] = []

    def handler(content: dict[str, Any]) -> None:
        with tracer.start_as_current_span("inside the handler"):
            seen.append(trace.get_current_span().get_span_context())

    # When a message is produced and handled
    worker = run_one(queue, handler)
    try:
        wait_for(lambda: worker.stats.outcomes[Outcome.SUCCEEDED.label] == 1, timeout_s=20, what="handled")
    finally:
        worker.stop()
        worker.join()
    # Then the producer's span, the consumer's span and the handler's span are one trace, parent to child
    by_name = {span.name: span for span in spans.get_finished_spans()}
    topic = queue.topic_arn.rsplit(":", 1)[-1]
    queue_name = queue.queue_url.rsplit("/", 1)[-1]
    send, process, inside = by_name[f"send {topic}"], by_name[f"process {queue_name}"], by_name["inside the handler"]
    assert send.kind is trace.SpanKind.PRODUCER and process.kind is trace.SpanKind.CONSUMER
    assert len({send.context.trace_id, process.context.trace_id, inside.context.trace_id}) == 1
    assert process.parent.span_id == send.context.span_id
    assert inside.parent.span_id == process.context.span_id
    assert seen[0].trace_id == send.context.trace_id
    # and the spans carry the messaging semantic-convention attributes
    assert send.attributes["messaging.system"] == "aws_sns"
    assert send.attributes["messaging.destination.name"] == topic
    assert send.attributes["messaging.operation.type"] == "send"
    assert send.attributes["messaging.message.id"]
    assert process.attributes["messaging.system"] == "aws_sqs"
    assert process.attributes["messaging.destination.name"] == queue_name
    assert process.attributes["messaging.operation.type"] == "process"
    assert process.attributes["messaging.message.id"]
    assert process.attributes["microbus.media_type"] == OrderPlaced.MEDIA_TYPE
    assert process.attributes["microbus.outcome"] == "SUCCEEDED"


def test_a_failing_handler_marks_its_span_as_an_error_with_the_exception(microbus_queue, spans):
    def handler(content: dict[str, Any]) -> None:
        raise RuntimeError("boom")

    worker = run_one(microbus_queue, handler)
    try:
        wait_for(lambda: worker.stats.outcomes[Outcome.FAILED.label] >= 1, timeout_s=20, what="failed")
    finally:
        worker.stop()
        worker.join()
    process = next(span for span in spans.get_finished_spans() if span.name.startswith("process "))
    assert process.status.status_code is trace.StatusCode.ERROR
    assert process.attributes["microbus.outcome"] == "FAILED"
    assert any(
        event.name == "exception" and "boom" in event.attributes["exception.message"] for event in process.events
    )
