"""Daemons against the emulator: retries, poison messages beside good ones, console entry points, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from microbus.reference.schemas import OrderPlaced
from microcosm.api import create_object_graph, load_from_dict

from microbus import Outcome, Worker
from microbus.consume.dispatch import RetryPolicy, SQSMessageDispatcher
from microbus.consume.handlers import HandlerRegistry
from microbus.testing import wait_for

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent


def graph_for(queue):
    graph = create_object_graph("daemon-test", testing=True, loader=load_from_dict(queue.graph_config()))
    graph.use("microbus_sns_producer", "microbus_sqs_consumer")
    return graph


def start_worker(graph, handler, **policy):
    dispatcher = SQSMessageDispatcher(
        handler_registry=HandlerRegistry({OrderPlaced.MEDIA_TYPE: handler}),
        retry_policy=RetryPolicy(**({"base_s": 1, "jitter": False} | policy)),
    )
    worker = Worker(consumer=graph.microbus_sqs_consumer, dispatcher=dispatcher, concurrency=2)
    worker.start()
    return worker


def test_a_failed_message_is_not_deleted_and_is_handled_again_after_the_backoff(microbus_queue):
    graph = graph_for(microbus_queue)
    attempts = []

    def flaky(content):
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            raise RuntimeError("first attempt fails")

    worker = start_worker(graph, flaky)
    try:
        graph.microbus_sns_producer.produce(OrderPlaced.MEDIA_TYPE, order_id="o-1")
        wait_for(lambda: worker.stats.outcomes[Outcome.SUCCEEDED.label] == 1, timeout_s=20, what="the retry")
    finally:
        worker.stop()
        worker.join()
    assert worker.stats.outcomes[Outcome.FAILED.label] == 1
    assert len(attempts) == 2
    assert attempts[1] - attempts[0] >= 0.9  # made visible again after the 1 s backoff, not the 30 s default
    assert microbus_queue.depth() == 0


def test_poison_messages_are_dead_lettered_and_good_ones_in_the_same_batch_are_handled(microbus_queue):
    graph = graph_for(microbus_queue)
    handled = []
    good = [json.dumps({"mediaType": OrderPlaced.MEDIA_TYPE, "order_id": f"o-{i}"}) for i in range(6)]
    poison = {
        "malformed-body": "{not json",
        "missing-media-type": json.dumps({"order_id": "x"}),
        "unknown-media-type": json.dumps({"mediaType": "application/vnd.nobody", "order_id": "x"}),
        "schema-violation": json.dumps({"mediaType": OrderPlaced.MEDIA_TYPE, "order_id": 7}),
    }
    bodies = good[:3] + list(poison.values()) + good[3:]
    microbus_queue.sqs.send_message_batch(
        QueueUrl=microbus_queue.queue_url,
        Entries=[{"Id": str(i), "MessageBody": body} for i, body in enumerate(bodies)],
    )
    worker = start_worker(graph, lambda content: handled.append(content["order_id"]))
    try:
        wait_for(lambda: worker.stats.handled == 6 and worker.stats.dead_lettered == 4, timeout_s=20, what="all")
        assert not worker.stopping
    finally:
        worker.stop()
        worker.join()
    assert sorted(handled) == [f"o-{i}" for i in range(6)]
    dead = microbus_queue.drain_dlq()
    reasons = {m["MessageAttributes"]["microbus.reason"]["StringValue"]: m["Body"] for m in dead}
    assert reasons == poison
    assert microbus_queue.depth() == 0


def daemon_env(queue):
    return {**os.environ, **queue.endpoint.environ(), "PYTHONUNBUFFERED": "1"}


@pytest.mark.parametrize(
    "command",
    [["microbus-orders-daemon"], ["microbus", "run", "microbus.reference.daemons.orders:OrdersDaemon"]],
    ids=["entry-point", "microbus-run"],
)
def test_the_daemon_handles_messages_and_exits_cleanly_on_sigterm(microbus_queue, command):
    graph = graph_for(microbus_queue)
    process = subprocess.Popen(
        [str(BIN / command[0]), *command[1:], "--sqs-queue-url", microbus_queue.queue_url, "--wait-seconds", "1"],
        env=daemon_env(microbus_queue),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True)
    reader.start()
    try:
        graph.microbus_sns_producer.produce_batch(OrderPlaced.MEDIA_TYPE, [{"order_id": f"o-{i}"} for i in range(10)])
        # Wait on the daemon's own outcome lines, not on queue depth: LocalStack delivers SNS→SQS
        # asynchronously, so an empty queue right after publishing does not mean "consumed" there.
        wait_for(lambda: sum("SUCCEEDED" in line for line in lines) >= 10, timeout_s=30, what="10 handled")
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
        reader.join(10)
    finally:
        process.kill()
        process.wait()
        reader.join(10)
        process.stderr.close()
    stderr = "".join(lines)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert "SUCCEEDED" in stderr  # one log line per outcome
    assert "'SUCCEEDED': 10" in stderr  # the closing summary


def test_a_missing_queue_fails_with_one_clear_sentence(microbus_queue):
    missing = microbus_queue.queue_url + "-missing"
    result = subprocess.run(
        [str(BIN / "microbus-orders-daemon"), "--sqs-queue-url", missing],
        env=daemon_env(microbus_queue),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"SQS queue {missing} does not exist" in result.stderr


@pytest.mark.parametrize("declared", [False, True], ids=["queue-url", "queue-from-topology"])
def test_an_unreachable_endpoint_is_reported_in_one_clear_sentence_and_waited_for(microbus_queue, declared):
    # Given a daemon whose endpoint refuses connections (its queue given, or taken from its topology)
    env = daemon_env(microbus_queue) | {"AWS_ENDPOINT_URL": "http://127.0.0.1:9"}
    queue_option = [] if declared else ["--sqs-queue-url", microbus_queue.queue_url]
    process = subprocess.Popen(
        [str(BIN / "microbus-orders-daemon"), *queue_option],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Then it says once what is wrong, and keeps waiting instead of crashing
        lines = []
        wait_for(lambda: lines.append(process.stderr.readline()) or "Cannot reach SQS queue" in lines[-1], timeout_s=60)
        assert process.poll() is None
        # And SIGTERM still stops it cleanly
        process.send_signal(signal.SIGTERM)
        _, rest = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0
    assert "Traceback" not in "".join(lines) + rest
    assert sum("Cannot reach" in line for line in lines + rest.splitlines()) == 1


def test_microbus_run_rejects_a_target_that_is_not_a_daemon():
    result = subprocess.run(
        [str(BIN / "microbus"), "run", "microbus.reference.schemas:OrderPlaced"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "is not a ConsumerDaemon subclass" in result.stderr


def test_poison_on_a_fifo_queue_is_dead_lettered_to_its_fifo_dlq(microbus_endpoint):
    # Given a FIFO queue whose redrive target is a FIFO DLQ
    sqs = microbus_endpoint.settings().client("sqs")
    name = f"fifo-{os.urandom(4).hex()}"
    dlq = sqs.create_queue(QueueName=f"{name}-dlq.fifo", Attributes={"FifoQueue": "true"})["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    redrive = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "5"})
    url = sqs.create_queue(
        QueueName=f"{name}.fifo",
        Attributes={"FifoQueue": "true", "ContentBasedDeduplication": "true", "RedrivePolicy": redrive},
    )["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="{not json", MessageGroupId="g-1")
    # When a worker consumes it
    graph = create_object_graph(
        "fifo-test",
        testing=True,
        loader=load_from_dict(
            {**microbus_endpoint.config(), "microbus_sqs_consumer": {"sqs_queue_url": url, "wait_seconds": 1}}
        ),
    )
    worker = start_worker(graph, lambda content: None)
    try:
        wait_for(lambda: worker.stats.dead_lettered == 1, timeout_s=20, what="the dead letter")
    finally:
        worker.stop()
        worker.join()
    # Then it is in the FIFO DLQ with its reason, and gone from the queue
    (dead,) = sqs.receive_message(QueueUrl=dlq, MessageAttributeNames=["All"], WaitTimeSeconds=1)["Messages"]
    assert dead["MessageAttributes"]["microbus.reason"]["StringValue"] == "malformed-body"
    assert dead["Body"] == "{not json"
