"""Deferred publish: kept while the block runs, published in batches when it ends well, dropped when it raises."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
from microbus.reference.schemas import OrderPlaced

from microbus import PublishError, SNSProducer, TopicArns
from microbus.produce.producer import current_capture
from microbus.web import deferred_publish
from microbus.wire.schemas import SchemaRegistry

TOPIC = "arn:aws:sns:us-east-1:123456789012:orders"


class RecordingTransport:
    """Records what is published; ``fail`` names order ids SNS refuses."""

    def __init__(self, fail: frozenset[str] = frozenset()) -> None:
        self.batches: list[list[str]] = []
        self.fail = fail

    def publish(self, topic_arn, message, message_attributes, **fifo):
        self.batches.append([json.loads(message)["order_id"]])
        return f"sns-{len(self.batches)}"

    def publish_batch(self, topic_arn, entries, **fifo):
        orders = [json.loads(message)["order_id"] for message, _ in entries]
        self.batches.append(orders)
        failed = {i: "refused" for i, order in enumerate(orders) if order in self.fail}
        return [None if i in failed else f"sns-{order}" for i, order in enumerate(orders)], failed

    @property
    def published(self) -> list[str]:
        return [order for batch in self.batches for order in batch]


@pytest.fixture
def transport():
    return RecordingTransport()


@pytest.fixture
def producer(transport):
    return SNSProducer(
        transport=transport, schema_registry=SchemaRegistry(), topic_arns=TopicArns(default=TOPIC), retry_base_s=0
    )


def produce(producer, order_id):
    return producer.produce(OrderPlaced.MEDIA_TYPE, order_id=order_id, customer_id="c", total_cents=1)


def test_messages_produced_in_the_block_are_published_in_batches_when_it_ends(producer, transport):
    # Given a deferred block producing 12 messages
    with deferred_publish():
        ids = [produce(producer, str(i)) for i in range(12)]
        # Then nothing is sent while it runs, and produce returns each message's microbus id
        assert transport.batches == []
        assert all(len(message_id) == 32 for message_id in ids)
    # Then at its end they go out in order, in PublishBatch calls of at most 10
    assert transport.batches == [[str(i) for i in range(10)], ["10", "11"]]
    assert current_capture() is None


def test_nothing_is_published_when_the_block_raises(producer, transport):
    with pytest.raises(RuntimeError), deferred_publish():
        produce(producer, "1")
        raise RuntimeError("the view failed")
    assert transport.batches == []
    assert current_capture() is None
    # And the producer publishes at once again afterwards
    produce(producer, "2")
    assert transport.published == ["2"]


def test_a_nested_block_joins_the_outer_one(producer, transport):
    with deferred_publish():
        produce(producer, "outer-1")
        with deferred_publish():
            produce(producer, "inner")
        assert transport.batches == []  # the inner block's end publishes nothing
        produce(producer, "outer-2")
    assert transport.batches == [["outer-1", "inner", "outer-2"]]


def test_a_nested_block_that_raises_drops_only_its_own_messages(producer, transport):
    with deferred_publish():
        produce(producer, "kept")
        try:
            with deferred_publish():
                produce(producer, "dropped")
                raise ValueError
        except ValueError:
            pass
        produce(producer, "kept-too")
    assert transport.published == ["kept", "kept-too"]


def test_the_outer_block_raising_drops_what_a_nested_block_kept(producer, transport):
    with pytest.raises(KeyError), deferred_publish():
        with deferred_publish():
            produce(producer, "1")
        raise KeyError
    assert transport.batches == []


def test_the_legacy_deferred_producer_joins_an_enclosing_block(producer, transport):
    with deferred_publish():
        with producer.deferred() as legacy:
            legacy.produce(OrderPlaced.MEDIA_TYPE, order_id="legacy", customer_id="c", total_cents=1)
        assert transport.batches == []
    assert transport.published == ["legacy"]


def test_as_a_decorator_on_a_function(producer, transport):
    @deferred_publish()
    def view(fail: bool) -> str:
        produce(producer, "fail" if fail else "ok")
        if fail:
            raise RuntimeError
        return "done"

    assert view(False) == "done"
    with pytest.raises(RuntimeError):
        view(True)
    assert transport.published == ["ok"]


def test_as_a_decorator_on_a_coroutine_function(producer, transport):
    @deferred_publish()
    async def view(order_id: str) -> str:
        produce(producer, order_id)
        await asyncio.sleep(0)
        assert order_id not in transport.published  # kept until this task's block ends
        return order_id

    async def main() -> list[str]:
        return list(await asyncio.gather(view("a"), view("b")))  # two tasks, each its own block

    assert asyncio.run(main()) == ["a", "b"]
    assert sorted(transport.published) == ["a", "b"]
    assert len(transport.batches) == 2


def test_another_thread_is_not_deferred(producer, transport):
    with deferred_publish():
        thread = threading.Thread(target=produce, args=(producer, "elsewhere"))
        thread.start()
        thread.join()
        assert transport.published == ["elsewhere"]  # published at once: not in this block's context
        produce(producer, "here")
    assert transport.published == ["elsewhere", "here"]


def test_a_failed_publish_at_the_end_raises_and_says_which_messages(producer, transport):
    transport.fail = frozenset({"2"})
    with pytest.raises(PublishError) as raised, deferred_publish():
        for i in range(3):
            produce(producer, str(i))
    assert raised.value.failed == {2: "refused"}
    assert current_capture() is None


def test_invalid_content_fails_at_produce_time_not_at_the_end(producer, transport):
    from microbus import MessageValidationError

    with deferred_publish():
        with pytest.raises(MessageValidationError, match="order_id"):
            producer.produce(OrderPlaced.MEDIA_TYPE, customer_id="c", total_cents=1)
        produce(producer, "good")
    assert transport.published == ["good"]


def test_one_instance_entered_in_two_threads_keeps_their_blocks_apart(producer, transport):
    block = deferred_publish()
    inside = threading.Barrier(2)
    errors = []

    def request(order_id: str, fail: bool) -> None:
        try:
            with block:
                produce(producer, order_id)
                inside.wait(5)  # both blocks are open at once
                if fail:
                    raise RuntimeError
        except RuntimeError:
            pass
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=request, args=args) for args in (("good", False), ("bad", True))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert transport.published == ["good"]
