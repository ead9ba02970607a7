"""Idempotency: the decision (pure), the guard over the in-memory store, and the dispatcher with the stub queue."""

from __future__ import annotations

import asyncio
import json

import pytest
from microbus.reference.schemas import OrderPlaced

from microbus import Outcome, Worker
from microbus.consume.dispatch import SQSMessageDispatcher
from microbus.consume.handlers import HandlerRegistry
from microbus.errors import ConfigurationError, Nack, SkipMessage, TransientTransportError
from microbus.patterns.idempotency import (
    COMPLETED,
    IN_PROGRESS,
    Decision,
    IdempotencyGuard,
    MemoryIdempotencyStore,
    Record,
    decide,
)
from microbus.testing import StubQueue, wait_for

ORDER = {"mediaType": OrderPlaced.MEDIA_TYPE, "order_id": "o-1"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    "record, decision",
    [
        (None, Decision.PROCEED),
        (Record(COMPLETED, "t", 0.0), Decision.DUPLICATE),
        (Record(IN_PROGRESS, "t", 1001.0), Decision.BUSY),
        (Record(IN_PROGRESS, "t", 999.0), Decision.PROCEED),
    ],
    ids=["new", "completed", "leased", "lease-expired"],
)
def test_the_decision_follows_the_record(record, decision):
    assert decide(record, now=1000.0) is decision


def guard(store=None, clock=None) -> IdempotencyGuard:
    return IdempotencyGuard(store=store or MemoryIdempotencyStore(), lease_s=60, clock=clock or Clock())


def test_a_completed_key_is_not_run_again():
    # Given a key whose handler ran
    g = guard()
    calls = []
    assert g.run("k", lambda: calls.append(1) or "done") == "done"
    # When it comes again, Then it is skipped as a duplicate
    with pytest.raises(SkipMessage, match="duplicate"):
        g.run("k", lambda: calls.append(2))
    assert calls == [1]


def test_a_failed_run_releases_its_claim_so_the_retry_runs():
    g = guard()
    with pytest.raises(RuntimeError):
        g.run("k", lambda: (_ for _ in ()).throw(RuntimeError("boom")))
    assert g.run("k", lambda: "second") == "second"


def test_a_key_claimed_elsewhere_is_retried_after_the_lease():
    # Given a claim held by another worker (the store says IN_PROGRESS, 60 s lease)
    clock = Clock()
    store = MemoryIdempotencyStore()
    store.claim("k", token="other", now=clock.now, lease_s=60)
    # When this worker gets the message 20 s later, Then it asks for a retry after the remainder
    clock.now += 20
    with pytest.raises(Nack) as nack:
        guard(store, clock).run("k", lambda: pytest.fail("must not run"))
    assert nack.value.visibility_timeout_seconds == 40


def test_a_claim_whose_holder_died_is_taken_over_after_its_lease():
    # Given a claim whose holder died (never completed, never released)
    clock = Clock()
    store = MemoryIdempotencyStore()
    store.claim("k", token="dead", now=clock.now, lease_s=60)
    # When its lease has expired, Then the handler runs again (the documented "twice, never zero")
    clock.now += 61
    assert guard(store, clock).run("k", lambda: "again") == "again"
    assert store.records["k"].status == COMPLETED


def test_a_store_failure_after_the_side_effect_does_not_fail_the_message():
    class FlakyStore(MemoryIdempotencyStore):
        def complete(self, key, *, token, now):
            raise TransientTransportError("store down")

    store = FlakyStore()
    assert guard(store).run("k", lambda: "done") == "done"
    assert store.records["k"].status == IN_PROGRESS


def test_an_idempotent_handler_needs_a_guard():
    registry = HandlerRegistry({OrderPlaced.MEDIA_TYPE: print}, idempotent=[OrderPlaced.MEDIA_TYPE])
    with pytest.raises(ConfigurationError, match="idempotent"):
        SQSMessageDispatcher(handler_registry=registry)


def test_a_message_delivered_twice_runs_its_idempotent_handler_once():
    # Given the same message (same producer-stamped id) delivered twice, and one that is different
    stub = StubQueue()
    body = {"mediaType": OrderPlaced.MEDIA_TYPE, "order_id": "o-1", "opaqueData": {"x-microbus-message-id": "m-1"}}
    stub.put(body)
    stub.put(body)
    stub.put({**body, "opaqueData": {"x-microbus-message-id": "m-2"}})
    seen = []
    registry = HandlerRegistry({OrderPlaced.MEDIA_TYPE: seen.append}, idempotent=[OrderPlaced.MEDIA_TYPE])
    dispatcher = SQSMessageDispatcher(handler_registry=registry, middleware=[guard()])
    worker = Worker(consumer=stub.consumer(), dispatcher=dispatcher, concurrency=1)
    # When the worker consumes them
    worker.start()
    try:
        wait_for(lambda: stub.depth == 0, timeout_s=5)
    finally:
        worker.stop()
        worker.join()
    # Then the handler ran once per id and every message was acked
    assert [m["opaque_data"]["x-microbus-message-id"] for m in seen] == ["m-1", "m-2"]
    assert worker.stats.outcomes[Outcome.SKIPPED.label] == 1


def test_an_async_idempotent_handler_runs_once_per_message():
    # Given the same message delivered twice to an async idempotent handler
    stub = StubQueue()
    body = {"mediaType": OrderPlaced.MEDIA_TYPE, "order_id": "o-1", "opaqueData": {"x-microbus-message-id": "m-1"}}
    stub.put(body)
    stub.put(body)
    seen = []

    async def handler(content):
        await asyncio.sleep(0)
        seen.append(content["order_id"])

    registry = HandlerRegistry({OrderPlaced.MEDIA_TYPE: handler}, idempotent=[OrderPlaced.MEDIA_TYPE])
    dispatcher = SQSMessageDispatcher(handler_registry=registry, middleware=[guard()])
    worker = Worker(consumer=stub.consumer(), dispatcher=dispatcher, concurrency=1)
    # When the worker consumes them
    worker.start()
    try:
        wait_for(lambda: stub.depth == 0, timeout_s=5)
    finally:
        worker.stop()
        worker.join()
    # Then the handler's side effect happened once, and both messages were acked
    assert seen == ["o-1"]
    assert worker.stats.outcomes[Outcome.SKIPPED.label] == 1


def envelope(message: dict, sns_message_id: str = "sns-1") -> str:
    return json.dumps(
        {"Type": "Notification", "TopicArn": "arn:t", "MessageId": sns_message_id, "Message": json.dumps(message)}
    )


@pytest.mark.parametrize(
    "body, key",
    [
        (envelope({**ORDER, "opaqueData": {"x-microbus-message-id": "stamped"}}), "stamped"),
        (envelope(ORDER, "sns-7"), "sns-7"),
        (ORDER, "sqs"),
    ],
    ids=["stamped", "sns-message-id", "sqs-message-id"],
)
def test_the_idempotency_key_is_the_most_stable_id_available(body, key):
    stub = StubQueue()
    message_id = stub.put(body)
    (message,) = stub.consumer().consume()
    assert message.error is None
    assert message.idempotency_key == (message_id if key == "sqs" else key)


def test_the_producer_stamps_a_unique_message_id():
    from microbus import SNSProducer, TopicArns
    from microbus.wire.schemas import SchemaRegistry

    producer = SNSProducer(transport=None, schema_registry=SchemaRegistry(), topic_arns=TopicArns(default="arn:t"))
    first, second = (producer.create_message(OrderPlaced.MEDIA_TYPE, {"order_id": "o"}) for _ in range(2))
    ids = [json.loads(m.message)["opaqueData"]["x-microbus-message-id"] for m in (first, second)]
    assert all(ids) and ids[0] != ids[1]


def test_a_message_produced_while_handling_another_gets_its_own_message_id():
    # Given opaque data passed on from the message being handled (usual microcosm practice)
    from microbus import SNSProducer, TopicArns
    from microbus.wire.schemas import SchemaRegistry

    inherited = {"x-microbus-message-id": "parent", "x-request-id": "req-1"}
    producer = SNSProducer(transport=None, schema_registry=SchemaRegistry(), topic_arns=TopicArns(default="arn:t"))
    children = [producer.create_message(OrderPlaced.MEDIA_TYPE, {"order_id": "o"}, opaque_data=inherited) for _ in "ab"]
    # Then each child has a fresh id (an idempotent consumer would otherwise drop the second as a duplicate)
    opaque = [json.loads(m.message)["opaqueData"] for m in children]
    assert len({o["x-microbus-message-id"] for o in opaque} | {"parent"}) == 3
    assert all(o["x-request-id"] == "req-1" for o in opaque)


def test_an_unreachable_idempotency_store_retries_the_message_without_running_or_expiring_it():
    class Unreachable(MemoryIdempotencyStore):
        def claim(self, key, *, token, now, lease_s):
            raise TransientTransportError("DynamoDB table microbus-idempotency failed transiently (500)")

    calls = []
    with pytest.raises(Nack) as caught:
        guard(store=Unreachable()).run("k", lambda: calls.append(1))
    assert calls == []
    assert caught.value.visibility_timeout_seconds is None  # the backoff, not a handler failure
