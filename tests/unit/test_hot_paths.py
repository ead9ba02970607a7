"""The per-message paths made cheap keep their behaviour: the outcome line, the message context, tracing."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from microbus.reference.schemas import OrderPlaced

from microbus import HandlerRegistry, SQSMessageDispatcher
from microbus.consume.dispatch import RECORD_FIELDS, log_result, runtime_error
from microbus.consume.lifecycle import EventKind, LifecycleEvent, Tracked
from microbus.consume.message import SQSMessage
from microbus.consume.records import RecordTemplate
from microbus.testing import StubQueue
from microbus.wire import tracecontext
from microbus.wire.context import (
    MessageContext,
    build_context,
    current_cid,
    current_message_context,
    message_context,
)


def received(body: dict[str, object]) -> SQSMessage:
    queue = StubQueue()
    queue.put(body)
    [message] = queue.consumer().consume()
    return message


def failing(content: object) -> None:
    raise ValueError("bad\nline")


def test_the_outcome_line_and_its_fields_name_everything_bounded(caplog):
    # Given a message with a long cid, handled by a failing handler
    message = received(
        {"mediaType": OrderPlaced.MEDIA_TYPE, "order_id": "o-1", "opaqueData": {"X-Microbus-Cid": "c" * 150}}
    )
    message.sns_message_id = "sns-1"
    dispatcher = SQSMessageDispatcher(handler_registry=HandlerRegistry({OrderPlaced.MEDIA_TYPE: failing}))
    result = dispatcher.handle(message)
    # When its outcome is logged
    with caplog.at_level(logging.INFO, logger="microbus.consume.dispatch"):
        log_result(result, message=message, daemon="d", queue="q")
    # Then the line names the daemon, queue, ids and the error, each bounded and on one line
    [record] = caplog.records
    cid = "c" * 100 + "… (150 chars)"
    assert record.getMessage() == (
        f"FAILED {OrderPlaced.MEDIA_TYPE} id={message.message_id!r} receive_count=1 elapsed={result.elapsed_s:.3f}s"
        f" daemon=d queue=q sns_message_id='sns-1' cid={cid!r} reason=handler-error error=ValueError: bad\\nline"
    )
    assert getattr(record, RECORD_FIELDS) == {
        "daemon": "d",
        "queue": "q",
        "media_type": OrderPlaced.MEDIA_TYPE,
        "message_id": message.message_id,
        "sns_message_id": "sns-1",
        "cid": cid,
        "attempt": 1,
        "outcome": "FAILED",
        "elapsed_s": round(result.elapsed_s, 6),
        "reason": "handler-error",
        "error": "ValueError: bad\\nline",
        "body": None,
    }
    assert record.exc_info is not None and record.exc_info[1] is result.error


def test_a_disabled_outcome_line_reads_nothing_of_the_message(caplog):
    class Untouchable(SQSMessage):
        @property
        def cid(self) -> str:
            raise AssertionError("the cid was computed for a line that is not logged")

    message = received({"mediaType": OrderPlaced.MEDIA_TYPE, "order_id": "o-1"})
    untouchable = Untouchable(message.consumer, message.message_id, message.receipt_handle, message.body)
    dispatcher = SQSMessageDispatcher(handler_registry=HandlerRegistry({OrderPlaced.MEDIA_TYPE: lambda c: None}))
    result = dispatcher.handle(message)
    with caplog.at_level(logging.WARNING, logger="microbus.consume.dispatch"):
        log_result(result, message=untouchable, daemon="d", queue="q")
    assert caplog.records == []


def test_the_message_context_is_restored_after_nested_blocks_and_errors():
    outer = build_context({"x-microbus-cid": "outer"}, fallback_cid="-")
    inner = build_context({}, fallback_cid="inner")
    with message_context(outer) as entered:
        assert entered is outer and current_cid() == "outer"
        with pytest.raises(RuntimeError), message_context(inner):
            assert current_cid() == "inner" and current_message_context() is inner
            raise RuntimeError
        assert current_cid() == "outer" and current_message_context() is outer
    assert current_cid() is None and current_message_context() is None


def test_the_folded_opaque_data_is_shared_and_the_public_one_is_a_copy():
    message = received({"mediaType": OrderPlaced.MEDIA_TYPE, "order_id": "o-1", "opaqueData": {"X-Request-Id": "r"}})
    assert message.folded_opaque_data() is message.folded_opaque_data()
    copy = message.opaque_data
    copy["x-request-id"] = "changed"
    assert message.opaque_data["X-Request-Id"] == "r"
    # a new opaqueData put into the content is read, not the old fold
    assert message.content is not None
    message.content["opaque_data"] = {"X-Request-Id": "new"}
    assert message.folded_opaque_data()["x-request-id"] == "new"


@pytest.fixture
def otel_trace() -> Iterator[object]:
    """OpenTelemetry's global provider unset for the test, and put back afterwards (it can be set only once)."""
    pytest.importorskip("opentelemetry.sdk", reason="needs microbus[otel]")
    from opentelemetry import trace
    from opentelemetry.util._once import Once

    saved = trace._TRACER_PROVIDER, trace._TRACER_PROVIDER_SET_ONCE, tracecontext._recording_since
    trace._TRACER_PROVIDER, trace._TRACER_PROVIDER_SET_ONCE = None, Once()
    tracecontext._recording_since = None
    try:
        yield trace
    finally:
        trace._TRACER_PROVIDER, trace._TRACER_PROVIDER_SET_ONCE, tracecontext._recording_since = saved


def test_a_tracer_provider_set_after_the_first_messages_is_picked_up_and_then_not_looked_up_again(
    otel_trace, monkeypatch
):
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    trace = otel_trace
    message = received({"mediaType": OrderPlaced.MEDIA_TYPE, "order_id": "o-1"})
    dispatcher = SQSMessageDispatcher(handler_registry=HandlerRegistry({OrderPlaced.MEDIA_TYPE: lambda c: None}))
    # Given no provider: no span
    with tracecontext.consumer_span(message, queue_url="stub://queue", daemon="d") as span:
        assert span is None
    dispatcher.handle(message)
    # When a provider is set while the daemon runs
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    try:
        # Then the next message has its span
        dispatcher.handle(message)
        assert [span.name for span in exporter.get_finished_spans()] == ["process queue"]
        # And from then on the provider is not looked up per message
        lookups: list[int] = []
        real = trace.get_tracer_provider
        monkeypatch.setattr(trace, "get_tracer_provider", lambda: lookups.append(1) or real())
        assert tracecontext._recording() is not None
        assert lookups == []
        dispatcher.handle(message)
        assert len(exporter.get_finished_spans()) == 2
    finally:
        provider.shutdown()


@pytest.mark.parametrize("kind", list(EventKind))
def test_a_message_s_event_is_the_same_immutable_event_as_one_built_by_its_constructor(kind):
    message = received({"mediaType": OrderPlaced.MEDIA_TYPE, "order_id": "o-1"})
    tracked = Tracked(message)
    result = runtime_error(message, RuntimeError("x"))
    event = tracked.event(kind, "stub://queue", outcome=result.outcome, result=result, detail="why")
    expected = LifecycleEvent(
        kind=kind,
        queue_url="stub://queue",
        at=event.at,
        elapsed_s=event.at - tracked.received_at,
        message_id=message.message_id,
        media_type=OrderPlaced.MEDIA_TYPE,
        receive_count=1,
        outcome=result.outcome,
        result=result,
        detail="why",
        message=message,
    )
    assert event == expected
    names = [f.name for f in dataclasses.fields(LifecycleEvent)]
    assert [getattr(event, name) for name in names] == [getattr(expected, name) for name in names]
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.detail = "changed"  # type: ignore[misc]


def test_an_outcome_record_has_the_attributes_makerecord_gives_it(monkeypatch):
    # Given the clock stopped, so that the two records are made at the same instant
    monkeypatch.setattr(time, "time", lambda: 1_700_000_000.999_5)
    monkeypatch.setattr(time, "time_ns", lambda: 1_700_000_000_999_500_000)
    logger = logging.getLogger("microbus.test.records")
    template = RecordTemplate(logger, level=logging.WARNING, pathname=__file__, func="f", msg="%s and %r")
    exc_info = (ValueError, ValueError("x"), None)
    # When a record is made from the template and one by makeRecord
    made = template.record(("a", "b"), exc_info, {"microbus": {"outcome": "FAILED"}})
    expected = logger.makeRecord(
        logger.name,
        logging.WARNING,
        __file__,
        0,
        "%s and %r",
        ("a", "b"),
        exc_info,
        "f",
        {"microbus": {"outcome": "FAILED"}},
    )
    # Then they are alike: same class, same attributes in the same order, same values
    assert type(made) is type(expected) is logging.LogRecord
    assert list(vars(made)) == list(vars(expected))
    assert vars(made) == vars(expected)
    assert made.getMessage() == "a and 'b'"


def test_an_outcome_record_is_timed_now_and_names_the_thread_it_is_made_in():
    logger = logging.getLogger("microbus.test.records")
    template = RecordTemplate(logger, level=logging.INFO, pathname=__file__, func="f", msg="m")
    made: list[logging.LogRecord] = []
    thread = threading.Thread(target=lambda: made.append(template.record((), None, {})), name="records-thread")
    before = time.time()
    thread.start()
    thread.join()
    after = time.time()
    [record] = made
    expected = logger.makeRecord(logger.name, logging.INFO, __file__, 0, "m", (), None, "f")
    assert before <= record.created <= after
    assert record.msecs == int((record.created - int(record.created)) * 1000)
    assert abs(record.relativeCreated - expected.relativeCreated) < (expected.created - before + 1) * 1000
    assert record.threadName == "records-thread" and record.thread == thread.ident
    assert (record.process, record.processName) == (expected.process, expected.processName)


@pytest.mark.skipif(sys.version_info < (3, 12), reason="records name their asyncio task from Python 3.12")
def test_an_outcome_record_made_in_an_asyncio_task_names_the_task():
    logger = logging.getLogger("microbus.test.records")
    template = RecordTemplate(logger, level=logging.INFO, pathname=__file__, func="f", msg="m")

    async def in_task() -> tuple[object, object]:
        return template.record((), None, {}).taskName, logger.makeRecord("n", 20, "p", 0, "m", (), None).taskName

    made, expected = asyncio.run(in_task())
    assert made == expected and isinstance(made, str)
    assert template.record((), None, {}).taskName is None


def test_a_custom_log_record_factory_makes_the_outcome_records(caplog):
    # Given a record factory that marks its records
    standard = logging.getLogRecordFactory()

    def factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = standard(*args, **kwargs)
        record.marked = True
        return record

    message = received({"mediaType": OrderPlaced.MEDIA_TYPE, "order_id": "o-1"})
    dispatcher = SQSMessageDispatcher(handler_registry=HandlerRegistry({OrderPlaced.MEDIA_TYPE: lambda c: None}))
    result = dispatcher.handle(message)
    logging.setLogRecordFactory(factory)
    try:
        # When an outcome is logged
        with caplog.at_level(logging.INFO, logger="microbus.consume.dispatch"):
            log_result(result, message=message, daemon="d", queue="q")
    finally:
        logging.setLogRecordFactory(standard)
    # Then the factory made its record, with the outcome's fields
    [record] = caplog.records
    assert record.marked is True
    assert getattr(record, RECORD_FIELDS)["outcome"] == "SUCCEEDED"
    assert record.funcName == "log_result" and record.module == "dispatch"


def test_a_logger_class_s_own_makerecord_makes_the_records():
    class Marking(logging.Logger):
        def makeRecord(self, *args: Any, **kwargs: Any) -> logging.LogRecord:  # noqa: N802 - logging's name
            record = super().makeRecord(*args, **kwargs)
            record.marked = True
            return record

    template = RecordTemplate(Marking("marking"), level=logging.INFO, pathname=__file__, func="f", msg="m")
    record = template.record(("a",), None, {"microbus": {}})
    assert record.marked is True and record.args == ("a",) and record.microbus == {}


def test_without_a_tracer_provider_the_provider_is_not_looked_up_per_message(otel_trace, monkeypatch):
    trace = otel_trace
    message = received({"mediaType": OrderPlaced.MEDIA_TYPE, "order_id": "o-1"})
    assert tracecontext._recording() is None
    # When messages are handled while no provider is set
    lookups: list[int] = []
    real = trace.get_tracer_provider
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: lookups.append(1) or real())
    dispatcher = SQSMessageDispatcher(handler_registry=HandlerRegistry({OrderPlaced.MEDIA_TYPE: lambda c: None}))
    dispatcher.handle(message)
    dispatcher.handle(message)
    # Then neither the provider nor the environment is looked up (get_tracer_provider reads the environment)
    assert lookups == []
    assert tracecontext._recording() is None


@pytest.mark.parametrize(
    "text",
    [
        '{"mediaType": "a/b", "n": 1.5, "s": "\\u00e9\\ud800", "l": [true, null]}',
        ' {"a": 1}',
        '{"a": 1}\n',
        '{"a": 1}{"b": 2}',
        '{"a": 1} x',
        "{",
        '{"a": NaN, "b": -Infinity}',
        "[1]",
        '"text"',
        "",
        "{}",
        "{" * 100_000,
        '{"a": "' + "\x00" + '"}',
    ],
)
def test_a_body_is_parsed_as_json_loads_parses_it(text):
    from microbus.errors import MalformedBodyError
    from microbus.wire.codecs import _loads, parse_json_object

    try:
        expected: object = json.loads(text)
    except (ValueError, RecursionError) as exc:
        expected = type(exc)
    try:
        parsed: object = _loads(text)
    except (ValueError, RecursionError) as exc:
        parsed = type(exc)
    assert parsed == expected
    if not isinstance(expected, dict):
        with pytest.raises(MalformedBodyError):
            parse_json_object(text)


def test_the_contexts_and_envelopes_built_per_message_equal_the_ones_their_constructors_build():
    from microbus.wire.envelope import Unwrapped, unwrap

    context = build_context({"X-Request-Id": "r", "x-request-ttl": "oops", 3: "x"}, fallback_cid="c")
    assert context == MessageContext(
        cid="c",
        forwarded={"x-request-id": "r", "x-microbus-cid": "c", "x-request-ttl": "31"},
        ttl=31,
        skipped=(),
        malformed_ttl="'oops'",
    )
    assert list(vars(context)) == [field.name for field in dataclasses.fields(MessageContext)]
    raw = unwrap('{"mediaType": "a/b"}')
    assert raw == Unwrapped({"mediaType": "a/b"})
    envelope = {
        "Type": "Notification",
        "TopicArn": "arn:t",
        "MessageId": "sns-1",
        "Message": '{"mediaType": "a/b"}',
        "Timestamp": "2024-01-01T00:00:00.000Z",
        "MessageAttributes": {"k": {"Type": "String", "Value": "v"}},
    }
    enveloped = unwrap(json.dumps(envelope))
    assert enveloped == Unwrapped({"mediaType": "a/b"}, "arn:t", "sns-1", 1704067200.0, {"k": "v"})
    for value in (context, raw, enveloped):
        with pytest.raises(dataclasses.FrozenInstanceError):
            value.cid = "changed"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("text", "ttl"),
    [
        ("31", 31),
        ("0", 0),
        ("1" * 18, int("1" * 18)),
        ("1" * 19, None),
        ("\u0663\u0661", 31),  # Arabic-Indic digits: \d and int() take them
        ("\u00b2", None),  # a superscript two is a digit, not a decimal: \d and int() refuse it
        (" +5 ", 5),
        ("-3", -3),
        ("", None),
        ("3.0", None),
    ],
)
def test_a_ttl_is_read_as_the_pattern_reads_it(text, ttl):
    from microbus.wire.context import parse_ttl

    assert parse_ttl(text) == ttl
