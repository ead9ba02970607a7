"""Retry semantics (Nack, attempt limits), transport backoff, waiting for a queue, acker retries."""

from __future__ import annotations

import pytest
from microbus.reference.schemas import OrderPlaced

from microbus import BatchAcker, Outcome, Worker
from microbus.consume.dispatch import RetryPolicy, SQSMessageDispatcher
from microbus.consume.handlers import HandlerRegistry
from microbus.consume.worker import transport_backoff_s
from microbus.errors import EndpointUnreachableError, Nack
from microbus.testing import StubQueue, wait_for

ORDER = {"mediaType": OrderPlaced.MEDIA_TYPE, "order_id": "o-1"}


def fails(content):
    raise RuntimeError("handler broke")


def one_message(stub: StubQueue, body=ORDER, receives: int = 0):
    stub.put(body)
    consumer = stub.consumer()
    for _ in range(receives):
        (message,) = consumer.consume()
        consumer.nack(message, 0)
    (message,) = consumer.consume()
    return consumer, message


def dispatcher(handler=fails, **kwargs) -> SQSMessageDispatcher:
    return SQSMessageDispatcher(handler_registry=HandlerRegistry({OrderPlaced.MEDIA_TYPE: handler}), **kwargs)


def test_nack_zero_makes_the_message_visible_at_once():
    # Given a handler that asks for an immediate retry
    def retry_now(content):
        raise Nack(0)

    stub = StubQueue()
    consumer, message = one_message(stub)
    d = dispatcher(retry_now)
    # When its outcome is applied
    result = d.handle(message)
    d.apply(result, message, consumer=consumer, ack=consumer.ack)
    # Then it is retried with no delay, not after the backoff
    assert result.outcome is Outcome.RETRIED and result.retry_after_s == 0
    assert consumer.consume()


def test_nack_without_a_delay_uses_the_backoff():
    def retry(content):
        raise Nack()

    _, message = one_message(StubQueue())
    result = dispatcher(retry, retry_policy=RetryPolicy(base_s=8, jitter=False)).handle(message)
    assert result.retry_after_s == 8


def test_the_queue_redrive_count_limits_attempts_when_none_is_configured():
    _, message = one_message(StubQueue(), receives=2)  # third receive
    assert dispatcher().handle(message, max_attempts=3).outcome is Outcome.EXPIRED
    assert dispatcher().handle(message, max_attempts=4).outcome is Outcome.FAILED


def test_a_configured_max_attempts_wins_over_the_redrive_policy():
    _, message = one_message(StubQueue(), receives=1)  # second receive
    d = dispatcher(retry_policy=RetryPolicy(max_attempts=2))
    result = d.handle(message, max_attempts=5)
    assert result.outcome is Outcome.EXPIRED and result.reason == "max-attempts"


def test_an_expired_message_is_dead_lettered_with_its_reason():
    stub = StubQueue()
    consumer, message = one_message(stub, receives=4)
    d = dispatcher(source="orders")
    d.apply(d.handle(message, max_attempts=5), message, consumer=consumer, ack=consumer.ack)
    ((body, attributes),) = stub.dead_letters
    assert body == message.body
    values = {name: value["StringValue"] for name, value in attributes.items()}
    assert values["microbus.reason"] == "max-attempts"
    assert values["microbus.error_class"] == "RuntimeError"
    assert values["microbus.error_message"] == "handler broke"
    assert values["microbus.daemon"] == "orders"
    assert values["microbus.dead_lettered_at"]
    assert stub.depth == 0


@pytest.mark.parametrize("skip, outcome", [(False, Outcome.REJECTED), (True, Outcome.IGNORED)])
def test_unknown_media_types_are_dead_lettered_unless_skipped(skip, outcome):
    stub = StubQueue()
    consumer, message = one_message(stub, body={"mediaType": "application/vnd.other.service"})
    d = dispatcher(skip_unknown_media_types=skip)
    result = d.handle(message)
    d.apply(result, message, consumer=consumer, ack=consumer.ack)
    assert result.outcome is outcome
    assert len(stub.dead_letters) == (0 if skip else 1)
    assert stub.depth == 0


def test_transport_backoff_doubles_and_is_capped():
    assert [transport_backoff_s(n, max_s=5) for n in range(1, 5)] == [1.0, 2.0, 4.0, 5]


def test_a_worker_waits_for_an_unreachable_queue_at_start():
    # Given a queue that is unreachable for the first two calls
    class Flaky(StubQueue):
        calls = 0

        def get_attributes(self):
            self.calls += 1
            if self.calls <= 2:
                raise EndpointUnreachableError("Cannot reach the stub")
            return super().get_attributes()

    stub = Flaky()
    stub.put(ORDER)
    seen = []
    worker = Worker(consumer=stub.consumer(), dispatcher=dispatcher(seen.append), max_transport_backoff_s=0.05)
    # When the worker starts, Then it waits, then consumes
    worker.start()
    try:
        wait_for(lambda: seen, timeout_s=5)
    finally:
        worker.stop()
        worker.join()
    assert stub.calls == 3


def test_a_worker_stopped_while_waiting_for_its_queue_joins_cleanly():
    class Down(StubQueue):
        def get_attributes(self):
            raise EndpointUnreachableError("Cannot reach the stub")

    worker = Worker(consumer=Down().consumer(), dispatcher=dispatcher(), max_transport_backoff_s=0.05)
    worker.stop()
    worker.start()
    worker.join()
    assert worker.stats.received == 0


def test_the_acker_retries_a_delete_that_failed_transiently():
    # Given a queue whose first delete call cannot reach SQS
    class Flaky(StubQueue):
        failures = 1

        def delete_batch(self, receipt_handles):
            if self.failures:
                self.failures -= 1
                raise EndpointUnreachableError("Cannot reach the stub")
            return super().delete_batch(receipt_handles)

    stub = Flaky()
    consumer, message = one_message(stub)
    acker = BatchAcker(consumer, retry_base_s=0.01)
    # When a message is acked, Then it is deleted on the second try
    acker.ack(message)
    acker.close()
    assert stub.depth == 0 and acker.failed == 0
