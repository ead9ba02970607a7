"""Topology plan/apply/describe against the emulator (moto or LocalStack), and the daemon's start check."""

from __future__ import annotations

import json
import uuid

import pytest
from microbus.reference.daemons.orders import OrdersDaemon
from microbus.reference.schemas import OrderPlaced, PaymentCaptured

from microbus.testing import wait_for
from microbus.topology import (
    Daemon,
    Queue,
    Subscription,
    Table,
    Topic,
    Topology,
    apply_topology,
    describe_topology,
    plan_topology,
)

pytestmark = pytest.mark.integration
ORDER, PAYMENT = OrderPlaced.MEDIA_TYPE, PaymentCaptured.MEDIA_TYPE


def shop(prefix: str, **queue_options) -> Topology:
    """A small application: two topics, a consumer queue subscribed to both, a callback queue, a fan-in table."""
    return Topology(
        topics=(Topic(name=f"{prefix}-orders", media_types=(ORDER,)), Topic(name=f"{prefix}-payments")),
        default_topic=f"{prefix}-payments",
        queues=(
            Queue(
                name=f"{prefix}-orders",
                subscriptions=(
                    Subscription(topic=f"{prefix}-orders"),
                    Subscription(topic=f"{prefix}-payments", raw=True),
                ),
                **queue_options,
            ),
            Queue(name=f"{prefix}-callbacks", max_receive_count=3),
        ),
        tables=(Table(name=f"{prefix}-fanin"),),
        daemons=(Daemon.of(OrdersDaemon, queue=f"{prefix}-orders", sends_to=(f"{prefix}-callbacks",)),),
    )


@pytest.fixture
def prefix():
    return f"tp-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def clients(microbus_endpoint):
    return microbus_endpoint.clients()


def test_apply_creates_everything_and_a_second_apply_changes_nothing(clients, prefix):
    topology = shop(prefix)
    # Given nothing exists, the plan creates every resource
    plan = plan_topology(topology, **clients)
    assert {(c.action.name, c.kind) for c in plan.changes} >= {("CREATE", "topic"), ("CREATE", "table")}
    assert not [c for c in plan.changes if c.action.name != "CREATE"]
    # When applied twice
    first = apply_topology(topology, **clients)
    second = apply_topology(topology, **clients)
    # Then the first created what the plan said, the second changed nothing, and the plan agrees
    assert [c.name for c in first.plan.pending] == [c.name for c in plan.pending]
    assert not second.plan.has_changes, second.plan.lines()
    assert not plan_topology(topology, **clients).has_changes
    assert second.queue_urls == first.queue_urls


def test_describe_shows_the_live_settings(clients, prefix):
    applied = apply_topology(shop(prefix, visibility_timeout_s=45), **clients)
    description = describe_topology(shop(prefix, visibility_timeout_s=45), **clients)
    queue = description["queues"][f"{prefix}-orders"]
    assert queue["visibility_timeout_s"] == 45
    assert queue["max_receive_count"] == 5
    assert queue["dead_letter_target_arn"] == applied.queue_arns[f"{prefix}-orders-dlq"]
    assert queue["has_policy"]
    subscription = description["subscriptions"][f"{prefix}-payments → {prefix}-orders"]
    assert subscription["raw"] is True
    assert subscription["media_types"] == [ORDER, PAYMENT]
    assert description["tables"][f"{prefix}-fanin"] == {
        "status": "ACTIVE",
        "partition_key": "pk",
        "ttl_attribute": "expires_at",
    }
    assert description["queues"][f"{prefix}-callbacks-dlq"]["message_retention_s"] == 14 * 86_400
    # And what is not there is reported as missing
    assert describe_topology(shop(prefix + "x"), **clients)["queues"][f"{prefix}x-orders"] is None


def test_drift_is_planned_as_updates_and_apply_repairs_it(clients, prefix):
    topology = shop(prefix)
    applied = apply_topology(topology, **clients)
    sqs, sns = clients["sqs"], clients["sns"]
    # Given someone changed the queue by hand and switched a subscription to raw without filter
    sqs.set_queue_attributes(QueueUrl=applied.queue_urls[f"{prefix}-orders"], Attributes={"VisibilityTimeout": "5"})
    subscription = describe_topology(topology, **clients)["subscriptions"][f"{prefix}-orders → {prefix}-orders"]
    sns.set_subscription_attributes(
        SubscriptionArn=subscription["arn"], AttributeName="RawMessageDelivery", AttributeValue="true"
    )
    sns.set_subscription_attributes(
        SubscriptionArn=subscription["arn"], AttributeName="FilterPolicy", AttributeValue="{}"
    )
    # Then the plan shows exactly those differences
    plan = plan_topology(topology, **clients)
    lines = "\n".join(plan.lines())
    assert f"~ update queue {prefix}-orders\n    VisibilityTimeout: 5 → 30" in lines
    assert f"~ update subscription {prefix}-orders → {prefix}-orders" in lines
    assert "RawMessageDelivery: true → false" in lines
    assert "FilterPolicy: {} → " in lines
    # And apply repairs them
    assert apply_topology(topology, **clients).plan.has_changes
    assert not plan_topology(topology, **clients).has_changes


def test_a_filter_can_be_removed_again(clients, prefix):
    # Given a queue subscribed with a filter
    filtered = Topology(
        topics=(f"{prefix}-t",),
        queues=(Queue(name=f"{prefix}-q", subscriptions=(Subscription(topic=f"{prefix}-t", media_types=(ORDER,)),)),),
    )
    apply_topology(filtered, **clients)
    # When the topology drops the filter (an unfiltered subscription: warned about, but allowed)
    unfiltered = Topology(
        topics=(f"{prefix}-t",), queues=(Queue(name=f"{prefix}-q", subscriptions=(Subscription(topic=f"{prefix}-t"),)),)
    )
    applied = apply_topology(unfiltered, **clients)
    # Then the filter is gone, whatever each emulator reads back for an emptied filter
    assert any("without a media_type filter" in w for w in applied.plan.warnings)
    assert not plan_topology(unfiltered, **clients).has_changes
    assert describe_topology(unfiltered, **clients)["subscriptions"][f"{prefix}-t → {prefix}-q"]["media_types"] is None


def test_messages_follow_the_routes_and_filters(microbus_endpoint, clients, prefix):
    # Given the applied topology and a producer configured from it
    applied = apply_topology(shop(prefix), **clients)
    from microcosm.api import create_object_graph, load_from_dict

    config = {**microbus_endpoint.config(), "microbus_sns_topic_arns": applied.sns_topic_arns_config()}
    config["microbus_sqs_consumer"] = {"sqs_queue_url": applied.queue_urls[f"{prefix}-orders"], "wait_seconds": 1}
    graph = create_object_graph("topology-test", testing=True, loader=load_from_dict(config))
    # When it produces both media types and one nobody handles
    graph.microbus_sns_producer.produce(ORDER, order_id="o-1")
    graph.microbus_sns_producer.produce(PAYMENT, order_id="o-1", amount_cents=5)
    clients["sns"].publish(
        TopicArn=applied.topic_arns[f"{prefix}-payments"],
        Message="{}",
        MessageAttributes={"media_type": {"DataType": "String", "StringValue": "application/vnd.unhandled"}},
    )
    # Then the queue receives the two handled ones (each through its own topic), not the third
    received = []
    wait_for(lambda: received.extend(graph.microbus_sqs_consumer.consume()) or len(received) >= 2, what="2 messages")
    assert sorted(m.media_type for m in received) == [ORDER, PAYMENT]
    assert not graph.microbus_sqs_consumer.consume()


def test_a_fifo_topic_delivers_to_a_fifo_queue(microbus_endpoint, clients, prefix):
    topology = Topology(
        topics=(Topic(name=f"{prefix}.fifo", fifo=True, content_based_deduplication=True),),
        queues=(
            Queue(
                name=f"{prefix}-q.fifo",
                fifo=True,
                subscriptions=(Subscription(topic=f"{prefix}.fifo", media_types=(ORDER,)),),
            ),
        ),
    )
    applied = apply_topology(topology, **clients)
    assert applied.queue_urls[f"{prefix}-q-dlq.fifo"]
    assert not apply_topology(topology, **clients).plan.has_changes
    clients["sns"].publish(
        TopicArn=applied.topic_arns[f"{prefix}.fifo"],
        Message=json.dumps({"n": 1}),
        MessageGroupId="g",
        # moto wants an explicit id (or content-based dedup on the queue) even though the topic has it on
        MessageDeduplicationId="d-1",
        MessageAttributes={"media_type": {"DataType": "String", "StringValue": ORDER}},
    )
    url = applied.queue_urls[f"{prefix}-q.fifo"]
    assert wait_for(lambda: clients["sqs"].receive_message(QueueUrl=url, WaitTimeSeconds=1).get("Messages"), what="1")


def test_the_daemon_warns_at_start_when_its_queue_disagrees(microbus_endpoint, clients, prefix, caplog):
    # Given a queue with a visibility timeout shorter than the orders handler timeout (10s) and no DLQ
    topology = Topology(queues=(Queue(name=f"{prefix}-q", visibility_timeout_s=5, max_receive_count=None),))
    url = apply_topology(topology, **clients).queue_urls[f"{prefix}-q"]
    daemon = OrdersDaemon(testing=True, **microbus_endpoint.config(), microbus_sqs_consumer={"sqs_queue_url": url})
    # When it checks its queue
    warnings = daemon.check_queue()
    # Then it warns about each problem, and that this is not the queue the topology gives it
    text = " ".join(warnings)
    assert "visibility timeout of 5s, shorter than the handler timeout of 10s" in text
    assert "no redrive policy" in text
    assert "is not the queue 'orders'" in text
    assert "shorter than the handler timeout" in caplog.text


def test_without_a_queue_url_the_daemon_consumes_the_queue_its_topology_declares(microbus_endpoint, clients, prefix):
    # Given a daemon class whose topology gives it a queue
    topology = Topology(queues=(Queue(name=f"{prefix}-q"),), daemons=(Daemon.of(OrdersDaemon, queue=f"{prefix}-q"),))
    url = apply_topology(topology, **clients).queue_urls[f"{prefix}-q"]
    daemon_class = type("DeclaredOrdersDaemon", (OrdersDaemon,), {"topology": topology})
    # When it is built without --sqs-queue-url
    daemon = daemon_class(testing=True, **microbus_endpoint.config())
    # Then it consumes that queue, and finds nothing to warn about
    assert daemon.graph.microbus_sqs_consumer.queue_url == url
    assert daemon.check_queue() == []


def test_a_declared_queue_that_does_not_exist_stops_the_daemon_with_one_sentence(microbus_endpoint, prefix):
    from microbus.errors import QueueNotFoundError

    topology = Topology(
        queues=(Queue(name=f"{prefix}-absent"),), daemons=(Daemon.of(OrdersDaemon, queue=f"{prefix}-absent"),)
    )
    daemon_class = type("DeclaredOrdersDaemon", (OrdersDaemon,), {"topology": topology})
    with pytest.raises(
        QueueNotFoundError, match=rf"SQS queue {prefix}-absent does not exist: create it \(microbus topology apply\)"
    ):
        daemon_class(testing=True, **microbus_endpoint.config()).create_object_graph()
