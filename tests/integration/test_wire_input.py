"""Wire input is untrusted: what a sender put in a message is sanitised before it becomes an attribute,
and bounded before it reaches a log line, against the real emulator."""

from __future__ import annotations

import json
import logging

import pytest
from microbus.reference.schemas import OrderPlaced
from microcosm.api import create_object_graph, load_from_dict

from microbus import Worker
from microbus.consume.dispatch import RetryPolicy, SQSMessageDispatcher
from microbus.consume.handlers import HandlerRegistry
from microbus.testing import wait_for
from microbus.wire.sanitize import attribute_text

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

SURROGATES = "application/vnd.x.\udcff\ud800"
CONTROLS = "application/vnd.x.\x01\x1f\x7f\ufffe\uffff"
HUGE = "application/vnd.huge." + "a" * (250 * 1024)


def _body(media_type: str) -> str:
    # json.dumps escapes the lone surrogates and control characters: the body is pure ASCII on the wire
    return json.dumps({"mediaType": media_type, "order_id": "x"})


def test_bad_media_types_are_dead_lettered_once_each_with_sanitised_attributes_beside_good_messages(make_queue, caplog):
    # Given a queue with a DLQ, holding good messages and messages whose media types SQS would refuse
    # as attribute text (lone surrogates, control characters) or that are huge
    queue = make_queue(max_receive_count=3)
    good = [json.dumps({"mediaType": OrderPlaced.MEDIA_TYPE, "order_id": f"o-{i}"}) for i in range(4)]
    bad = {SURROGATES: _body(SURROGATES), CONTROLS: _body(CONTROLS), HUGE: _body(HUGE)}
    assert all(body.isascii() for body in bad.values())
    queue.sqs.send_message_batch(
        QueueUrl=queue.queue_url,
        Entries=[
            {"Id": str(i), "MessageBody": body}
            for i, body in enumerate([good[0], bad[SURROGATES], good[1], bad[CONTROLS], good[2]])
        ],
    )
    queue.sqs.send_message(QueueUrl=queue.queue_url, MessageBody=bad[HUGE])
    queue.sqs.send_message(QueueUrl=queue.queue_url, MessageBody=good[3])
    graph = create_object_graph("wire-input-test", testing=True, loader=load_from_dict(queue.graph_config()))
    handled: list[str] = []
    dispatcher = SQSMessageDispatcher(
        handler_registry=HandlerRegistry({OrderPlaced.MEDIA_TYPE: lambda content: handled.append(content["order_id"])}),
        retry_policy=RetryPolicy(base_s=1, jitter=False),
    )
    worker = Worker(consumer=graph.microbus_sqs_consumer, dispatcher=dispatcher, concurrency=2)
    # When a worker consumes them
    caplog.set_level(logging.INFO)
    worker.start()
    try:
        wait_for(
            lambda: worker.stats.handled == 4 and worker.stats.dead_lettered == 3, timeout_s=30, what="all settled"
        )
    finally:
        worker.stop()
        worker.join()
    # Then the good ones were handled, and each bad one is in the DLQ exactly once, with its reason and
    # its media type sanitised (valid XML characters only, bounded)
    assert sorted(handled) == [f"o-{i}" for i in range(4)]
    assert queue.depth() == 0
    dead = queue.drain_dlq()
    assert len(dead) == 3, [m["MessageAttributes"].get("media_type", {}).get("StringValue", "")[:80] for m in dead]
    by_body = {m["Body"]: m["MessageAttributes"] for m in dead}
    assert set(by_body) == set(bad.values())
    for media_type, body in bad.items():
        attributes = by_body[body]
        assert attributes["microbus.reason"]["StringValue"] == "unknown-media-type"
        assert attributes["media_type"]["StringValue"] == attribute_text(media_type)
        total = sum(len(name) + len(value["StringValue"].encode()) for name, value in attributes.items())
        assert total < 10_000
    assert by_body[bad[SURROGATES]]["media_type"]["StringValue"] == "application/vnd.x.\\udcff\\ud800"
    assert by_body[bad[CONTROLS]]["media_type"]["StringValue"] == "application/vnd.x.\\u0001\\u001f\x7f\\ufffe\\uffff"
    huge = by_body[bad[HUGE]]["media_type"]["StringValue"]
    assert huge.startswith("application/vnd.huge.aaa") and f"({len(HUGE)} chars)" in huge and len(huge) <= 1024
    # And no log line carries the huge media type
    longest = max(len(record.getMessage()) for record in caplog.records)
    assert longest < 1_000
    assert any(f"({len(HUGE)} chars)" in record.getMessage() for record in caplog.records)
