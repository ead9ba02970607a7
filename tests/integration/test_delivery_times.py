"""Delivery beyond 15 minutes: a message due later is hidden again (no handler, no attempt) until it is due."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from microbus.reference.schemas import OrderPlaced
from microcosm.api import create_object_graph, load_from_dict

from microbus import HandlerRegistry, MessageValidationError, Outcome, SQSMessageDispatcher, Worker
from microbus.consume.lifecycle import EventKind
from microbus.testing import wait_for
from microbus.wire.delivery import DELIVER_AT_KEY, parse_due

pytestmark = pytest.mark.integration


class Clock:
    """A clock the test moves: epoch seconds, starting now."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def make_graph(queue):
    graph = create_object_graph("delay", testing=True, loader=load_from_dict(queue.graph_config()))
    graph.use("microbus_sns_producer", "microbus_sqs_consumer")
    return graph


def visibility_of(queue):
    attributes = queue.sqs.get_queue_attributes(
        QueueUrl=queue.queue_url, AttributeNames=["ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessagesNotVisible"])


def test_a_message_due_in_three_days_is_hidden_12_hours_at_a_time_then_handled_when_due(make_queue):
    # Given a message due in three days, and a consumer whose clock the test moves
    queue = make_queue()
    graph = make_graph(queue)
    clock = Clock()
    handled = []
    dispatcher = SQSMessageDispatcher(
        handler_registry=HandlerRegistry({OrderPlaced.MEDIA_TYPE: handled.append}), clock=clock
    )
    graph.microbus_sns_producer.produce(OrderPlaced.MEDIA_TYPE, order_id="later", delay=timedelta(days=3))
    # When it is received before its time
    (message,) = wait_for(graph.microbus_sqs_consumer.consume, what="the message")
    assert message.opaque_data[DELIVER_AT_KEY].endswith("+00:00")
    result = dispatcher.handle(message)
    # Then it is deferred for SQS's 12 h maximum, without running the handler and without an attempt counted
    assert result.outcome is Outcome.DEFERRED and result.retry_after_s == 43_200
    assert handled == []
    dispatcher.apply(result, message, consumer=graph.microbus_sqs_consumer, ack=graph.microbus_sqs_consumer.ack)
    assert visibility_of(queue) == 1
    # When the clock reaches 2 s before the due time (as stamped by the producer), the hold is those 2 s
    due = parse_due(message.opaque_data[DELIVER_AT_KEY]).timestamp()
    assert 3 * 86_400 - 60 < due - clock.now <= 3 * 86_400 + 60
    clock.now = due - 2
    assert dispatcher.handle(message).retry_after_s == 2
    # And once due, the handler runs
    clock.now = due
    assert dispatcher.handle(message).outcome is Outcome.SUCCEEDED
    assert handled[0]["order_id"] == "later"


def test_a_short_delay_is_delivered_after_it_by_a_worker(make_queue):
    # Given a worker on the real clock
    queue = make_queue()
    graph = make_graph(queue)
    handled = []
    dispatcher = SQSMessageDispatcher(
        handler_registry=HandlerRegistry({OrderPlaced.MEDIA_TYPE: lambda c: handled.append(time.time())})
    )
    finished = []
    worker = Worker(consumer=graph.microbus_sqs_consumer, dispatcher=dispatcher, observers=[Finished(finished)])
    worker.start()
    try:
        # When a message is produced with a 3 s delay
        due = datetime.now(UTC) + timedelta(seconds=3)
        graph.microbus_sns_producer.produce(OrderPlaced.MEDIA_TYPE, order_id="soon", deliver_at=due)
        # Then it is handled once, no earlier than due
        wait_for(lambda: handled, what="the delayed message", timeout_s=20)
        assert handled[0] >= due.timestamp() - 0.1
        wait_for(lambda: worker.stats.outcomes["SUCCEEDED"] == 1, what="the success counted")
        # and every receive before it was deferred (under a loaded machine the first receive may come after the
        # due time: then there is none)
        assert finished[-1] is Outcome.SUCCEEDED and len(handled) == 1
        assert set(finished[:-1]) <= {Outcome.DEFERRED}, finished
        assert worker.stats.failed == 0
    finally:
        worker.stop()
        worker.join()


class Finished:
    """Records each FINISHED event's outcome."""

    def __init__(self, into):
        self.into = into

    def on_event(self, event):
        if event.kind is EventKind.FINISHED:
            self.into.append(event.outcome)


@pytest.mark.parametrize("value", ["tomorrow", "2030-01-01T00:00:00", 12345, "9" * 500])
def test_a_malformed_due_time_from_the_wire_is_dead_lettered_with_its_reason(make_queue, value):
    # Given a raw message whose due time is not an ISO 8601 time with an offset
    queue = make_queue(raw=True)
    graph = make_graph(queue)
    body = {"mediaType": OrderPlaced.MEDIA_TYPE, "order_id": "o", "opaqueData": {DELIVER_AT_KEY: value}}
    queue.sqs.send_message(QueueUrl=queue.queue_url, MessageBody=json.dumps(body))
    (message,) = wait_for(graph.microbus_sqs_consumer.consume, what="the message")
    handled = []
    dispatcher = SQSMessageDispatcher(handler_registry=HandlerRegistry({OrderPlaced.MEDIA_TYPE: handled.append}))
    result = dispatcher.handle(message)
    dispatcher.apply(result, message, consumer=graph.microbus_sqs_consumer, ack=graph.microbus_sqs_consumer.ack)
    # Then it is not handled, and it is in the DLQ with the reason: nothing lost
    assert handled == []
    assert result.outcome is Outcome.REJECTED and result.reason == "malformed-deliver-at"
    (dead,) = wait_for(queue.drain_dlq, what="the dead letter")
    assert dead["MessageAttributes"]["microbus.reason"]["StringValue"] == "malformed-deliver-at"


def test_bad_delivery_times_are_refused_before_anything_is_sent(make_queue):
    queue = make_queue()
    producer = make_graph(queue).microbus_sns_producer
    with pytest.raises(MessageValidationError, match="time zone"):
        producer.produce(OrderPlaced.MEDIA_TYPE, order_id="o", deliver_at=datetime(2030, 1, 1))
    with pytest.raises(MessageValidationError, match="not both"):
        producer.produce(OrderPlaced.MEDIA_TYPE, order_id="o", deliver_at=datetime.now(UTC), delay=timedelta(1))
    with pytest.raises(MessageValidationError, match="negative"):
        producer.produce(OrderPlaced.MEDIA_TYPE, order_id="o", delay=timedelta(seconds=-1))
    assert queue.depth() == 0
