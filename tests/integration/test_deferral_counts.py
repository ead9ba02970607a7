"""Deferred messages (``deliver_at``) do not use up attempts: neither microbus's limit nor SQS's redrive count.

A worker runs on a clock the test moves; a :class:`TimeMachine` plays the hours a message waits: when a hide was
settled, it moves the clock on by the hidden time and makes the message visible again at once.
"""

from __future__ import annotations

import json
import queue as queues
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from microbus.reference.schemas import OrderPlaced
from microcosm.api import create_object_graph, load_from_dict

from microbus import EventKind, HandlerRegistry, Outcome, RetryPolicy, SQSMessageDispatcher, Worker
from microbus.consume.consumer import SQSConsumer
from microbus.testing import wait_for
from microbus.wire.delivery import DELIVER_AT_KEY, format_due, parse_due
from microbus.wire.schemas import SchemaRegistry
from microbus.wire.transport import SQSTransport
from tests.integration.test_fifo_groups import make_fifo_queue

pytestmark = pytest.mark.integration

LAST_LEG_S = 900


class Clock:
    """Epoch seconds the test moves, starting now."""

    def __init__(self) -> None:
        self.now = time.time()
        self.lock = threading.Lock()

    def __call__(self) -> float:
        with self.lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self.lock:
            self.now += seconds


class TimeMachine:
    """A lifecycle observer that records each finished message, and plays each deferral's wait on the clock."""

    def __init__(self, sqs, queue_url: str, clock: Clock) -> None:
        self.sqs, self.queue_url, self.clock = sqs, queue_url, clock
        self.due: float | None = None
        self.finished: list[tuple[Outcome, int]] = []
        self.settled_kinds: list[EventKind] = []
        self.groups: list[str] = []
        self._results: dict[str, object] = {}
        self._waits: queues.SimpleQueue = queues.SimpleQueue()

    def on_event(self, event) -> None:
        if event.kind is EventKind.FINISHED:
            self.groups.append(event.message.message_group_id) if event.message.message_group_id else None
            self.finished.append((event.outcome, event.receive_count))
            if event.outcome is Outcome.DEFERRED:
                self.due = parse_due(event.message.opaque_data[DELIVER_AT_KEY]).timestamp()
                self._results[event.message_id] = event.result
        elif event.message_id in self._results and event.kind is not EventKind.RECEIVED:
            self.settled_kinds.append(event.kind)
            self._waits.put((event.kind, event.message, self._results.pop(event.message_id)))

    @property
    def handled(self) -> list[tuple[Outcome, int]]:
        return [(outcome, count) for outcome, count in self.finished if outcome is not Outcome.DEFERRED]

    def run(self, done, timeout_s: float = 30.0) -> None:
        """Play the waits until ``done()`` or the deadline."""
        deadline = time.monotonic() + timeout_s
        while not done() and time.monotonic() < deadline:
            try:
                kind, message, result = self._waits.get(timeout=0.1)
            except queues.Empty:
                continue
            if kind is EventKind.SETTLED:  # hidden by ChangeMessageVisibility: the hours pass, it is visible again
                self.clock.advance(result.retry_after_s)
                if self.due is not None and 2 < self.due - self.clock() <= LAST_LEG_S:
                    self.clock.advance(self.due - 2 - self.clock())  # received late: 2 s before its time
                self.sqs.change_message_visibility(
                    QueueUrl=self.queue_url, ReceiptHandle=message.receipt_handle, VisibilityTimeout=0
                )
            elif result.retry_after_s:  # re-sent with a delay: SQS holds the copy back that long, in real time
                self.clock.advance(result.retry_after_s)


def start_worker(consumer, handler, clock, machine, *, retry_policy=None) -> Worker:
    dispatcher = SQSMessageDispatcher(
        handler_registry=HandlerRegistry({OrderPlaced.MEDIA_TYPE: handler}),
        retry_policy=retry_policy or RetryPolicy(base_s=1, jitter=False),
        clock=clock,
    )
    worker = Worker(consumer=consumer, dispatcher=dispatcher, observers=[machine])
    worker.start()
    return worker


def make_graph(queue, **extra):
    graph = create_object_graph("deferral", testing=True, loader=load_from_dict(queue.graph_config(**extra)))
    graph.use("microbus_sns_producer", "microbus_sqs_consumer")
    return graph


def dead_letters(sqs, dlq_url) -> int:
    attributes = sqs.get_queue_attributes(
        QueueUrl=dlq_url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(attributes["ApproximateNumberOfMessagesNotVisible"])


@pytest.mark.parametrize("raw", [False, True], ids=["enveloped", "raw"])
def test_a_message_deferred_longer_than_the_queues_receive_limit_is_handled_not_dead_lettered(make_queue, raw):
    # Given a queue whose redrive policy dead-letters a message on its 4th receive, and a worker on a test clock
    queue = make_queue(raw=raw, max_receive_count=3)
    graph = make_graph(queue)
    clock = Clock()
    machine = TimeMachine(queue.sqs, queue.queue_url, clock)
    handled = []
    # When a message due in three days is produced (six 12 h holds)
    graph.microbus_sns_producer.produce(OrderPlaced.MEDIA_TYPE, order_id="later", delay=timedelta(days=3))
    worker = start_worker(graph.microbus_sqs_consumer, handled.append, clock, machine)
    try:
        machine.run(lambda: handled or dead_letters(queue.sqs, queue.dlq_url))
        wait_for(lambda: worker.stats.in_flight == 0 and queue.depth() == 0, what="the queue settled")
    finally:
        worker.stop()
        worker.join()
    # Then it was handled once when due, as its first attempt, and SQS never dead-lettered it
    assert [content["order_id"] for content in handled] == ["later"]
    assert machine.handled == [(Outcome.SUCCEEDED, 1)]
    assert dead_letters(queue.sqs, queue.dlq_url) == 0
    assert clock() >= machine.due
    # And it was re-sent (a fresh receive count) rather than hidden past the limit; re-sends are not handled
    assert EventKind.RESENT in machine.settled_kinds
    assert worker.stats.handled == 1 and worker.stats.failed == 0


def test_the_first_real_attempt_of_a_deferred_message_is_attempt_one(make_queue):
    # Given at most two attempts per message, and a handler that fails the first time
    queue = make_queue(max_receive_count=5)
    graph = make_graph(queue)
    clock = Clock()
    machine = TimeMachine(queue.sqs, queue.queue_url, clock)
    calls = []

    def flaky(content):
        calls.append(content["order_id"])
        if len(calls) == 1:
            raise RuntimeError("downstream is down")

    # When a message due in a day is produced (it is deferred three times before it is due)
    graph.microbus_sns_producer.produce(OrderPlaced.MEDIA_TYPE, order_id="later", delay=timedelta(days=1))
    policy = RetryPolicy(base_s=1, jitter=False, max_attempts=2)
    worker = start_worker(graph.microbus_sqs_consumer, flaky, clock, machine, retry_policy=policy)
    try:
        machine.run(lambda: len(machine.handled) >= 2 or dead_letters(queue.sqs, queue.dlq_url))
        wait_for(lambda: worker.stats.in_flight == 0 and queue.depth() == 0, what="the queue settled")
    finally:
        worker.stop()
        worker.join()
    # Then the deferrals did not count: the failure was attempt 1 of 2 (retried), the success attempt 2
    assert machine.handled == [(Outcome.FAILED, 1), (Outcome.SUCCEEDED, 2)]
    assert dead_letters(queue.sqs, queue.dlq_url) == 0


def test_a_deferred_offloaded_payload_keeps_its_pointer_and_its_object_until_the_ack(make_queue, microbus_endpoint):
    # Given large payloads in S3, deleted after the ack
    s3 = microbus_endpoint.settings().client("s3")
    bucket = f"payloads-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    queue = make_queue()
    graph = make_graph(queue, payload_store={"bucket": bucket, "delete_after_ack": True})
    clock = Clock()
    machine = TimeMachine(queue.sqs, queue.queue_url, clock)
    handled = []

    def objects():
        return s3.list_objects_v2(Bucket=bucket).get("KeyCount", 0)

    def resent_with_object():
        return EventKind.RESENT in machine.settled_kinds and objects() == 1

    # When a message over the SNS limit is produced for tomorrow
    graph.microbus_sns_producer.produce(OrderPlaced.MEDIA_TYPE, order_id="x" * 300_000, delay=timedelta(days=1))
    worker = start_worker(graph.microbus_sqs_consumer, handled.append, clock, machine)
    try:
        machine.run(lambda: handled)
        # Then the re-sent copy still pointed at the stored payload, which was kept until the ack
        assert resent_with_object() or handled
        assert [content["order_id"] for content in handled] == ["x" * 300_000]
        wait_for(lambda: worker.stats.in_flight == 0 and objects() == 0, what="the object deleted after the ack")
    finally:
        worker.stop()
        worker.join()
    assert machine.handled == [(Outcome.SUCCEEDED, 1)]
    assert queue.depth() == 0


def test_a_re_send_that_fails_keeps_the_original_and_is_tried_again(make_queue):
    # Given a consumer whose first two SendMessageBatch calls fail on the network
    from botocore.exceptions import EndpointConnectionError

    queue = make_queue()
    graph = make_graph(queue)
    clock = Clock()
    machine = TimeMachine(queue.sqs, queue.queue_url, clock)
    handled = []
    refused = []

    def flaky_send(**kwargs):
        if len(refused) < 2:
            refused.append(1)
            raise EndpointConnectionError(endpoint_url="http://127.0.0.1:1")

    consumer = graph.microbus_sqs_consumer
    consumer.transport.client.meta.events.register("before-call.sqs.SendMessageBatch", flaky_send)
    # When a message due in ten seconds (a re-send with a delay, at once) is produced
    graph.microbus_sns_producer.produce(OrderPlaced.MEDIA_TYPE, order_id="soon", delay=timedelta(seconds=3))
    worker = start_worker(consumer, handled.append, clock, machine)
    try:
        machine.run(lambda: handled)
        wait_for(lambda: worker.stats.in_flight == 0 and queue.depth() == 0, what="the queue settled")
    finally:
        worker.stop()
        worker.join()
    # Then it was sent on the third try, and handled exactly once, as its first attempt
    assert len(refused) == 2
    assert machine.handled == [(Outcome.SUCCEEDED, 1)]
    assert [content["order_id"] for content in handled] == ["soon"]


def test_on_a_fifo_queue_a_long_deferral_keeps_its_group_and_is_not_dead_lettered(microbus_endpoint):
    # Given a FIFO queue dead-lettering on the 4th receive, and a message of group "g" due in three days
    sqs, url, dlq = make_fifo_queue(microbus_endpoint, max_receive_count=3)
    clock = Clock()
    due = format_due(datetime.fromtimestamp(clock() + 3 * 86_400, tz=UTC))
    body = {"mediaType": OrderPlaced.MEDIA_TYPE, "order_id": "later", "opaqueData": {DELIVER_AT_KEY: due}}
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps(body), MessageGroupId="g")
    consumer = SQSConsumer(
        transport=SQSTransport(client=sqs, queue_url=url), schema_registry=SchemaRegistry(), wait_seconds=1
    )
    machine = TimeMachine(sqs, url, clock)
    groups = []
    worker = start_worker(consumer, lambda content: groups.append(content["order_id"]), clock, machine)
    try:
        machine.run(lambda: groups or dead_letters(sqs, dlq))
        wait_for(lambda: worker.stats.in_flight == 0, what="the worker settled")
    finally:
        worker.stop()
        worker.join()
    # Then it was handled once when due, never dead-lettered, and re-sent in its own group
    assert groups == ["later"]
    assert dead_letters(sqs, dlq) == 0
    assert clock() >= machine.due
    assert EventKind.RESENT in machine.settled_kinds
    assert machine.groups and set(machine.groups) == {"g"}
    assert [outcome for outcome, _ in machine.handled] == [Outcome.SUCCEEDED]
