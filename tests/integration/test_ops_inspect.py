"""microbus.ops.inspect against the real emulator: queue stats, topics with subscriptions, peek."""

from __future__ import annotations

import json

import pytest
from microbus.reference.schemas import OrderPlaced
from microcosm.api import create_object_graph, load_from_dict

from microbus.errors import QueueNotFoundError, TopicNotFoundError
from microbus.ops import inspect
from microbus.testing import wait_for

pytestmark = pytest.mark.integration


def _producer(queue):
    graph = create_object_graph("ops-test", testing=True, loader=load_from_dict(queue.graph_config()))
    graph.use("microbus_sns_producer")
    return graph.microbus_sns_producer


def test_queue_stats_count_visible_in_flight_and_the_dead_letter_queue(make_queue):
    # Given a queue with three messages and one dead letter
    queue = make_queue()
    producer = _producer(queue)
    for i in range(3):
        producer.produce(OrderPlaced.MEDIA_TYPE, order_id=f"o-{i}")
    queue.sqs.send_message(QueueUrl=queue.dlq_url, MessageBody="{}")
    wait_for(lambda: queue.depth() == 3, timeout_s=10)
    # When one is held in flight
    queue.sqs.receive_message(QueueUrl=queue.queue_url, MaxNumberOfMessages=1, VisibilityTimeout=30)
    stats = inspect.queue_stats(queue.sqs, queue.queue_url.rsplit("/", 1)[-1])
    # Then the figures say so, by name or URL alike
    assert (stats.visible, stats.in_flight, stats.delayed, stats.dlq_visible) == (2, 1, 0, 1)
    assert stats.dlq_url == queue.dlq_url and stats.max_receive_count == 5
    assert stats.oldest_age_s is None and "visible" in stats.approximate
    assert inspect.queue_stats(queue.sqs, queue.queue_url) == stats
    assert json.loads(json.dumps(stats.to_dict()))["dlq_name"] == stats.dlq_name


def test_all_queue_stats_list_every_queue_of_a_prefix(make_queue):
    queue = make_queue()
    name = inspect.queue_name(queue.queue_url)
    listed = {stats.name for stats in inspect.all_queue_stats(queue.sqs, prefix=name)}
    assert listed == {name, f"{name}-dlq"}
    # the DLQ itself has no dead-letter queue
    assert inspect.queue_stats(queue.sqs, f"{name}-dlq").dlq_url is None


def test_a_queue_whose_dead_letter_queue_is_gone_is_listed_and_says_so(make_queue):
    # Given a queue whose redrive policy names a DLQ that was deleted
    queue = make_queue()
    name = inspect.queue_name(queue.queue_url)
    queue.sqs.delete_queue(QueueUrl=queue.dlq_url)
    wait_for(lambda: f"{name}-dlq" not in {inspect.queue_name(u) for u in inspect.list_queue_urls(queue.sqs, name)})
    # Then the queue is still listed, its DLQ reported missing (not silently left out)
    (stats,) = inspect.all_queue_stats(queue.sqs, prefix=name)
    assert (stats.name, stats.dlq_name, stats.dlq_missing, stats.dlq_visible) == (name, f"{name}-dlq", True, None)
    assert inspect.queue_stats(queue.sqs, name) == stats


def test_a_missing_queue_is_a_queue_not_found_error(microbus_queue):
    with pytest.raises(QueueNotFoundError, match="does not exist"):
        inspect.queue_stats(microbus_queue.sqs, "no-such-queue-here")
    with pytest.raises(QueueNotFoundError):
        inspect.peek(microbus_queue.sqs, "no-such-queue-here")


def test_topics_list_their_subscriptions_with_delivery_mode_and_filter(make_queue):
    queue = make_queue(raw=True, media_types=[OrderPlaced.MEDIA_TYPE])
    name = inspect.topic_name(queue.topic_arn)
    [topic] = [topic for topic in inspect.topics(queue.sns) if topic.name == name]
    [subscription] = topic.subscriptions
    assert subscription.protocol == "sqs" and subscription.queue_name == name
    assert subscription.raw is True
    assert subscription.filter_policy == {"media_type": [OrderPlaced.MEDIA_TYPE]}
    assert topic.to_dict()["subscriptions"][0]["queue_name"] == name
    assert inspect.topic_arn(queue.sns, name) == queue.topic_arn
    with pytest.raises(TopicNotFoundError):
        inspect.topic_arn(queue.sns, "no-such-topic-here")


def test_peek_shows_ids_media_type_and_body_and_leaves_the_messages_in_the_queue(make_queue):
    # Given two produced messages and one that is not JSON
    queue = make_queue()
    producer = _producer(queue)
    sns_ids = {producer.produce(OrderPlaced.MEDIA_TYPE, order_id=f"o-{i}") for i in range(2)}
    queue.sqs.send_message(QueueUrl=queue.queue_url, MessageBody="not json")
    wait_for(lambda: queue.depth() == 3, timeout_s=10)
    # When peeking
    peeked = inspect.peek(queue.sqs, queue.queue_url, max_messages=5)
    # Then every message is described, with the SNS id a producer printed
    assert len(peeked) == 3
    decoded = [message for message in peeked if message.body is not None]
    assert {message.sns_message_id for message in decoded} == sns_ids
    assert {message.media_type for message in decoded} == {OrderPlaced.MEDIA_TYPE}
    assert {message.body["order_id"] for message in decoded} == {"o-0", "o-1"}
    [bad] = [message for message in peeked if message.body is None]
    assert bad.raw_body == "not json" and bad.body_error and bad.size == 8
    assert all(message.receive_count == 1 and message.message_id for message in peeked)
    assert "body" not in peeked[0].to_dict(body=False)
    # and they are visible again at once, not consumed
    stats = inspect.queue_stats(queue.sqs, queue.queue_url)
    assert (stats.visible, stats.in_flight) == (3, 0)


def test_peek_takes_at_most_n(make_queue):
    queue = make_queue()
    for i in range(4):
        queue.sqs.send_message(QueueUrl=queue.queue_url, MessageBody=json.dumps({"i": i}))
    assert len(inspect.peek(queue.sqs, queue.queue_url, max_messages=2)) == 2
    assert inspect.queue_stats(queue.sqs, queue.queue_url).visible == 4
    assert inspect.peek(make_queue().sqs, make_queue().queue_url) == []
