"""Large payloads in S3, in the extended clients' pointer format, against the emulator (S3 included)."""

from __future__ import annotations

import json
import uuid

import pytest
from microbus.reference.schemas import OrderPlaced
from microcosm.api import create_object_graph, load_from_dict

from microbus import HandlerRegistry, MessageTooLargeError, Outcome, SQSMessageDispatcher, Worker
from microbus.testing import wait_for
from microbus.wire.codecs import PubSubMessageCodec
from microbus.wire.payloads import POINTER_CLASS

pytestmark = pytest.mark.integration

MIB = 1024 * 1024


@pytest.fixture
def bucket(microbus_endpoint):
    s3 = microbus_endpoint.settings().client("s3")
    name = f"payloads-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return s3, name


def objects(s3, bucket_name):
    return [item["Key"] for item in s3.list_objects_v2(Bucket=bucket_name).get("Contents", [])]


def make_graph(queue, bucket_name=None, **payload_store):
    extra = {"payload_store": {"bucket": bucket_name, **payload_store}} if bucket_name else {}
    graph = create_object_graph("payloads", testing=True, loader=load_from_dict(queue.graph_config(**extra)))
    graph.use("microbus_sns_producer", "microbus_sqs_consumer")
    return graph


def dispatcher(handler):
    return SQSMessageDispatcher(handler_registry=HandlerRegistry({OrderPlaced.MEDIA_TYPE: handler}))


@pytest.mark.parametrize("size", [1 * MIB, 5 * MIB], ids=["1MiB", "5MiB"])
@pytest.mark.parametrize("raw", [False, True], ids=["enveloped", "raw"])
def test_a_large_payload_round_trips_through_s3_and_its_object_is_gone_after_the_ack(make_queue, bucket, size, raw):
    # Given large payloads on, deleting objects after the ack
    s3, name = bucket
    queue = make_queue(raw=raw)
    graph = make_graph(queue, name, delete_after_ack=True)
    received = []
    # When a message far over the SNS limit is produced
    graph.microbus_sns_producer.produce(OrderPlaced.MEDIA_TYPE, order_id="x" * size)
    # Then its body is in S3 while the message is on the queue
    wait_for(lambda: objects(s3, name), what="the stored payload")
    worker = Worker(consumer=graph.microbus_sqs_consumer, dispatcher=dispatcher(received.append))
    worker.start()
    try:
        # And the handler gets the whole content
        wait_for(lambda: received, what="the handled message", timeout_s=60)
        assert received[0]["order_id"] == "x" * size
        # And the object is deleted once the message was acked
        wait_for(lambda: worker.stats.settled == 1 and not objects(s3, name), what="the object deleted")
    finally:
        worker.stop()
        worker.join()
    assert queue.depth() == 0


def test_what_microbus_writes_is_the_extended_clients_pointer_and_attribute(make_queue, bucket):
    # Given raw delivery, so the SQS message is what an SQS extended client receives
    s3, name = bucket
    queue = make_queue(raw=True)
    graph = make_graph(queue, name)
    graph.microbus_sns_producer.produce(OrderPlaced.MEDIA_TYPE, order_id="y" * 300_000)
    # When the message is received by plain boto3
    raw = wait_for(
        lambda: queue.sqs.receive_message(QueueUrl=queue.queue_url, MessageAttributeNames=["All"]).get("Messages"),
        what="the raw message",
    )[0]
    # Then the body is the pointer and ExtendedPayloadSize the size of the stored body
    pointer = json.loads(raw["Body"])
    assert pointer[0] == "software.amazon.payloadoffloading.PayloadS3Pointer" == POINTER_CLASS
    assert set(pointer[1]) == {"s3BucketName", "s3Key"} and pointer[1]["s3BucketName"] == name
    stored = s3.get_object(Bucket=name, Key=pointer[1]["s3Key"])["Body"].read()
    assert raw["MessageAttributes"]["ExtendedPayloadSize"] == {"DataType": "Number", "StringValue": str(len(stored))}
    assert json.loads(stored)["order_id"] == "y" * 300_000
    # And the media type attribute (for filter policies) is still there
    assert raw["MessageAttributes"]["media_type"]["StringValue"] == OrderPlaced.MEDIA_TYPE


@pytest.mark.parametrize(
    ("pointer_class", "attribute"),
    [
        ("software.amazon.payloadoffloading.PayloadS3Pointer", "ExtendedPayloadSize"),
        ("com.amazon.sqs.javamessaging.MessageS3Pointer", "SQSLargePayloadSize"),
    ],
    ids=["current", "legacy"],
)
def test_a_message_an_extended_client_wrote_is_read(make_queue, bucket, pointer_class, attribute):
    # Given a message sent the way the SQS extended clients send one (Python's json.dumps, with spaces)
    s3, name = bucket
    queue = make_queue()
    graph = make_graph(queue, name)
    body = PubSubMessageCodec(OrderPlaced()).encode({"order_id": "from-java"}, media_type=OrderPlaced.MEDIA_TYPE)
    s3.put_object(Bucket=name, Key="k-1", Body=body.encode())
    queue.sqs.send_message(
        QueueUrl=queue.queue_url,
        MessageBody=json.dumps([pointer_class, {"s3BucketName": name, "s3Key": "k-1"}]),
        MessageAttributes={attribute: {"DataType": "Number", "StringValue": str(len(body))}},
    )
    # When microbus consumes it
    (message,) = wait_for(graph.microbus_sqs_consumer.consume, what="the message")
    # Then the content is the stored body's
    assert message.error is None
    assert message.content["order_id"] == "from-java"


def test_a_missing_object_is_dead_lettered_with_its_reason_and_nothing_else_is_lost(make_queue, bucket):
    # Given an offloaded message whose object was deleted before it was consumed
    s3, name = bucket
    queue = make_queue()
    graph = make_graph(queue, name)
    graph.microbus_sns_producer.produce(OrderPlaced.MEDIA_TYPE, order_id="z" * 300_000)
    for key in wait_for(lambda: objects(s3, name), what="the stored payload"):
        s3.delete_object(Bucket=name, Key=key)
    # When it is handled
    (message,) = wait_for(graph.microbus_sqs_consumer.consume, what="the message")
    handling = dispatcher(lambda content: None)
    result = handling.handle(message)
    handling.apply(result, message, consumer=graph.microbus_sqs_consumer, ack=graph.microbus_sqs_consumer.ack)
    # Then it is rejected with the reason, and the dead letter keeps the pointer
    assert result.outcome is Outcome.REJECTED and result.reason == "payload-missing"
    (dead,) = wait_for(queue.drain_dlq, what="the dead letter")
    assert dead["MessageAttributes"]["microbus.reason"]["StringValue"] == "payload-missing"
    assert POINTER_CLASS in dead["Body"]


def test_a_pointer_to_another_bucket_is_refused(make_queue, bucket):
    # Given a message pointing to a bucket this consumer does not read payloads from
    s3, name = bucket
    queue = make_queue(raw=True)
    graph = make_graph(queue, name)
    other = f"other-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=other)
    s3.put_object(Bucket=other, Key="secret", Body=b'{"mediaType": "x"}')
    queue.sqs.send_message(
        QueueUrl=queue.queue_url,
        MessageBody=json.dumps([POINTER_CLASS, {"s3BucketName": other, "s3Key": "secret"}]),
        MessageAttributes={"ExtendedPayloadSize": {"DataType": "Number", "StringValue": "18"}},
    )
    (message,) = wait_for(graph.microbus_sqs_consumer.consume, what="the message")
    # Then it is not fetched: the message is poison, with a reason that names the bucket
    assert message.content is None
    assert message.error.reason == "payload-pointer-invalid"
    assert other in str(message.error)


def test_with_large_payloads_off_an_oversize_message_fails_as_before(make_queue):
    queue = make_queue()
    graph = make_graph(queue)
    with pytest.raises(MessageTooLargeError, match="over the SNS limit of 262144"):
        graph.microbus_sns_producer.produce(OrderPlaced.MEDIA_TYPE, order_id="x" * 300_000)
    assert queue.depth() == 0
