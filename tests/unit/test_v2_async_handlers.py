"""``async def`` handlers are awaited: their failures retry the message and their effects happen before the delete."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from marshmallow import fields
from microbus.reference.schemas import OrderPlaced

from microbus import (
    HandlerRegistry,
    Outcome,
    PubSubMessageSchema,
    SchemaRegistry,
    SQSMessageDispatcher,
    Worker,
    handles,
)
from microbus.testing import StubQueue, wait_for


def order(i, media_type=OrderPlaced.MEDIA_TYPE):
    return {"mediaType": media_type, "order_id": f"o-{i}"}


def run_until_settled(queue, handlers, *, settled):
    dispatcher = SQSMessageDispatcher(handler_registry=handlers)
    worker = Worker(consumer=queue.consumer(SchemaRegistry()), dispatcher=dispatcher)
    worker.start()
    try:
        wait_for(lambda: settled(worker), timeout_s=10, what="the message to be handled")
    finally:
        worker.stop()
        worker.join()
    return worker


@pytest.mark.timeout(30)
def test_an_async_handler_that_raises_after_an_await_fails_and_its_message_is_kept():
    # Given an async handler that raises once it has awaited something
    async def broken(content):
        await asyncio.sleep(0)
        raise RuntimeError("after the await")

    queue = StubQueue()
    queue.put(order(1))
    # When the worker handles a message with it
    worker = run_until_settled(
        queue, HandlerRegistry({OrderPlaced.MEDIA_TYPE: broken}), settled=lambda w: sum(w.stats.outcomes.values())
    )
    # Then the outcome is FAILED and the message is left for its retry, not deleted
    assert worker.stats.outcomes[Outcome.FAILED.label] >= 1
    assert worker.stats.outcomes[Outcome.SUCCEEDED.label] == 0
    assert queue.deleted == []
    assert queue.depth == 1


class EffectAtDelete(StubQueue):
    """Records, at each delete, which side effects had happened by then."""

    def __post_init__(self):
        super().__post_init__()
        self.effects: list[str] = []
        self.effects_at_delete: list[list[str]] = []

    def delete_batch(self, receipt_handles):
        self.effects_at_delete.append(list(self.effects))
        return super().delete_batch(receipt_handles)


@pytest.mark.timeout(30)
def test_an_async_handler_registered_with_handles_runs_to_completion_before_the_delete():
    # Given an async handler, registered with @handles, whose effect comes after an await
    media_type = f"application/vnd.microbus.v2-async.{uuid.uuid4().hex}"

    class AsyncOrder(PubSubMessageSchema):
        MEDIA_TYPE = media_type
        order_id = fields.String(required=True)

    queue = EffectAtDelete()

    @handles(AsyncOrder)
    async def record(content):
        await asyncio.sleep(0.01)
        queue.effects.append(content["order_id"])

    queue.put(order(1, media_type))
    # When the worker handles a message with it
    worker = run_until_settled(
        queue, HandlerRegistry.from_registered(media_types=[media_type]), settled=lambda w: queue.depth == 0
    )
    # Then the handler's effect happened, before the message was deleted
    assert worker.stats.outcomes[Outcome.SUCCEEDED.label] == 1
    assert queue.effects == ["o-1"]
    assert queue.effects_at_delete == [["o-1"]]
