"""Wire input is untrusted: attributes written from message content are sanitised, log lines and error
messages are bounded, and reprs show ids and sizes, never bodies, content or receipt handles."""

from __future__ import annotations

import json
import logging
import re

import pytest
from botocore.exceptions import ClientError
from microbus.reference.schemas import OrderPlaced

from microbus import Outcome, Worker
from microbus.consume.consumer import dead_letter_attributes
from microbus.consume.dispatch import Result, SQSMessageDispatcher, log_result
from microbus.consume.handlers import HandlerRegistry
from microbus.consume.message import SQSMessage, decode_raw_message
from microbus.errors import NoHandlerError, TransportError, UnknownMediaTypeError
from microbus.testing import StubQueue, wait_for
from microbus.wire.sanitize import attribute_text, log_repr, log_text, xml_text
from microbus.wire.schemas import SchemaRegistry
from microbus.wire.transport import OutgoingMessage, translate_errors

pytestmark = pytest.mark.timeout(60)

HUGE = "application/vnd.huge." + "a" * (250 * 1024)
_XML_CHAR = re.compile("^[\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]*$")


def _is_xml(text: str) -> bool:
    return _XML_CHAR.match(text) is not None


# Sanitising attribute text


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("application/vnd.x.\udcff\ud800", "application/vnd.x.\\udcff\\ud800"),
        ("a\x00b\x08c\x0bd\x1fe", "a\\u0000b\\u0008c\\u000bd\\u001fe"),
        ("tab\tnl\ncr\r", "tab\tnl\ncr\r"),
        ("\ufffe\uffff\ufffd", "\\ufffe\\uffff\ufffd"),
        ("é😀\ue000", "é😀\ue000"),
        ("", ""),
    ],
)
def test_attribute_text_keeps_valid_xml_characters_and_escapes_the_others(value, expected):
    assert xml_text(value) == expected
    assert attribute_text(value) == expected


@pytest.mark.parametrize("value", [HUGE, "é" * 5000, "😀" * 5000, "\udcff" * 5000, "a" * 1025])
def test_attribute_text_is_bounded_in_characters_and_bytes_and_names_the_original_length(value):
    text = attribute_text(value)
    assert len(text) <= 1024 and len(text.encode("utf-8")) <= 1024
    assert _is_xml(text)
    assert text.endswith(f"… ({len(value)} chars)")


def test_attribute_text_of_exactly_the_limit_is_kept_whole():
    assert attribute_text("a" * 1024) == "a" * 1024


def message(body: str = "{}", *, media_type: str | None = None, **kwargs) -> SQSMessage:
    return SQSMessage(
        consumer=None, message_id="m-1", receipt_handle="SECRET-RECEIPT", body=body, media_type=media_type, **kwargs
    )


@pytest.mark.parametrize("media_type", [HUGE, "application/vnd.x.\udcff\ud800", "application/\x01\x02"])
def test_dead_letter_attributes_written_from_message_content_are_sanitised_and_bounded(media_type):
    # Given a message whose media type (and hence the error's text) SQS would refuse in an attribute
    error = UnknownMediaTypeError(f"No schema is registered for media type {media_type}")
    # When its dead-letter attributes are built
    attributes = dead_letter_attributes(message(media_type=media_type), "unknown-media-type", error, "daemon\x00")
    # Then every text is valid XML and at most 1 KiB, and all of them together stay far below SQS's limits
    assert len(attributes) <= 10
    for value in attributes.values():
        assert _is_xml(value["StringValue"]) and len(value["StringValue"].encode("utf-8")) <= 1024
    assert sum(len(k) + len(v["StringValue"].encode()) + len(v["DataType"]) for k, v in attributes.items()) < 10_000
    assert attributes["media_type"]["StringValue"] == attribute_text(media_type)
    assert attributes["microbus.reason"]["StringValue"] == "unknown-media-type"


# Bounded log lines and error messages


def test_log_text_and_repr_bound_a_value_and_give_its_length():
    assert log_text("short") == "short"
    assert log_repr("short") == "'short'"
    assert log_text(HUGE) == HUGE[:200] + f"… ({len(HUGE)} chars)"
    assert log_repr(HUGE) == repr(HUGE[:200] + "…") + f" ({len(HUGE)} chars)"
    assert log_text("line\nforged WARNING") == "line\\nforged WARNING"
    assert "\udcff" not in log_text("x\udcff")


def test_unknown_media_type_and_no_handler_errors_are_bounded():
    with pytest.raises(UnknownMediaTypeError) as unknown:
        SchemaRegistry({}).find(HUGE)
    assert len(str(unknown.value)) < 400 and f"({len(HUGE)} chars)" in str(unknown.value)
    dispatcher = SQSMessageDispatcher(handler_registry=HandlerRegistry({}))
    result = dispatcher.handle(message(media_type=HUGE, content={}))
    assert isinstance(result.error, NoHandlerError)
    assert len(str(result.error)) < 400 and f"({len(HUGE)} chars)" in str(result.error)


def test_the_outcome_line_bounds_media_type_reason_and_error(caplog):
    result = Result(
        Outcome.SKIPPED,
        media_type=HUGE,
        message_id="m-1",
        receive_count=1,
        reason="r" * 100_000,
        error=RuntimeError("e" * 100_000),
    )
    caplog.set_level(logging.DEBUG, logger="microbus")
    log_result(result)
    (record,) = caplog.records
    line = record.getMessage()
    assert len(line) < 1_000
    assert f"({len(HUGE)} chars)" in line and "(100000 chars)" in line


def test_the_outcome_line_bounds_the_message_id_too(caplog):
    # An SQS id is at most 100 characters; one from elsewhere (a stub, a relayed record) may not be
    result = Result(Outcome.SUCCEEDED, media_type="application/x", message_id="m" * 50_000, receive_count=1)
    caplog.set_level(logging.DEBUG, logger="microbus")
    log_result(result)
    (record,) = caplog.records
    assert len(record.getMessage()) < 400 and "(50000 chars)" in record.getMessage()
    assert record.microbus["message_id"].endswith("(50000 chars)")
    caplog.clear()
    log_result(Result(Outcome.SUCCEEDED, media_type="application/x", message_id="m-1", receive_count=1))
    assert "id='m-1'" in caplog.records[0].getMessage()


def test_a_worker_over_a_huge_unknown_media_type_logs_no_line_longer_than_1000_characters(caplog):
    # Given a queue holding a message with a 250 KiB unknown media type, beside a good one
    queue = StubQueue()
    queue.put(json.dumps({"mediaType": HUGE, "order_id": "x"}))
    queue.put({"mediaType": OrderPlaced.MEDIA_TYPE, "order_id": "o-1"})
    handled = []
    dispatcher = SQSMessageDispatcher(
        handler_registry=HandlerRegistry({OrderPlaced.MEDIA_TYPE: lambda content: handled.append(content)})
    )
    worker = Worker(consumer=queue.consumer(SchemaRegistry()), dispatcher=dispatcher)
    caplog.set_level(logging.DEBUG, logger="microbus")
    # When a worker handles them
    worker.start()
    try:
        wait_for(lambda: queue.depth == 0 and len(queue.dead_letters) == 1, timeout_s=20, what="the queue to drain")
    finally:
        worker.stop()
        worker.join()
    # Then no log line carries the media type whole, and the rejection names its length
    assert len(handled) == 1
    assert max(len(record.getMessage()) for record in caplog.records) < 1_000
    assert any(f"({len(HUGE)} chars)" in record.getMessage() for record in caplog.records)
    (_, attributes) = queue.dead_letters[0]
    assert attributes["media_type"]["StringValue"] == attribute_text(HUGE)


def _client_error(code: str, message: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}}, "SendMessage"
    )


@pytest.mark.parametrize(("code", "status"), [("404", 404), ("InternalError", 500), ("InvalidParameterValue", 400)])
def test_transport_error_text_is_bounded_and_on_one_line(code, status):
    page = "<!doctype html>\n<html>\n  <body>\n" + "<p>this is not AWS</p>\n" * 5000 + "</body></html>"
    with pytest.raises(TransportError) as raised:
        with translate_errors("SQS queue http://127.0.0.1:1/q"):
            raise _client_error(code, page, status)
    text = str(raised.value)
    assert len(text) < 400 and "\n" not in text and "  " not in text
    assert f"({len(page)} chars)" in text


# Reprs: ids and sizes, never bodies, content or receipt handles


def test_sqs_message_repr_shows_ids_and_sizes_only():
    raw = {
        "MessageId": "m-1",
        "ReceiptHandle": "SECRET-RECEIPT",
        "Body": json.dumps({"mediaType": OrderPlaced.MEDIA_TYPE, "order_id": "PAYLOAD-VALUE"}),
        "MessageAttributes": {"x": {"DataType": "String", "StringValue": "ATTRIBUTE-VALUE"}},
    }
    decoded = decode_raw_message(raw, schema_registry=SchemaRegistry())
    assert decoded.content is not None
    text = repr(decoded)
    assert "m-1" in text and str(len(raw["Body"])) in text
    for secret in ("SECRET-RECEIPT", "PAYLOAD-VALUE", "ATTRIBUTE-VALUE", "order_id"):
        assert secret not in text
    assert len(repr(message(HUGE, media_type=HUGE))) < 1_000


def test_result_repr_shows_neither_the_response_nor_wire_values_whole():
    result = Result(Outcome.SUCCEEDED, HUGE, "m-1", 1, response={"card": "RESPONSE-VALUE"}, extra={"k": "EXTRA-VALUE"})
    text = repr(result)
    assert "m-1" in text and "SUCCEEDED" in text
    assert "RESPONSE-VALUE" not in text and "EXTRA-VALUE" not in text
    assert len(text) < 1_000


def test_outgoing_message_repr_is_bounded_and_shows_no_body_or_receipt_handle():
    outgoing = OutgoingMessage(
        key="SECRET-RECEIPT",
        body="PAYLOAD" * 50_000,
        attributes={"media_type": {"DataType": "String", "StringValue": "ATTRIBUTE-VALUE"}},
    )
    text = repr(outgoing)
    assert "PAYLOAD" not in text and "SECRET-RECEIPT" not in text and "ATTRIBUTE-VALUE" not in text
    assert "350000" in text and "media_type" in text and len(text) < 500
