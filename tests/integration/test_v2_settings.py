"""Client settings that cannot work together with the worker are caught: a read timeout shorter than
the long poll is refused at start, and the connection pool is sized for the worker's threads."""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections import Counter

import pytest
from marshmallow import fields

from microbus import ConfigurationError, ConsumerDaemon, Nack, PubSubMessageSchema, handles
from microbus.testing import wait_for

pytestmark = pytest.mark.integration


class V2SettingsDaemon(ConsumerDaemon):
    """A daemon with no handlers of its own, for configuration checks."""

    name = "v2-settings-test"
    media_types = ()


class V2PoolOrder(PubSubMessageSchema):
    MEDIA_TYPE = f"application/vnd.microbus.v2-pool.{uuid.uuid4().hex}"
    order_id = fields.String(required=True)


current_handler = [lambda content: None]


@handles(V2PoolOrder)
def handle_pool_order(content):
    return current_handler[0](content)


class V2PoolDaemon(ConsumerDaemon):
    """Handles V2PoolOrder with whatever ``current_handler`` holds."""

    name = "v2-pool-test"
    media_types = (V2PoolOrder,)


def daemon_for(queue, *, wait_seconds, cls=V2SettingsDaemon, **aws):
    config = queue.graph_config(aws=aws, microbus_sqs_consumer={"wait_seconds": wait_seconds})
    return cls(testing=True, **config)


@pytest.mark.timeout(60)
def test_a_read_timeout_shorter_than_the_long_poll_is_refused_at_start(make_queue):
    # Given a daemon whose client read timeout (5 s) is shorter than its long-poll wait (20 s)
    queue = make_queue()
    daemon = daemon_for(queue, wait_seconds=20, read_timeout_s=5)
    worker = None
    # When it is started, Then it refuses with one sentence that names both settings' values
    try:
        with pytest.raises(ConfigurationError) as raised:
            worker = daemon.create_worker(concurrency=1)
            worker.start()
    finally:
        if worker is not None:
            worker.stop()
            worker.join()
    text = str(raised.value)
    assert "\n" not in text.strip()
    assert "5" in text and "20" in text


@pytest.mark.timeout(60)
def test_the_connection_pool_fits_the_worker_threads(make_queue):
    # Given a daemon worker with 16 handler threads
    queue = make_queue()
    daemon = daemon_for(queue, wait_seconds=1)
    worker = daemon.create_worker(concurrency=16)
    # Then its SQS client can hold a connection per handler thread, plus the poller, heartbeat and deletes
    pool = worker.consumer.transport.client.meta.config.max_pool_connections
    assert pool >= 16 + 2, f"max_pool_connections is {pool} for 16 handler threads"


@pytest.mark.timeout(60)
def test_sixteen_handler_threads_do_not_overflow_the_connection_pool(make_queue, caplog):
    # Given a daemon worker with 16 handler threads, and 16 messages whose first attempts all end at once
    caplog.set_level(logging.WARNING)
    queue = make_queue()
    queue.sqs.send_message_batch(
        QueueUrl=queue.queue_url,
        Entries=[
            {"Id": str(i), "MessageBody": json.dumps({"mediaType": V2PoolOrder.MEDIA_TYPE, "order_id": f"o-{i}"})}
            for i in range(10)
        ],
    )
    queue.sqs.send_message_batch(
        QueueUrl=queue.queue_url,
        Entries=[
            {"Id": str(i), "MessageBody": json.dumps({"mediaType": V2PoolOrder.MEDIA_TYPE, "order_id": f"o-{i}"})}
            for i in range(10, 16)
        ],
    )
    together = threading.Barrier(16, timeout=10)
    attempts = Counter()
    lock = threading.Lock()

    def handler(content):
        with lock:
            attempts[content["order_id"]] += 1
            first = attempts[content["order_id"]] == 1
        if first:
            together.wait()
            raise Nack(0)  # 16 ChangeMessageVisibility calls at the same moment

    current_handler[0] = handler
    daemon = daemon_for(queue, wait_seconds=1, cls=V2PoolDaemon)
    worker = daemon.create_worker(concurrency=16)
    worker.start()
    try:
        # When they are all retried at once, and then handled
        wait_for(lambda: worker.stats.handled == 16, timeout_s=30, what="16 messages handled")
    finally:
        worker.stop()
        worker.join()
    # Then no connection was thrown away for want of room in the pool
    full = [r.getMessage() for r in caplog.records if "Connection pool is full" in r.getMessage()]
    assert not full, f"{len(full)} x {full[0]}"
