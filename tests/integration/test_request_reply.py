"""Request/reply: one reply queue per requester, replies matched by correlation id, timeouts, allowed queues."""

from __future__ import annotations

import asyncio
import json
import logging
import threading

import pytest
from microbus.reference.schemas import OrderPlaced
from microcosm.api import create_object_graph, load_from_dict

from microbus import (
    HandlerRegistry,
    Outcome,
    RemoteHandlerError,
    Replier,
    Requester,
    RequestTimeoutError,
    SQSMessageDispatcher,
    Worker,
    current_cid,
)
from microbus.testing import wait_for

pytestmark = pytest.mark.integration


def quote(content):
    if content["order_id"] == "boom":
        raise ValueError("no such order")
    return {"order_id": content["order_id"], "cid": current_cid()}


@pytest.fixture
def service(make_queue):
    """A queue with a replying worker, and a requester producing to its topic."""
    queue = make_queue(max_receive_count=1)
    graph = create_object_graph("rr", testing=True, loader=load_from_dict(queue.graph_config()))
    graph.use("microbus_sns_producer", "microbus_sqs_consumer")
    replier = Replier(sqs_client=queue.sqs, allowed_reply_queues=["microbus-reply-*"], home_queue_url=queue.queue_url)
    dispatcher = SQSMessageDispatcher(
        handler_registry=HandlerRegistry({OrderPlaced.MEDIA_TYPE: quote}), middleware=[replier]
    )
    worker = Worker(consumer=graph.microbus_sqs_consumer, dispatcher=dispatcher)
    worker.start()
    requester = Requester(producer=graph.microbus_sns_producer, sqs_client=queue.sqs, source="rr")
    yield queue, requester, worker
    requester.close()
    worker.stop()
    worker.join()


def queue_exists(queue, url):
    return url in queue.sqs.list_queues(QueueNamePrefix="microbus-reply-rr").get("QueueUrls", [])


def test_requests_get_their_own_replies_over_one_reply_queue_which_close_removes(service):
    queue, requester, _ = service
    # When several threads request at once
    replies = {}

    def ask(order_id):
        replies[order_id] = requester.request(OrderPlaced.MEDIA_TYPE, {"order_id": order_id}, timeout=20)

    threads = [threading.Thread(target=ask, args=(f"o-{i}",)) for i in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    # Then each gets its own reply (the handler saw the request's correlation id), over one reply queue
    assert sorted(replies) == [f"o-{i}" for i in range(5)]
    assert all(reply["order_id"] == order_id and len(reply["cid"]) == 32 for order_id, reply in replies.items())
    url = requester.queue_url
    assert queue_exists(queue, url)
    # And close removes it
    requester.close()
    assert not queue_exists(queue, url)


def test_an_async_request_waits_without_blocking_the_loop(service):
    _, requester, _ = service

    async def main():
        ticks = 0

        async def tick():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        ticker = asyncio.create_task(tick())
        reply = await requester.request_async(OrderPlaced.MEDIA_TYPE, {"order_id": "a-1"}, timeout=20)
        ticker.cancel()
        return reply, ticks

    reply, ticks = asyncio.run(main())
    assert reply["order_id"] == "a-1"
    assert ticks > 5


def test_a_handler_failure_on_its_last_attempt_is_replied_as_an_error(service):
    _, requester, _ = service
    with pytest.raises(RemoteHandlerError, match="no such order") as caught:
        requester.request(OrderPlaced.MEDIA_TYPE, {"order_id": "boom"}, timeout=20)
    assert caught.value.error_class == "ValueError"


def test_a_timeout_raises_and_the_late_reply_is_dropped_with_a_log_line(service, caplog):
    queue, requester, worker = service
    worker.stop()
    worker.join()
    # Given nobody handles requests, a request times out
    with pytest.raises(RequestTimeoutError, match="No reply"):
        requester.request(OrderPlaced.MEDIA_TYPE, {"order_id": "late"}, timeout=0.5)
    # When a reply comes anyway, it is dropped with a log line
    caplog.set_level(logging.INFO, logger="microbus.patterns.request_reply")
    queue.sqs.send_message(QueueUrl=requester.queue_url, MessageBody=json.dumps({"cid": "c" * 32, "ok": True}))
    queue.sqs.send_message(QueueUrl=requester.queue_url, MessageBody="not json")
    wait_for(lambda: "late reply" in caplog.text and "malformed reply" in caplog.text, what="the log lines")


def test_a_request_naming_a_reply_queue_that_is_not_allowed_is_dead_lettered_unrun(service, make_queue):
    queue, requester, _ = service
    foreign = make_queue()
    ran = []
    replier = Replier(sqs_client=queue.sqs, allowed_reply_queues=["microbus-reply-*"], home_queue_url=queue.queue_url)
    dispatcher = SQSMessageDispatcher(
        handler_registry=HandlerRegistry({OrderPlaced.MEDIA_TYPE: ran.append}), middleware=[replier]
    )
    graph = create_object_graph("rr2", testing=True, loader=load_from_dict(foreign.graph_config()))
    graph.microbus_sns_producer.produce(
        OrderPlaced.MEDIA_TYPE,
        order_id="o",
        opaque_data={"x-microbus-cid": "c1", "x-microbus-reply-queue": foreign.dlq_url},
    )
    (message,) = wait_for(graph.microbus_sqs_consumer.consume, what="the request")
    result = dispatcher.handle(message)
    assert ran == []
    assert result.outcome is Outcome.REJECTED and result.reason == "reply-to-not-allowed"


def test_a_reply_to_a_closed_requester_is_dropped_and_the_request_acked(make_queue):
    # Given a request whose requester closed (its reply queue removed) before anyone handled it
    queue = make_queue()
    graph = create_object_graph("rr3", testing=True, loader=load_from_dict(queue.graph_config()))
    requester = Requester(producer=graph.microbus_sns_producer, sqs_client=queue.sqs, source="rr")
    with pytest.raises(RequestTimeoutError):
        requester.request(OrderPlaced.MEDIA_TYPE, {"order_id": "gone"}, timeout=0.2)
    requester.close()
    replier = Replier(sqs_client=queue.sqs, allowed_reply_queues=["microbus-reply-*"], home_queue_url=queue.queue_url)
    dispatcher = SQSMessageDispatcher(
        handler_registry=HandlerRegistry({OrderPlaced.MEDIA_TYPE: quote}), middleware=[replier]
    )
    (message,) = wait_for(graph.microbus_sqs_consumer.consume, what="the request")
    # Then handling it succeeds (no retry that would run the handler again for nobody)
    assert dispatcher.handle(message).outcome is Outcome.SUCCEEDED


def test_a_request_inside_a_deferred_block_is_sent_at_once(service):
    from microbus import deferred_publish

    _, requester, _ = service
    # Given a web request's deferred block (MicrobusFlask, DeferredPublishMiddleware), a request waits for its reply
    with deferred_publish():
        reply = requester.request(OrderPlaced.MEDIA_TYPE, {"order_id": "o-web"}, timeout=10)
    assert reply["order_id"] == "o-web"
