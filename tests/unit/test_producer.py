"""Producer: validation and size checks happen before any network call; topic choice; batch failures."""

from __future__ import annotations

import json

import boto3
import pytest
from botocore.stub import ANY, Stubber
from microbus.reference.schemas import OrderPlaced, PaymentCaptured

from microbus import MessageTooLargeError, MessageValidationError, PublishError, SNSProducer, TopicArns
from microbus.errors import TopicNotDefinedError, TransientTransportError
from microbus.produce.producer import SNS_MAX_BATCH_BYTES, message_size
from microbus.wire.schemas import SchemaRegistry
from microbus.wire.transport import SNSTransport

TOPIC = "arn:aws:sns:us-east-1:123456789012:orders"
PAYMENTS = "arn:aws:sns:us-east-1:123456789012:payments"


@pytest.fixture
def sns():
    client = boto3.client("sns", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    with Stubber(client) as stubber:
        yield client, stubber
        stubber.assert_no_pending_responses()


def producer(client, **options):
    return SNSProducer(
        transport=SNSTransport(client=client),
        schema_registry=SchemaRegistry(),
        topic_arns=TopicArns(default=TOPIC, mappings={PaymentCaptured.MEDIA_TYPE: PAYMENTS}),
        retry_base_s=0.0,
        **options,
    )


def test_produce_publishes_to_the_topic_of_the_media_type_with_the_media_type_attribute(sns):
    client, stubber = sns
    stubber.add_response(
        "publish",
        {"MessageId": "m-1"},
        {
            "TopicArn": PAYMENTS,
            "Message": ANY,
            "MessageAttributes": {"media_type": {"DataType": "String", "StringValue": PaymentCaptured.MEDIA_TYPE}},
        },
    )
    assert producer(client).produce(PaymentCaptured.MEDIA_TYPE, order_id="o", amount_cents=1) == "m-1"


def test_invalid_content_fails_before_any_network_call(sns):
    client, _ = sns  # no response queued: any call would fail the stubber
    with pytest.raises(MessageValidationError, match="order_id"):
        producer(client).produce(OrderPlaced.MEDIA_TYPE, {"total_cents": 1})


def test_an_oversize_message_fails_before_anything_is_published(sns):
    # Given a topic without a larger MaximumMessageSize (the producer reads its attributes for an oversize message)
    client, stubber = sns
    stubber.add_response("get_topic_attributes", {"Attributes": {}}, {"TopicArn": TOPIC})
    with pytest.raises(MessageTooLargeError, match="over the SNS limit"):
        producer(client).produce(OrderPlaced.MEDIA_TYPE, order_id="x" * 300_000)


def test_a_media_type_without_a_topic_is_a_configuration_error(sns):
    client, _ = sns
    bare = SNSProducer(transport=SNSTransport(client=client), schema_registry=SchemaRegistry(), topic_arns=TopicArns())
    with pytest.raises(TopicNotDefinedError, match="microbus_sns_topic_arns"):
        bare.produce(OrderPlaced.MEDIA_TYPE, order_id="o")


def test_throttling_is_retried_then_succeeds(sns):
    client, stubber = sns
    stubber.add_client_error("publish", "Throttling", http_status_code=400)
    stubber.add_response("publish", {"MessageId": "m-2"})
    assert producer(client).produce(OrderPlaced.MEDIA_TYPE, order_id="o") == "m-2"


def test_the_producer_gives_up_with_a_clear_error(sns):
    client, stubber = sns
    for _ in range(3):
        stubber.add_client_error("publish", "InternalError", http_status_code=500)
    with pytest.raises(TransientTransportError, match="failed transiently"):
        producer(client).produce(OrderPlaced.MEDIA_TYPE, order_id="o")


def test_a_batch_retries_failed_entries_and_reports_those_that_never_succeed(sns):
    client, stubber = sns
    stubber.add_response(
        "publish_batch",
        {"Successful": [{"Id": "0", "MessageId": "a"}], "Failed": [{"Id": "1", "Code": "Busy", "SenderFault": False}]},
    )
    for _ in range(2):
        stubber.add_response(
            "publish_batch", {"Successful": [], "Failed": [{"Id": "0", "Code": "Busy", "SenderFault": False}]}
        )
    with pytest.raises(PublishError) as caught:
        producer(client).produce_batch(OrderPlaced.MEDIA_TYPE, [{"order_id": "1"}, {"order_id": "2"}])
    assert caught.value.message_ids == ["a", None]
    assert list(caught.value.failed) == [1]


def test_deferred_messages_are_published_in_one_batch_at_the_end_of_the_block(sns):
    client, stubber = sns
    stubber.add_response(
        "publish_batch", {"Successful": [{"Id": str(i), "MessageId": f"m{i}"} for i in range(3)], "Failed": []}
    )
    with producer(client).deferred() as deferred:
        for i in range(3):
            deferred.produce(OrderPlaced.MEDIA_TYPE, order_id=str(i))


def test_deferred_messages_are_dropped_when_the_block_raises(sns):
    client, _ = sns
    with pytest.raises(RuntimeError), producer(client).deferred() as deferred:
        deferred.produce(OrderPlaced.MEDIA_TYPE, order_id="1")
        raise RuntimeError("request failed")


def test_opaque_data_carries_the_publish_time_and_the_callers_ids(sns):
    client, _ = sns
    outgoing = producer(client, opaque=lambda: {"x-request-id": "req-1"}).create_message(
        OrderPlaced.MEDIA_TYPE, {"order_id": "o"}
    )
    opaque = json.loads(outgoing.message)["opaqueData"]
    assert opaque["x-request-id"] == "req-1"
    assert float(opaque["x-request-published"]) > 0


@pytest.mark.parametrize(
    ("settings", "sentence"),
    [
        ({"endpoint_url": "127.0.0.1:1"}, "the endpoint URL must look like"),
        ({"profile_name": "no-such-profile-here"}, "AWS profile 'no-such-profile-here' does not exist"),
    ],
)
def test_client_misconfiguration_is_one_clear_sentence(settings, sentence):
    from microbus import AWSSettings, ConfigurationError

    with pytest.raises(ConfigurationError, match=sentence):
        AWSSettings(**settings).client("sqs")


def test_the_secret_key_is_not_in_the_settings_repr():
    from microbus import AWSSettings

    assert "hunter2" not in repr(AWSSettings(access_key_id="AK", secret_access_key="hunter2"))


def test_a_batch_that_fails_for_good_midway_reports_what_was_sent_and_what_was_not(sns):
    # Given a topic that accepts the first PublishBatch and then refuses access
    client, stubber = sns
    stubber.add_response(
        "publish_batch", {"Successful": [{"Id": str(i), "MessageId": f"m{i}"} for i in range(10)], "Failed": []}
    )
    stubber.add_client_error("publish_batch", "AuthorizationError", http_status_code=403)
    # When 15 messages are produced
    with pytest.raises(PublishError) as caught:
        producer(client).produce_batch(OrderPlaced.MEDIA_TYPE, [{"order_id": str(i)} for i in range(15)])
    # Then the error says which were published and which were not, instead of a bare transport error
    assert caught.value.message_ids == [f"m{i}" for i in range(10)] + [None] * 5
    assert sorted(caught.value.failed) == list(range(10, 15))
    assert "AuthorizationError" in str(caught.value)


class RecordingTransport:
    """Stands in for SNSTransport: accepts every PublishBatch and records what each carried."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[str, dict]]] = []

    def publish_batch(self, topic_arn, entries, **_):
        self.batches.append(list(entries))
        start = sum(len(batch) for batch in self.batches[:-1])
        return [f"m{start + i}" for i in range(len(entries))], {}


def batch_bytes(batch):
    return sum(message_size(message, attributes) for message, attributes in batch)


def recording_producer():
    transport = RecordingTransport()
    return transport, SNSProducer(transport=transport, schema_registry=SchemaRegistry(), topic_arns=TopicArns(TOPIC))


def test_a_batch_is_split_so_that_no_publish_batch_is_over_256_kib():
    # Given 10 messages of 40 KiB (410 KiB in all: under 10 messages, over 256 KiB)
    transport, microbus_sns_producer = recording_producer()
    contents = [{"order_id": str(i) * 40 * 1024} for i in range(10)]
    # When they are produced as a batch
    ids = microbus_sns_producer.produce_batch(OrderPlaced.MEDIA_TYPE, contents)
    # Then they go out in at least two PublishBatch calls, each within SNS's limit, all of them in order
    assert len(transport.batches) >= 2
    assert all(batch_bytes(batch) <= SNS_MAX_BATCH_BYTES for batch in transport.batches)
    sent = [json.loads(message)["order_id"] for batch in transport.batches for message, _ in batch]
    assert sent == [content["order_id"] for content in contents]
    assert ids == [f"m{i}" for i in range(10)]


def test_a_message_near_the_limit_goes_alone():
    transport, microbus_sns_producer = recording_producer()
    empty = microbus_sns_producer.create_message(OrderPlaced.MEDIA_TYPE, order_id="")
    near = SNS_MAX_BATCH_BYTES - message_size(empty.message, empty.message_attributes) - 100
    contents = [{"order_id": "a"}, {"order_id": "b" * near}, {"order_id": "c"}]
    microbus_sns_producer.produce_batch(OrderPlaced.MEDIA_TYPE, contents)
    assert [len(batch) for batch in transport.batches] == [1, 1, 1]
    assert all(batch_bytes(batch) <= SNS_MAX_BATCH_BYTES for batch in transport.batches)


def test_small_messages_still_go_10_at_a_time():
    transport, microbus_sns_producer = recording_producer()
    microbus_sns_producer.produce_batch(OrderPlaced.MEDIA_TYPE, [{"order_id": str(i)} for i in range(25)])
    assert [len(batch) for batch in transport.batches] == [10, 10, 5]
