"""``delete_undeliverable`` deletes poison (REJECTED) messages of a queue without a DLQ, and only those: a
message that exhausted its retries (EXPIRED) is left to the queue's redrive policy."""

from __future__ import annotations

import pytest
from microbus.reference.schemas import OrderPlaced

from microbus.consume.consumer import SQSConsumer
from microbus.consume.dispatch import Action, Outcome, Result, RetryPolicy, SQSMessageDispatcher
from microbus.consume.handlers import HandlerRegistry
from microbus.testing import StubQueue
from microbus.wire.schemas import SchemaRegistry


def dispatcher(delete_undeliverable: bool) -> SQSMessageDispatcher:
    return SQSMessageDispatcher(
        handler_registry=HandlerRegistry({}),
        retry_policy=RetryPolicy(jitter=False),
        delete_undeliverable=delete_undeliverable,
    )


@pytest.mark.parametrize(
    ("outcome", "reason", "delete_undeliverable", "action"),
    [
        (Outcome.REJECTED, "schema-violation", True, Action.ACK),
        (Outcome.REJECTED, "no-handler", True, Action.ACK),
        (Outcome.EXPIRED, "max-attempts", True, Action.RETRY),
        (Outcome.REJECTED, "malformed-body", False, Action.RETRY),
        (Outcome.EXPIRED, "max-attempts", False, Action.RETRY),
    ],
    ids=["rejected-deleted", "no-handler-deleted", "expired-kept", "rejected-kept", "expired-kept-default"],
)
def test_only_poison_is_deleted_without_a_dead_letter_queue(outcome, reason, delete_undeliverable, action):
    stub = StubQueue()
    stub.put({"mediaType": "x"})
    (message,) = stub.consumer().consume()
    result = Result(outcome, None, message.message_id, 5, reason=reason)
    got, delay = dispatcher(delete_undeliverable).without_dead_letter_queue(result, message)
    assert got is action
    assert (delay >= 1) is (action is Action.RETRY)


class NoDeadLetterQueue(StubQueue):
    def consumer(self, schema_registry=None):
        return SQSConsumer(transport=self, schema_registry=schema_registry or SchemaRegistry(), wait_seconds=0)


def test_a_message_that_failed_its_last_attempt_is_not_deleted_on_a_queue_without_a_dlq():
    # Given a queue without a DLQ, delete_undeliverable, and a handler failing on its last attempt
    def fail(content):
        raise ValueError("bad order")

    queue = NoDeadLetterQueue()
    queue.put({"mediaType": OrderPlaced.MEDIA_TYPE, "order_id": "o-1", "customer_id": "c", "total_cents": 1})
    consumer = queue.consumer()
    d = SQSMessageDispatcher(
        handler_registry=HandlerRegistry({OrderPlaced.MEDIA_TYPE: fail}),
        retry_policy=RetryPolicy(max_attempts=1, jitter=False),
        delete_undeliverable=True,
    )
    (message,) = consumer.consume()
    # When its outcome is applied
    result = d.handle(message)
    d.apply(result, message, consumer=consumer, ack=consumer.ack)
    # Then it stays on the queue for the redrive policy (the handler may be fixed; it is not poison)
    assert result.outcome is Outcome.EXPIRED
    assert queue.depth == 1
