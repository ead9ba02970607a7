"""Producing to a FIFO topic on the emulator: group ids from a schema field, per-group order, deduplication."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from marshmallow import fields

from microbus import PubSubMessageSchema, SNSProducer, TopicArns
from microbus.topology import Queue, Subscription, Topic, Topology, apply_topology
from microbus.wire.codecs import MESSAGE_ID_KEY
from microbus.wire.schemas import SchemaRegistry
from microbus.wire.transport import SNSTransport

pytestmark = pytest.mark.integration
LINE = "application/vnd.microbus.test.fifo.order-line"


class OrderLine(PubSubMessageSchema):
    MEDIA_TYPE = LINE
    MESSAGE_GROUP_ID_FIELD = "order_id"

    order_id = fields.String(required=True)
    n = fields.Integer(required=True)


def fifo_pair(endpoint, *, content_based_deduplication=False):
    """A FIFO topic and a FIFO queue subscribed to it with raw delivery; return (producer, sqs, queue url)."""
    name = f"ff-{uuid.uuid4().hex[:10]}"
    topology = Topology(
        topics=(Topic(name=f"{name}.fifo", fifo=True, content_based_deduplication=content_based_deduplication),),
        queues=(
            Queue(
                name=f"{name}-q.fifo",
                fifo=True,
                content_based_deduplication=content_based_deduplication,
                max_receive_count=None,
                subscriptions=(Subscription(topic=f"{name}.fifo", raw=True),),
            ),
        ),
    )
    clients = endpoint.clients()
    applied = apply_topology(topology, sns=clients["sns"], sqs=clients["sqs"])
    producer = SNSProducer(
        transport=SNSTransport(client=clients["sns"]),
        schema_registry=SchemaRegistry({LINE: OrderLine}),
        topic_arns=TopicArns(default=applied.topic_arns[f"{name}.fifo"]),
    )
    return producer, clients["sqs"], applied.queue_urls[f"{name}-q.fifo"]


def receive_all(sqs, url, expected, timeout_s=20.0):
    """Receive (and delete, so that each group's next message is released) until ``expected`` arrived."""
    received = []
    deadline = time.monotonic() + timeout_s
    while len(received) < expected and time.monotonic() < deadline:
        batch = sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1, MessageSystemAttributeNames=["All"]
        ).get("Messages", [])
        received.extend(batch)
        if batch:
            sqs.delete_message_batch(
                QueueUrl=url, Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(batch)]
            )
    return received


LINES = [{"order_id": f"order-{n % 3}", "n": n} for n in range(15)]  # 3 groups x 5, interleaved


def produce_singly(producer):
    for line in LINES:
        producer.produce(LINE, line)


def produce_in_batches(producer):
    producer.produce_batch(LINE, LINES)


def produce_deferred(producer):
    with producer.deferred() as deferred:
        for line in LINES:
            deferred.produce(LINE, line)


@pytest.mark.parametrize("produce", [produce_singly, produce_in_batches, produce_deferred])
def test_messages_arrive_with_their_schema_field_as_group_id_in_order_within_each_group(microbus_endpoint, produce):
    # Given a FIFO topic (no content-based deduplication) and a FIFO queue subscribed with raw delivery
    producer, sqs, url = fifo_pair(microbus_endpoint)
    # When 3 groups x 5 interleaved messages are produced, the group id taken from OrderLine.order_id
    produce(producer)
    # Then each arrives in its order's group, with the producer's stamped id as deduplication id
    received = receive_all(sqs, url, expected=len(LINES))
    assert len(received) == len(LINES)
    by_group: dict[str, list[int]] = {}
    for message in received:
        body = json.loads(message["Body"])
        assert message["Attributes"]["MessageGroupId"] == body["order_id"]
        assert message["Attributes"]["MessageDeduplicationId"] == body["opaqueData"][MESSAGE_ID_KEY]
        by_group.setdefault(body["order_id"], []).append(body["n"])
    # and in order within each group
    assert by_group == {f"order-{g}": [n for n in range(15) if n % 3 == g] for g in range(3)}


def test_a_retried_publish_of_the_same_message_is_deduplicated(microbus_endpoint):
    producer, sqs, url = fifo_pair(microbus_endpoint)
    outgoing = producer.create_message(LINE, {"order_id": "order-1", "n": 1})
    producer.publish(outgoing)
    producer.publish(outgoing)  # e.g. the first response was lost and the caller tried again
    producer.produce(LINE, {"order_id": "order-1", "n": 2})
    received = receive_all(sqs, url, expected=3, timeout_s=3.0)
    assert [json.loads(m["Body"])["n"] for m in received] == [1, 2]


def test_a_topic_with_content_based_deduplication_derives_the_id_itself(microbus_endpoint):
    # Given a FIFO topic and queue with content-based deduplication (moto also wants it on the queue)
    producer, sqs, url = fifo_pair(microbus_endpoint, content_based_deduplication=True)
    # When a message is published twice, and another one with the same content once
    outgoing = producer.create_message(LINE, {"order_id": "order-1", "n": 1})
    producer.publish(outgoing)
    producer.publish(outgoing)
    producer.produce(LINE, {"order_id": "order-1", "n": 1})
    # Then the retry is deduplicated by its body; the new message is not (its body has another message id)
    received = receive_all(sqs, url, expected=3, timeout_s=3.0)
    ids = [json.loads(m["Body"])["opaqueData"][MESSAGE_ID_KEY] for m in received]
    assert len(ids) == 2 and len(set(ids)) == 2
    assert all(m["Attributes"]["MessageDeduplicationId"] != ids[0] for m in received)
