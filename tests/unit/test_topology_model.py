"""The topology model: normalisation, filters derived from daemons, routing, validation."""

from __future__ import annotations

import pytest
from microbus.reference.daemons.orders import TOPOLOGY, OrdersDaemon
from microbus.reference.schemas import OrderPlaced, PaymentCaptured

from microbus.errors import TopologyError
from microbus.topology import Daemon, Producer, Queue, Subscription, Table, Topic, Topology, handled_media_types

ORDER, PAYMENT = OrderPlaced.MEDIA_TYPE, PaymentCaptured.MEDIA_TYPE


def test_media_types_may_be_given_as_schema_classes_and_lists():
    subscription = Subscription(topic="t", media_types=[PaymentCaptured, ORDER])
    assert subscription.media_types == (ORDER, PAYMENT)


def test_a_subscription_without_media_types_filters_on_what_the_queues_daemon_handles():
    # Given the reference topology, whose subscription names no media types
    queue = TOPOLOGY.queue("orders")
    # Then its filter is the orders daemon's @handles set
    assert TOPOLOGY.filter_media_types(queue, queue.subscriptions[0]) == (ORDER, PAYMENT)
    assert handled_media_types(OrdersDaemon) == (ORDER, PAYMENT)


def test_daemon_of_a_class_takes_its_name_media_types_and_handler_timeout():
    daemon = Daemon.of(OrdersDaemon, queue="orders")
    assert (daemon.name, daemon.handles, daemon.handler_timeout_s) == ("orders", (ORDER, PAYMENT), 10.0)


def test_media_types_are_routed_to_their_topic_else_the_default():
    topology = Topology(topics=(Topic(name="a", media_types=(ORDER,)), "b"), default_topic="b")
    assert topology.topic_for(ORDER) == "a"
    assert topology.topic_for(PAYMENT) == "b"


def test_fifo_queues_get_a_fifo_dead_letter_queue():
    queue = Queue(name="jobs.fifo", fifo=True)
    assert queue.dead_letter_queue_name == "jobs-dlq.fifo"
    assert queue.dead_letter_queue().fifo
    assert Queue(name="q", max_receive_count=None).dead_letter_queue() is None


def test_the_reference_topology_is_valid_without_warnings():
    assert TOPOLOGY.validate() == []


def test_a_callback_queue_and_a_fan_in_table_can_be_expressed():
    topology = Topology(
        queues=(Queue(name="callbacks", max_receive_count=3),),
        tables=(Table(name="fanin", ttl_attribute="expires_at"),),
        producers=(Producer(name="invoker", sends_to=("callbacks",), tables=("fanin",)),),
    )
    assert topology.validate() == []


@pytest.mark.parametrize(
    ("topology", "message"),
    [
        (Topology(queues=(Queue(name="q", subscriptions=(Subscription(topic="nope"),)),)), "unknown topic 'nope'"),
        (Topology(topics=(Topic(name="t", fifo=True),)), "FIFO topic names end in '.fifo'"),
        (Topology(queues=(Queue(name="q.fifo"),)), "FIFO queue names end in '.fifo'"),
        (
            Topology(
                topics=("t",), queues=(Queue(name="q.fifo", fifo=True, subscriptions=(Subscription(topic="t"),)),)
            ),
            "cannot subscribe to standard topic 't'",
        ),
        (Topology(queues=(Queue(name="q", visibility_timeout_s=43_201),)), "visibility_timeout_s must be 0..43200"),
        (Topology(queues=(Queue(name="q", message_retention_s=30),)), "message_retention_s must be 60.."),
        (Topology(queues=(Queue(name="q", max_receive_count=0),)), "max_receive_count must be 1..1000"),
        (Topology(queues=(Queue(name="q"), Queue(name="q"))), "queue 'q' is declared 2 times"),
        (Topology(queues=(Queue(name="q"), Queue(name="q-dlq"))), "has the name of another queue's DLQ"),
        (Topology(daemons=(Daemon(name="d", queue="missing"),)), "consumes unknown queue 'missing'"),
        (Topology(producers=(Producer(name="p", produces=(ORDER,)),)), "which no topic routes"),
        (Topology(producers=(Producer(name="p", tables=("x",)),)), "uses unknown table 'x'"),
        (
            Topology(topics=(Topic(name="a", media_types=(ORDER,)), Topic(name="b", media_types=(ORDER,)))),
            "routed to more than one topic",
        ),
        (Topology(default_topic="x"), "default_topic 'x' is not a topic"),
    ],
)
def test_invalid_topologies_fail_with_the_problem_named(topology, message):
    with pytest.raises(TopologyError, match="Invalid topology") as raised:
        topology.validate()
    assert message in str(raised.value)


def test_likely_mistakes_are_warnings():
    # Given an unfiltered subscription, a queue without DLQ and a handler slower than the visibility timeout
    topology = Topology(
        topics=("t",),
        queues=(
            Queue(name="q", visibility_timeout_s=5, max_receive_count=None, subscriptions=(Subscription(topic="t"),)),
        ),
        daemons=(Daemon(name="d", queue="q", handler_timeout_s=10),),
    )
    # Then validation passes, naming each of them
    warnings = " | ".join(topology.validate())
    assert "has no dead-letter queue" in warnings
    assert "without a media_type filter" in warnings
    assert "shorter than daemon 'd''s handler timeout 10s" in warnings


def test_lookups_of_unknown_names_list_the_known_ones():
    with pytest.raises(TopologyError, match=r"No queue 'x' in the topology \(known: orders\)"):
        TOPOLOGY.queue("x")
    with pytest.raises(TopologyError, match="known: orders, orders-api"):
        TOPOLOGY.principal("x")


def test_the_whole_reference_application_is_one_valid_topology():
    from microbus.reference.daemons import fulfilment
    from microbus.reference.daemons.reference import TOPOLOGY as REFERENCE

    from microbus.topology import AppliedTopology

    assert REFERENCE.validate() == []
    assert REFERENCE.default_topic == "orders"
    assert {q.name for q in REFERENCE.queues} == {"orders", "fulfilment", "fulfilment-callbacks"}
    assert REFERENCE.daemon("fulfilment").sends_to == ("fulfilment-callbacks",)
    # and producers get every route from it
    applied = AppliedTopology(
        topic_arns={"orders": "arn:o", "fulfilment": "arn:f"}, routes=REFERENCE.routes(), default_topic="orders"
    )
    mappings = applied.sns_topic_arns_config()["mappings"]
    assert {mappings[m] for m in fulfilment.TARGET_MEDIA_TYPES} == {"arn:f"}
    assert mappings[ORDER] == "arn:o"
