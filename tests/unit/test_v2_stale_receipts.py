"""A delete SQS reports as failed (a stale or unknown receipt handle) is an error, not a silent success."""

from __future__ import annotations

import pytest
from microbus.reference.schemas import OrderPlaced

from microbus import SchemaRegistry, SQSMessage, TransportError
from microbus.testing import StubQueue


def order(i):
    return {"mediaType": OrderPlaced.MEDIA_TYPE, "order_id": f"o-{i}"}


def received(queue):
    (message,) = queue.consumer(SchemaRegistry()).consume(limit=1)
    return message


@pytest.mark.timeout(10)
def test_acking_a_message_twice_raises_transport_error():
    # Given a message that was received and deleted
    queue = StubQueue()
    queue.put(order(1))
    message = received(queue)
    message.consumer.ack(message)
    assert queue.depth == 0
    # When it is acked again, with the now stale receipt handle
    # Then the failure is raised
    with pytest.raises(TransportError):
        message.consumer.ack(message)
    # And ack_many still reports it among the failed instead of raising
    assert message.consumer.ack_many([message]) == [message]


@pytest.mark.timeout(10)
def test_acking_a_made_up_receipt_handle_raises_transport_error():
    queue = StubQueue()
    consumer = queue.consumer(SchemaRegistry())
    message = SQSMessage(consumer=consumer, message_id="stub-nope", receipt_handle="stub-nope#1", body="{}")
    with pytest.raises(TransportError):
        consumer.ack(message)
    with pytest.raises(TransportError):
        message.ack()


@pytest.mark.timeout(10)
def test_with_message_on_a_stale_receipt_raises_transport_error():
    # Given a message whose receipt handle went stale (it was received again by someone else)
    queue = StubQueue(visibility_timeout_s=0)
    queue.put(order(1))
    message = received(queue)
    queue.receive(max_messages=1, wait_time_seconds=0)
    # When it is handled in a with block, which acks it on success
    # Then the failed delete is raised instead of passing for done
    with pytest.raises(TransportError):
        with message:
            pass
    assert queue.depth == 1


class UndeletableQueue(StubQueue):
    """Every delete is reported failed, as SQS does for a stale receipt handle."""

    def delete_batch(self, receipt_handles):
        return list(receipt_handles)


@pytest.mark.timeout(10)
def test_dead_letter_returns_false_when_the_original_could_not_be_deleted():
    # Given a message whose delete will fail
    queue = UndeletableQueue()
    queue.put(order(1))
    message = received(queue)
    # When it is dead-lettered
    done = message.consumer.dead_letter(message, reason="test", error=None, source="v2-test")
    # Then the copy was sent, but the call says the original is still there
    assert len(queue.dead_letters) == 1
    assert done is False
    assert queue.depth == 1
