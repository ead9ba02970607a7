"""An idempotent target's response survives a failed report: the COMPLETED record keeps it (bounded), and a
duplicate delivery reports it instead of ``ok: true, response: None``."""

from __future__ import annotations

import asyncio
import json

import pytest

from microbus.consume.dispatch import Outcome, RetryPolicy, SQSMessageDispatcher
from microbus.consume.handlers import HandlerRegistry
from microbus.consume.message import SQSMessage
from microbus.errors import SkipMessage, TransportError
from microbus.patterns.idempotency import (
    IDEMPOTENT_RESPONSE,
    IdempotencyGuard,
    MemoryIdempotencyStore,
    StoredResponse,
)
from microbus.patterns.parallel import ParallelRequest
from microbus.patterns.reporter import ParallelReporter
from microbus.wire.schemas import SchemaRegistry

REPLY_TO = "http://127.0.0.1:1/123456789012/callbacks"
MEDIA_TYPE = "application/vnd.test.idem.response"


class FlakySQS:
    """Refuses the first ``failures`` sends, then records them."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.sent: list[dict] = []

    def send_message(self, **kwargs):
        if self.failures:
            self.failures -= 1
            raise TransportError("SQS queue is down")
        self.sent.append(kwargs)
        return {"MessageId": f"sent-{len(self.sent)}"}

    def reports(self) -> list[dict]:
        return [json.loads(kwargs["MessageBody"]) for kwargs in self.sent]


def message(receive_count: int = 1) -> SQSMessage:
    request = ParallelRequest(
        cid="cid-1", source="orders", target="quote", req_ts_utc="2026-01-01T00:00:00.000+00:00",
        reply_to=REPLY_TO, on_target=("cb",),
    )  # fmt: skip
    opaque = {**request.to_opaque(), "x-microbus-message-id": "m-1"}
    body = {"mediaType": MEDIA_TYPE, "opaqueData": opaque}
    return SQSMessage(
        consumer=None,
        message_id=f"sqs-{receive_count}",
        receipt_handle="r",
        body=json.dumps(body),
        media_type=MEDIA_TYPE,
        content={"media_type": MEDIA_TYPE, "opaque_data": opaque},
        approximate_receive_count=receive_count,
    )


def dispatcher(handler, sqs, store, *, max_response_bytes: int = 65_536) -> SQSMessageDispatcher:
    reporter = ParallelReporter(sqs_client=sqs, schema_registry=SchemaRegistry(), allowed_reply_queues=[REPLY_TO])
    guard = IdempotencyGuard(store=store, lease_s=60, max_response_bytes=max_response_bytes)
    return SQSMessageDispatcher(
        handler_registry=HandlerRegistry({MEDIA_TYPE: handler}, idempotent=[MEDIA_TYPE]),
        retry_policy=RetryPolicy(max_attempts=5, jitter=False),
        middleware=[reporter, guard],
    )


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_report_that_failed_once_is_sent_with_the_stored_response_on_the_retry(kind):
    # Given an idempotent target whose first report send fails
    calls = []

    def handler(content):
        calls.append(1)
        return {"price": 104}

    async def async_handler(content):
        await asyncio.sleep(0)
        return handler(content)

    sqs, store = FlakySQS(failures=1), MemoryIdempotencyStore()
    d = dispatcher(handler if kind == "sync" else async_handler, sqs, store)
    handle = d.handle if kind == "sync" else (lambda m: asyncio.run(d.handle_async(m)))
    # When it is delivered, and delivered again after the failed report
    first = handle(message(1))
    second = handle(message(2))
    # Then the handler ran once, the retry was a duplicate, and its report carries the response
    assert first.outcome is Outcome.FAILED and first.reason == "callback-send-failed"
    assert second.outcome is Outcome.SKIPPED and second.reason == "duplicate"
    assert second.response == {"price": 104}
    assert calls == [1]
    (report,) = sqs.reports()
    assert (report["ok"], report["response"], report["exception"]) == (True, {"price": 104}, None)


def test_the_duplicate_carries_the_stored_response_in_the_skip():
    store = MemoryIdempotencyStore()
    guard = IdempotencyGuard(store=store, lease_s=60)
    assert guard.run("k", lambda: {"a": [1, 2]}) == {"a": [1, 2]}
    with pytest.raises(SkipMessage) as caught:
        guard.run("k", lambda: pytest.fail("must not run"))
    stored = caught.value.extra[IDEMPOTENT_RESPONSE]
    assert isinstance(stored, StoredResponse) and stored.problem is None and stored.value == {"a": [1, 2]}


def test_a_none_response_is_stored_as_null_not_as_missing():
    guard = IdempotencyGuard(store=MemoryIdempotencyStore(), lease_s=60)
    guard.run("k", lambda: None)
    with pytest.raises(SkipMessage) as caught:
        guard.run("k", lambda: None)
    stored = caught.value.extra[IDEMPOTENT_RESPONSE]
    assert stored.problem is None and stored.value is None


def test_a_response_too_large_to_store_is_reported_as_a_clear_failure_on_the_duplicate():
    # Given a target whose response is over the guard's limit and whose first report failed
    sqs = FlakySQS(failures=1)
    d = dispatcher(lambda content: "x" * 2_000, sqs, MemoryIdempotencyStore(), max_response_bytes=1_000)
    d.handle(message(1))
    # When the duplicate is handled
    second = d.handle(message(2))
    # Then it is acked, and the report says the response was too large to keep (not ok true with None)
    assert second.outcome is Outcome.SKIPPED
    (report,) = sqs.reports()
    assert report["ok"] is False and report["response"] is None
    assert report["exception"].startswith("ResponseTooLargeError: The response of target 'quote'")
    assert "2002 bytes" in report["exception"] and "1000" in report["exception"]


def test_a_response_that_is_not_json_is_marked_not_stored():
    guard = IdempotencyGuard(store=MemoryIdempotencyStore(), lease_s=60)
    guard.run("k", lambda: {"when": object()})
    with pytest.raises(SkipMessage) as caught:
        guard.run("k", lambda: None)
    stored = caught.value.extra[IDEMPOTENT_RESPONSE]
    assert stored.value is None and "not JSON" in stored.problem
