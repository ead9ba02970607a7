"""Producing to FIFO topics: message group ids (argument, producer mapping, schema field), dedup ids."""

from __future__ import annotations

import json
import logging

import boto3
import pytest
from botocore.stub import Stubber
from marshmallow import fields
from microbus.reference.schemas import OrderPlaced
from microcosm.api import create_object_graph, load_from_dict

from microbus import ConfigurationError, MessageValidationError, PubSubMessageSchema, SNSProducer, TopicArns
from microbus.wire.schemas import SchemaRegistry
from microbus.wire.transport import SNSTransport

FIFO = "arn:aws:sns:us-east-1:123456789012:orders.fifo"
STANDARD = "arn:aws:sns:us-east-1:123456789012:orders"
GROUPED = "application/vnd.microbus.test.fifo.grouped"
UNGROUPED = "application/vnd.microbus.test.fifo.ungrouped"


class Grouped(PubSubMessageSchema):
    MEDIA_TYPE = GROUPED
    MESSAGE_GROUP_ID_FIELD = "order_id"

    order_id = fields.String(required=True)
    customer_id = fields.String(required=False)
    n = fields.Integer(required=False)


class Ungrouped(PubSubMessageSchema):
    MEDIA_TYPE = UNGROUPED

    order_id = fields.String(required=False)
    customer_id = fields.String(required=False)


@pytest.fixture
def sns():
    client = boto3.client("sns", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    calls: list[tuple[str, dict]] = []

    def record(params, model, **_):
        calls.append((model.name, dict(params)))

    client.meta.events.register("provide-client-params.sns.*", record)
    with Stubber(client) as stubber:
        yield client, stubber, calls
        stubber.assert_no_pending_responses()


def producer(client, topic=FIFO, **options):
    return SNSProducer(
        transport=SNSTransport(client=client),
        schema_registry=SchemaRegistry({GROUPED: Grouped, UNGROUPED: Ungrouped}),
        topic_arns=TopicArns(default=topic),
        retry_base_s=0.0,
        **options,
    )


def topic_attributes(stubber, content_based_deduplication=False, topic=FIFO):
    stubber.add_response(
        "get_topic_attributes",
        {"Attributes": {"FifoTopic": "true", "ContentBasedDeduplication": str(content_based_deduplication).lower()}},
        {"TopicArn": topic},
    )


def stamped_id(params):
    return json.loads(params["Message"])["opaqueData"]["x-microbus-message-id"]


def publishes(calls):
    return [params for name, params in calls if name == "Publish"]


def test_an_explicit_group_id_is_sent_with_the_stamped_message_id_as_deduplication_id(sns):
    client, stubber, calls = sns
    topic_attributes(stubber)
    stubber.add_response("publish", {"MessageId": "m-1"})
    assert producer(client).produce(UNGROUPED, customer_id="c", message_group_id="g-1") == "m-1"
    (params,) = publishes(calls)
    assert params["MessageGroupId"] == "g-1"
    assert params["MessageDeduplicationId"] == stamped_id(params)
    assert "message_group_id" not in json.loads(params["Message"])


def test_the_group_id_comes_from_the_schemas_message_group_id_field(sns):
    client, stubber, calls = sns
    topic_attributes(stubber)
    stubber.add_response("publish", {"MessageId": "m-1"})
    producer(client).produce(GROUPED, order_id="o-7")
    assert publishes(calls)[0]["MessageGroupId"] == "o-7"


@pytest.mark.parametrize("source", ["customer_id", lambda content: f"c:{content['customer_id']}"])
def test_the_producers_group_ids_mapping_gives_a_field_name_or_a_callable(sns, source):
    client, stubber, calls = sns
    topic_attributes(stubber)
    stubber.add_response("publish", {"MessageId": "m-1"})
    producer(client, group_ids={UNGROUPED: source}).produce(UNGROUPED, {"customer_id": "c-3"})
    assert publishes(calls)[0]["MessageGroupId"] in {"c-3", "c:c-3"}


def test_an_explicit_group_id_wins_over_the_mapping_which_wins_over_the_schema_field(sns):
    client, stubber, calls = sns
    topic_attributes(stubber)
    stubber.add_response("publish", {"MessageId": "m-1"})
    stubber.add_response("publish", {"MessageId": "m-2"})
    fifo = producer(client, group_ids={GROUPED: "customer_id"})
    fifo.produce(GROUPED, order_id="o", customer_id="c", message_group_id="explicit")
    fifo.produce(GROUPED, order_id="o", customer_id="c")
    assert [params["MessageGroupId"] for params in publishes(calls)] == ["explicit", "c"]


def test_topic_attributes_are_read_once_and_content_based_deduplication_leaves_the_id_to_sns(sns):
    client, stubber, calls = sns
    topic_attributes(stubber, content_based_deduplication=True)  # queued once: a second read would fail
    for i in range(2):
        stubber.add_response("publish", {"MessageId": f"m-{i}"})
    fifo = producer(client)
    fifo.produce(GROUPED, order_id="o-1")
    fifo.produce(GROUPED, order_id="o-2")
    assert [name for name, _ in calls] == ["GetTopicAttributes", "Publish", "Publish"]
    assert all("MessageDeduplicationId" not in params for params in publishes(calls))


def test_an_explicit_deduplication_id_is_sent_without_reading_the_topic(sns):
    client, stubber, calls = sns
    stubber.add_response("publish", {"MessageId": "m-1"})
    producer(client).produce(GROUPED, order_id="o-1", deduplication_id="d-1")
    assert [name for name, _ in calls] == ["Publish"]
    assert publishes(calls)[0]["MessageDeduplicationId"] == "d-1"


def test_a_retried_publish_sends_the_same_deduplication_id(sns):
    client, stubber, calls = sns
    topic_attributes(stubber)
    stubber.add_client_error("publish", "Throttling", http_status_code=400)
    stubber.add_response("publish", {"MessageId": "m-1"})
    producer(client).produce(GROUPED, order_id="o-1")
    first, second = publishes(calls)
    assert first["MessageDeduplicationId"] == second["MessageDeduplicationId"] == stamped_id(first)


def test_a_fifo_publish_without_a_group_id_source_fails_before_any_network_call(sns):
    client, _, calls = sns  # nothing queued: any call would fail the stubber
    with pytest.raises(ConfigurationError) as caught:
        producer(client).produce(UNGROUPED, customer_id="c")
    message = str(caught.value)
    assert "FIFO topic" in message and UNGROUPED in message
    for how in ("message_group_id=", "group_ids", "MESSAGE_GROUP_ID_FIELD"):
        assert how in message
    assert calls == []


def test_a_missing_group_id_field_value_fails_before_any_network_call(sns):
    client, _, calls = sns
    with pytest.raises(MessageValidationError, match="customer_id"):
        producer(client, group_ids={UNGROUPED: "customer_id"}).produce(UNGROUPED, order_id="o")
    assert calls == []


def test_a_group_id_field_the_schema_does_not_have_is_a_configuration_error(sns):
    client, _, calls = sns
    with pytest.raises(ConfigurationError, match="no_such_field"):
        producer(client, group_ids={UNGROUPED: "no_such_field"}).produce(UNGROUPED, order_id="o")
    assert calls == []


@pytest.mark.parametrize("group_id", ["", "x" * 129, "caf\u00e9", "tab\t", None, ["a"]])
def test_an_invalid_group_id_fails_before_any_network_call(sns, group_id):
    client, _, calls = sns
    with pytest.raises(MessageValidationError, match="message group id"):
        producer(client, group_ids={UNGROUPED: lambda content: group_id}).produce(UNGROUPED, order_id="o")
    assert calls == []


def test_a_batch_to_a_fifo_topic_carries_group_and_deduplication_ids_per_entry(sns):
    client, stubber, calls = sns
    topic_attributes(stubber)
    stubber.add_response(
        "publish_batch", {"Successful": [{"Id": str(i), "MessageId": f"m{i}"} for i in range(3)], "Failed": []}
    )
    ids = producer(client).produce_batch(GROUPED, [{"order_id": f"o-{i % 2}", "n": i} for i in range(3)])
    assert ids == ["m0", "m1", "m2"]
    (batch,) = [params for name, params in calls if name == "PublishBatch"]
    entries = batch["PublishBatchRequestEntries"]
    assert [entry["MessageGroupId"] for entry in entries] == ["o-0", "o-1", "o-0"]
    assert [entry["MessageDeduplicationId"] for entry in entries] == [stamped_id(entry) for entry in entries]
    assert len({entry["MessageDeduplicationId"] for entry in entries}) == 3


def test_a_batch_takes_one_explicit_group_id_and_deduplication_ids_per_content(sns):
    client, stubber, calls = sns
    topic_attributes(stubber, content_based_deduplication=True)
    stubber.add_response(
        "publish_batch", {"Successful": [{"Id": str(i), "MessageId": f"m{i}"} for i in range(2)], "Failed": []}
    )
    producer(client).produce_batch(
        UNGROUPED, [{"order_id": "a"}, {"order_id": "b"}], message_group_id="all", deduplication_ids=["d-a", None]
    )
    entries = calls[-1][1]["PublishBatchRequestEntries"]
    assert [entry["MessageGroupId"] for entry in entries] == ["all", "all"]
    assert entries[0]["MessageDeduplicationId"] == "d-a"
    assert "MessageDeduplicationId" not in entries[1]  # content-based deduplication: left to SNS


def test_a_batch_with_a_missing_group_id_sends_nothing(sns):
    client, _, calls = sns
    with pytest.raises(MessageValidationError, match="order_id"):
        producer(client, group_ids={UNGROUPED: "order_id"}).produce_batch(
            UNGROUPED, [{"order_id": "a"}, {"customer_id": "no order id"}]
        )
    assert calls == []


def test_deferred_messages_to_a_fifo_topic_carry_their_group_ids(sns):
    client, stubber, calls = sns
    topic_attributes(stubber)
    stubber.add_response(
        "publish_batch", {"Successful": [{"Id": str(i), "MessageId": f"m{i}"} for i in range(2)], "Failed": []}
    )
    with producer(client).deferred() as deferred:
        deferred.produce(GROUPED, order_id="o-1")
        deferred.produce(UNGROUPED, order_id="o-2", message_group_id="g-2", deduplication_id="d-2")
    entries = calls[-1][1]["PublishBatchRequestEntries"]
    assert [entry["MessageGroupId"] for entry in entries] == ["o-1", "g-2"]
    assert [entry["MessageDeduplicationId"] for entry in entries] == [stamped_id(entries[0]), "d-2"]


def test_a_deferred_fifo_message_without_a_group_id_fails_when_produced_not_at_the_end(sns):
    client, _, calls = sns
    with pytest.raises(ConfigurationError, match="message group id"), producer(client).deferred() as deferred:
        deferred.produce(UNGROUPED, order_id="o")
    assert calls == []


def test_standard_topics_get_no_group_or_deduplication_id_and_no_attribute_lookup(sns):
    client, stubber, calls = sns
    stubber.add_response("publish", {"MessageId": "m-1"})
    producer(client, topic=STANDARD).produce(GROUPED, order_id="o-1", message_group_id="ignored")
    assert [name for name, _ in calls] == ["Publish"]
    assert "MessageGroupId" not in calls[0][1] and "MessageDeduplicationId" not in calls[0][1]


def test_without_permission_to_read_the_topic_the_stamped_id_is_sent(sns, caplog):
    client, stubber, calls = sns
    stubber.add_client_error("get_topic_attributes", "AuthorizationError", http_status_code=403)
    stubber.add_response("publish", {"MessageId": "m-1"})
    stubber.add_response("publish", {"MessageId": "m-2"})
    fifo = producer(client)
    with caplog.at_level(logging.WARNING):
        fifo.produce(GROUPED, order_id="o-1")
        fifo.produce(GROUPED, order_id="o-2")
    assert [name for name, _ in calls] == ["GetTopicAttributes", "Publish", "Publish"]
    assert all(params["MessageDeduplicationId"] == stamped_id(params) for params in publishes(calls))
    assert "ContentBasedDeduplication" in caplog.text


def test_the_graph_reads_group_ids_from_sns_producer_config():
    graph = create_object_graph(
        "fifo-test",
        testing=True,
        loader=load_from_dict(
            {
                "aws": {"endpoint_url": "http://127.0.0.1:1", "access_key_id": "x", "secret_access_key": "x"},
                "microbus_sns_topic_arns": {"default": FIFO},
                "microbus_sns_producer": {"group_ids": {OrderPlaced.MEDIA_TYPE: "customer_id"}},
            }
        ),
    )
    outgoing = graph.microbus_sns_producer.create_message(OrderPlaced.MEDIA_TYPE, order_id="o", customer_id="c-9")
    assert outgoing.message_group_id == "c-9"


def test_an_integer_field_gives_its_decimal_text_as_group_id(sns):
    client, stubber, calls = sns
    topic_attributes(stubber)
    stubber.add_response("publish", {"MessageId": "m-1"})
    producer(client, group_ids={GROUPED: "n"}).produce(GROUPED, order_id="o", n=42)
    assert publishes(calls)[0]["MessageGroupId"] == "42"


def test_a_hand_made_outgoing_message_to_a_fifo_topic_without_a_group_id_is_not_sent(sns):
    from microbus.produce.producer import OutgoingMessage

    client, _, calls = sns
    outgoing = OutgoingMessage(UNGROUPED, FIFO, "{}", {})
    with pytest.raises(ConfigurationError, match="no message group id"):
        producer(client).publish(outgoing)
    with pytest.raises(ConfigurationError, match="no message group id"):
        producer(client).publish_many([outgoing])
    assert calls == []
