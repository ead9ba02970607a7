"""The COMPLETED record in DynamoDB keeps the handler's response (bounded), so that a duplicate delivery can
report it: against the emulator's DynamoDB and SQS."""

from __future__ import annotations

import json
import time

import pytest

from microbus.consume.dispatch import Outcome, RetryPolicy, SQSMessageDispatcher
from microbus.consume.handlers import HandlerRegistry
from microbus.consume.message import SQSMessage
from microbus.errors import SkipMessage, TransportError
from microbus.patterns.idempotency import (
    COMPLETED,
    IDEMPOTENT_RESPONSE,
    DynamoDBIdempotencyStore,
    IdempotencyGuard,
    StoredResponse,
)
from microbus.patterns.parallel import ParallelRequest
from microbus.patterns.reporter import ParallelReporter
from microbus.wire.schemas import SchemaRegistry

pytestmark = pytest.mark.integration

MEDIA_TYPE = "application/vnd.test.idem.response.integration"


@pytest.fixture
def store(microbus_endpoint, make_table):
    client = microbus_endpoint.settings().client("dynamodb")
    return DynamoDBIdempotencyStore(client=client, table_name=make_table("idem"))


def test_the_completed_record_keeps_the_response_and_the_claim_returns_it(store):
    assert store.claim("k", token="a", now=time.time(), lease_s=60) is None
    store.complete("k", token="a", now=time.time(), response=StoredResponse(json='{"price": 104}'))
    record = store.claim("k", token="b", now=time.time(), lease_s=60)
    assert record.status == COMPLETED
    assert record.response == StoredResponse(json='{"price": 104}')


def test_a_too_large_response_is_stored_as_a_marker(store):
    guard = IdempotencyGuard(store=store, lease_s=60, max_response_bytes=1_000)
    guard.run("big", lambda: "x" * 5_000)
    with pytest.raises(SkipMessage) as caught:
        guard.run("big", lambda: pytest.fail("must not run"))
    stored = caught.value.extra[IDEMPOTENT_RESPONSE]
    assert stored.json is None and "5002 bytes" in stored.problem


class FailingOnce:
    """A real SQS client whose first send_message fails (the report is lost once)."""

    def __init__(self, client) -> None:
        self.client = client
        self.failed = False

    def send_message(self, **kwargs):
        if not self.failed:
            self.failed = True
            raise TransportError("SQS queue is down")
        return self.client.send_message(**kwargs)


def test_a_lost_report_of_an_idempotent_target_is_sent_again_with_its_response(store, make_queue):
    # Given an idempotent target reporting to a real callback queue, whose first report is lost
    callbacks = make_queue(max_receive_count=None)
    reporter = ParallelReporter(
        sqs_client=FailingOnce(callbacks.sqs),
        schema_registry=SchemaRegistry(),
        allowed_reply_queues=[callbacks.queue_url],
    )
    calls = []

    def handler(content):
        calls.append(1)
        return {"price": 104}

    dispatcher = SQSMessageDispatcher(
        handler_registry=HandlerRegistry({MEDIA_TYPE: handler}, idempotent=[MEDIA_TYPE]),
        retry_policy=RetryPolicy(jitter=False),
        middleware=[reporter, IdempotencyGuard(store=store, lease_s=60)],
    )
    request = ParallelRequest(
        cid="cid-1", source="buyer", target="quote", req_ts_utc="2026-01-01T00:00:00.000+00:00",
        reply_to=callbacks.queue_url, on_target=("cb",),
    )  # fmt: skip
    opaque = {**request.to_opaque(), "x-microbus-message-id": "m-1"}

    def delivery(n: int) -> SQSMessage:
        return SQSMessage(
            consumer=None,
            message_id=f"sqs-{n}",
            receipt_handle="r",
            body=json.dumps({"mediaType": MEDIA_TYPE, "opaqueData": opaque}),
            approximate_receive_count=n,
            media_type=MEDIA_TYPE,
            content={"media_type": MEDIA_TYPE, "opaque_data": opaque},
        )

    # When it is delivered, the report fails, and it is delivered again
    assert dispatcher.handle(delivery(1)).reason == "callback-send-failed"
    second = dispatcher.handle(delivery(2))
    # Then the handler ran once and the callback queue got the response
    assert second.outcome is Outcome.SKIPPED and calls == [1]
    received = callbacks.sqs.receive_message(QueueUrl=callbacks.queue_url, WaitTimeSeconds=1)["Messages"]
    (report,) = [json.loads(m["Body"]) for m in received]
    assert (report["ok"], report["response"]) == (True, {"price": 104})
