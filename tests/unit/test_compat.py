"""microbus.compat: microcosm-pubsub's import paths and behaviours, mapped onto microbus."""

from __future__ import annotations

from unittest.mock import MagicMock

import boto3
import pytest
from hamcrest import all_of, assert_that, is_not
from marshmallow import fields

from microbus import ConfigurationError, MessageValidationError, SNSProducer, TopicArns
from microbus.compat.codecs import PubSubMessageSchema
from microbus.compat.conventions import (
    ChangedURIMessageSchema,
    IdentityMessageSchema,
    URIMessageSchema,
    changed,
    created,
    deleted,
    media_type,
    name_for,
)
from microbus.compat.daemon import ConsumerDaemon
from microbus.compat.matchers import (
    has_media_type,
    has_uri,
    mock_sns_client,
    published,
    published_inanyorder,
    published_messages_for,
    published_nothing,
)
from microbus.compat.producer import deferred, deferred_batch
from microbus.errors import UnknownMediaTypeError
from microbus.wire.schemas import SchemaRegistry
from microbus.wire.transport import SNSTransport

TOPIC = "arn:aws:sns:us-east-1:123456789012:orders"
ORDER_CREATED = "application/vnd.globality.pubsub._.created.order"


class Order(PubSubMessageSchema):
    MEDIA_TYPE = "application/vnd.example.order"
    order_id = fields.String(required=True)


def producer(**schemas):
    client = boto3.client("sns", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    registry = SchemaRegistry({Order.MEDIA_TYPE: Order, **schemas}, auto_register=True)
    return SNSProducer(transport=SNSTransport(client=client), schema_registry=registry, topic_arns=TopicArns(TOPIC))


def test_convention_media_types_are_the_peer_s():
    class OrderLine:
        pass

    assert created("order") == ORDER_CREATED
    assert changed(OrderLine) == "application/vnd.globality.pubsub._.changed.order_line"
    assert deleted("Order", organization="acme", public=True) == "application/vnd.acme.pubsub.deleted.order"
    assert media_type("created")("order") == ORDER_CREATED
    assert name_for(type("X", (), {"__alias__": "SomeThing"})) == "some_thing"


def test_auto_register_gives_convention_media_types_their_schemas():
    registry = SchemaRegistry({}, auto_register=True)
    assert isinstance(registry.find(created("order")).schema, URIMessageSchema.__mro__[1])
    assert type(registry.find(deleted("order")).schema).__name__ == IdentityMessageSchema.__name__
    assert type(registry.find(changed("order")).schema).__name__ == ChangedURIMessageSchema.__name__
    assert created("order") in registry and "application/vnd.example.other" not in registry
    with pytest.raises(UnknownMediaTypeError):
        SchemaRegistry({}).find(created("order"))  # microbus's default: off


def test_a_convention_message_needs_its_uri():
    sns = producer()
    assert '"uri":"http://orders/1"' in sns.create_message(ORDER_CREATED, uri="http://orders/1").message
    with pytest.raises(MessageValidationError, match="uri"):
        sns.create_message(ORDER_CREATED)


def test_compat_schemas_drop_undeclared_fields_as_the_peer_does():
    message = producer().create_message(Order.MEDIA_TYPE, order_id="o-1", extra="dropped").message
    assert "extra" not in message and '"order_id":"o-1"' in message


def test_matchers_read_a_producer_with_a_mocked_client():
    sns = producer()
    mock_sns_client(sns)
    assert_that(sns, published_nothing())
    sns.produce(Order.MEDIA_TYPE, order_id="o-1")
    sns.produce(ORDER_CREATED, uri="http://orders/1")
    sns.produce_batch(Order.MEDIA_TYPE, [{"order_id": "o-2"}])
    assert_that(
        sns,
        published(has_media_type(Order.MEDIA_TYPE), has_uri("http://orders/1"), has_media_type(Order.MEDIA_TYPE)),
    )
    order = has_media_type(Order.MEDIA_TYPE)
    assert_that(sns, published_inanyorder(order, has_uri("http://orders/1"), order))
    assert_that(sns, is_not(published(has_uri("http://orders/1"))))
    assert [m.topic_arn for m in published_messages_for(sns)] == [TOPIC] * 3


def test_matchers_read_a_mocked_producer_and_refuse_a_real_one():
    mock = MagicMock()
    mock.produce(ORDER_CREATED, uri="http://orders/1")
    assert_that(mock, all_of(published(has_media_type(ORDER_CREATED)), published(has_uri("http://orders/1"))))
    with pytest.raises(TypeError, match="mock_sns_client"):
        published_messages_for(producer())


@pytest.mark.parametrize("decorator", [deferred, deferred_batch])
def test_deferred_publishes_when_the_function_returns_and_nothing_when_it_raises(decorator):
    class Component:
        def __init__(self, graph):
            self.graph = graph
            self.sns_producer = graph.sns_producer

        def create(self, fail=False):
            @decorator(self)
            def inner():
                self.sns_producer.produce(Order.MEDIA_TYPE, order_id="o-1")
                self.sns_producer.produce(Order.MEDIA_TYPE, order_id="o-2")
                assert published_messages_for(self.graph.sns_producer) == []  # not yet
                if fail:
                    raise RuntimeError("rolled back")

            return inner()

    graph = MagicMock()
    graph.sns_producer = producer()
    mock_sns_client(graph.sns_producer)
    component = Component(graph)
    with pytest.raises(RuntimeError):
        component.create(fail=True)
    assert published_messages_for(graph.sns_producer) == []
    component.create()
    assert len(published_messages_for(graph.sns_producer)) == 2
    assert component.sns_producer is graph.sns_producer


def test_a_daemon_name_may_be_a_property_and_the_peer_s_defaults_apply():
    class Example(ConsumerDaemon):
        @property
        def name(self):
            return "example"

    assert Example.name == "example"
    defaults = Example().defaults
    assert defaults["microbus_sqs_message_dispatcher"] == {"skip_unknown_media_types": True}
    assert defaults["microbus_pubsub_message_schema_registry"] == {"auto_register": True}


def test_a_name_property_that_needs_the_instance_is_one_clear_error():
    with pytest.raises(ConfigurationError, match="class attribute"):

        class Broken(ConsumerDaemon):
            @property
            def name(self):
                return self.args.name
