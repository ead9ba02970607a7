"""Dispatch outcomes and how they are applied, on the in-memory stub queue."""

from __future__ import annotations

import json
import time

import pytest
from microbus.reference.schemas import OrderPlaced
from microcosm.api import create_object_graph, load_from_dict

from microbus import IgnoreMessage, Nack, Outcome, SkipMessage
from microbus.consume.consumer import SQSConsumer
from microbus.consume.dispatch import RetryPolicy, SQSMessageDispatcher, compute_backoff
from microbus.consume.handlers import HandlerRegistry
from microbus.testing import StubQueue
from microbus.wire.schemas import SchemaRegistry

GOOD = {"mediaType": OrderPlaced.MEDIA_TYPE, "order_id": "o-1"}


def envelope(message):
    return {"Type": "Notification", "TopicArn": "arn:aws:sns:us-east-1:1:t", "Message": json.dumps(message)}


def run_once(handler, body=GOOD, *, queue=None, **dispatcher_options):
    queue = queue or StubQueue()
    queue.put(envelope(body) if isinstance(body, dict) else body)
    consumer = queue.consumer(SchemaRegistry())
    dispatcher = SQSMessageDispatcher(
        handler_registry=HandlerRegistry({OrderPlaced.MEDIA_TYPE: handler}),
        retry_policy=RetryPolicy(base_s=10, max_s=100, jitter=False, default_max_attempts=3),
        source="test-daemon",
        **dispatcher_options,
    )
    (message,) = consumer.consume()
    result = dispatcher.handle(message)
    dispatcher.apply(result, message, consumer=consumer, ack=consumer.ack)
    return queue, result


def stored(queue):
    (message,) = queue.messages.values()
    return message


def test_a_handler_that_returns_acks_the_message():
    seen = []
    queue, result = run_once(seen.append)
    assert result.outcome is Outcome.SUCCEEDED
    assert seen[0]["order_id"] == "o-1"
    assert queue.depth == 0


def test_a_handler_that_raises_leaves_the_message_for_a_retry_after_the_backoff():
    def fail(content):
        raise RuntimeError("database down")

    queue, result = run_once(fail)
    assert result.outcome is Outcome.FAILED
    assert result.retry_after_s == 10
    assert queue.depth == 1
    assert stored(queue).visible_at - time.time() == pytest.approx(10, abs=1)


def test_nack_retries_after_the_delay_the_handler_asked_for():
    def nack(content):
        raise Nack(42)

    queue, result = run_once(nack)
    assert result.outcome is Outcome.RETRIED
    assert stored(queue).visible_at - time.time() == pytest.approx(42, abs=1)


@pytest.mark.parametrize(
    ("signal", "outcome"), [(SkipMessage("stale"), Outcome.SKIPPED), (IgnoreMessage("not ours"), Outcome.IGNORED)]
)
def test_skip_and_ignore_ack_the_message(signal, outcome):
    def handler(content):
        raise signal

    queue, result = run_once(handler)
    assert result.outcome is outcome
    assert queue.depth == 0


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("not json at all", "malformed-body"),
        ({"order_id": "o"}, "missing-media-type"),
        ({"mediaType": "application/vnd.nobody"}, "unknown-media-type"),
        ({"mediaType": OrderPlaced.MEDIA_TYPE}, "schema-violation"),
    ],
)
def test_poison_messages_go_to_the_dead_letter_queue_at_once_with_the_reason(body, reason):
    queue, result = run_once(lambda content: None, body)
    assert result.outcome is Outcome.REJECTED
    assert queue.depth == 0
    ((dead_body, attributes),) = queue.dead_letters
    assert attributes["microbus.reason"]["StringValue"] == reason
    assert attributes["microbus.daemon"]["StringValue"] == "test-daemon"
    assert dead_body == (body if isinstance(body, str) else json.dumps(envelope(body)))


def test_a_message_without_a_handler_is_dead_lettered_not_deleted():
    queue = StubQueue()
    consumer = queue.consumer(SchemaRegistry())
    queue.put(envelope(GOOD))
    dispatcher = SQSMessageDispatcher(handler_registry=HandlerRegistry({}))
    (message,) = consumer.consume()
    dispatcher.apply(dispatcher.handle(message), message, consumer=consumer, ack=consumer.ack)
    assert queue.dead_letters[0][1]["microbus.reason"]["StringValue"] == "no-handler"


def test_queues_shared_by_several_services_can_ignore_unknown_media_types():
    queue, result = run_once(lambda c: None, {"mediaType": "application/vnd.other"}, skip_unknown_media_types=True)
    assert result.outcome is Outcome.IGNORED
    assert queue.depth == 0
    assert queue.dead_letters == []


def test_a_failure_at_the_attempt_limit_is_dead_lettered_with_the_error():
    def fail(content):
        raise ValueError("bad order")

    class ThirdAttempt(StubQueue):
        def put(self, body, attributes=None):
            message_id = super().put(body, attributes)
            self.messages[message_id].receive_count = 2  # the next receive is the third and last attempt
            return message_id

    queue, result = run_once(fail, queue=ThirdAttempt())
    assert result.outcome is Outcome.EXPIRED
    attributes = queue.dead_letters[0][1]
    assert attributes["microbus.reason"]["StringValue"] == "max-attempts"
    assert attributes["microbus.error_class"]["StringValue"] == "ValueError"
    assert attributes["microbus.error_message"]["StringValue"] == "bad order"


class NoDeadLetterQueue(StubQueue):
    def consumer(self, schema_registry=None):
        return SQSConsumer(transport=self, schema_registry=schema_registry or SchemaRegistry(), wait_seconds=0)


def test_without_a_dead_letter_queue_a_poison_message_is_left_to_the_redrive_policy():
    queue, result = run_once(lambda c: None, "garbage", queue=NoDeadLetterQueue())
    assert result.outcome is Outcome.REJECTED
    assert queue.depth == 1
    assert stored(queue).visible_at > time.time()


def test_without_a_dead_letter_queue_poison_is_deleted_only_when_the_user_opted_in():
    queue, _ = run_once(lambda c: None, "garbage", queue=NoDeadLetterQueue(), delete_undeliverable=True)
    assert queue.depth == 0


def test_backoff_grows_exponentially_and_is_capped():
    delays = [compute_backoff(attempt=n, base_s=2, max_s=30, jitter=False) for n in range(1, 7)]
    assert delays == [2, 4, 8, 16, 30, 30]
    assert compute_backoff(attempt=3, base_s=2, max_s=30, rand=lambda: 0.5) == 4
    assert compute_backoff(attempt=1, base_s=2, max_s=30, rand=lambda: 0.0) == 1


@pytest.mark.parametrize(("jitter", "expected"), [(False, False), ("false", False), (True, True)])
def test_the_backoff_jitter_is_configurable(jitter, expected):
    config = {
        "aws": {"endpoint_url": "http://127.0.0.1:9"},  # never called
        "microbus_sqs_message_dispatcher": {"backoff_base_s": 60, "backoff_max_s": 60, "backoff_jitter": jitter},
    }
    graph = create_object_graph("jitter", testing=True, loader=load_from_dict(config))
    policy = graph.microbus_sqs_message_dispatcher.retry_policy
    assert policy.jitter is expected
    if not expected:
        assert {policy.backoff(1) for _ in range(20)} == {60}
