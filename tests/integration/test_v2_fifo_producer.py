"""The producer publishes to FIFO topics: message group and deduplication ids reach SNS and the queue."""

from __future__ import annotations

import json
import uuid

import pytest
from microbus.reference.schemas import OrderPlaced

from microbus import SchemaRegistry, SNSProducer, SNSTransport, TopicArns
from microbus.testing import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def fifo_pair(microbus_endpoint):
    """A FIFO topic with a FIFO queue subscribed (raw delivery); dummy emulator credentials."""
    name = f"v2-fifo-{uuid.uuid4().hex[:8]}"
    settings = microbus_endpoint.settings()
    sns, sqs = settings.client("sns"), settings.client("sqs")
    topic_arn = sns.create_topic(
        Name=f"{name}.fifo", Attributes={"FifoTopic": "true", "ContentBasedDeduplication": "false"}
    )["TopicArn"]
    queue_url = sqs.create_queue(QueueName=f"{name}.fifo", Attributes={"FifoQueue": "true"})["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn, Attributes={"RawMessageDelivery": "true"})
    return sns, sqs, topic_arn, queue_url


@pytest.mark.timeout(60)
def test_produce_to_a_fifo_topic_with_a_message_group(fifo_pair):
    # Given a producer whose topic is a FIFO topic
    sns, sqs, topic_arn, queue_url = fifo_pair
    producer = SNSProducer(
        transport=SNSTransport(client=sns), schema_registry=SchemaRegistry(), topic_arns=TopicArns(default=topic_arn)
    )
    # When it produces a message with a group id and a deduplication id
    producer.produce(
        OrderPlaced.MEDIA_TYPE, {"order_id": "o-1"}, message_group_id="customer-7", deduplication_id="dedup-o-1"
    )
    # Then the message arrives in the subscribed FIFO queue, in that group, with the content alone
    received = []

    def arrived():
        received.extend(
            sqs.receive_message(
                QueueUrl=queue_url, WaitTimeSeconds=1, MessageSystemAttributeNames=["All"], MaxNumberOfMessages=10
            ).get("Messages", [])
        )
        return received

    wait_for(arrived, timeout_s=20, what="the message in the FIFO queue")
    (message,) = received
    assert message["Attributes"]["MessageGroupId"] == "customer-7"
    body = json.loads(message["Body"])
    assert body["mediaType"] == OrderPlaced.MEDIA_TYPE
    assert body["order_id"] == "o-1"
    assert "message_group_id" not in body and "deduplication_id" not in body
