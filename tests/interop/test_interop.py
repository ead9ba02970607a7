"""Wire compatibility with microcosm-pubsub 3.0.0, run for real in its own virtualenv, both directions,
through a real SNS topic → SQS queue on the emulator."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from microbus.reference.schemas import OrderPlaced, PaymentCaptured
from microcosm.api import create_object_graph, load_from_dict

from microbus.testing import wait_for
from tests.interop.peer_env import PEER_SCRIPT, ensure_peer_python

# The first test builds the peer venv (cached in .cache/): minutes on a loaded machine.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]
CACHE = Path(__file__).resolve().parents[2] / ".cache"


@pytest.fixture(scope="session")
def peer_python() -> Path:
    return ensure_peer_python(CACHE)


def run_peer(peer_python, queue, *args, timeout=60):
    env = {**os.environ, **queue.endpoint.environ()}
    env.pop("AWS_ENDPOINT_URL", None)  # the peer gets the endpoint explicitly
    result = subprocess.run(
        [str(peer_python), str(PEER_SCRIPT), *args, "--endpoint-url", queue.endpoint.endpoint_url],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return result


def microbus_graph(queue):
    graph = create_object_graph("interop", testing=True, loader=load_from_dict(queue.graph_config()))
    graph.use("microbus_sns_producer", "microbus_sqs_consumer")
    return graph


@pytest.mark.parametrize("raw", [False, True], ids=["enveloped", "raw"])
def test_microbus_consumes_what_microcosm_pubsub_produces(peer_python, make_queue, raw):
    # Given microcosm-pubsub publishing three messages to a topic our queue subscribes to
    queue = make_queue(raw=raw)
    content = {"order_id": "o-42", "amount_cents": 1299}
    result = run_peer(
        peer_python,
        queue,
        "produce",
        "--topic-arn",
        queue.topic_arn,
        "--media-type",
        PaymentCaptured.MEDIA_TYPE,
        "--count",
        "3",
        "--json-content",
        json.dumps(content),
        "--opaque-data",
        json.dumps({"X-Request-Id": "req-1"}),
    )
    assert result.returncode == 0, result.stderr
    # When microbus consumes them
    graph = microbus_graph(queue)
    received = []
    wait_for(lambda: received.extend(graph.microbus_sqs_consumer.consume()) or len(received) >= 3, timeout_s=20)
    # Then each decodes to the same content, media type and opaque data
    for message in received:
        assert message.error is None
        assert message.media_type == PaymentCaptured.MEDIA_TYPE
        assert {k: message.content[k] for k in content} == content
        assert message.opaque_data["x-request-id"] == "req-1"
        assert "x-request-published" in message.opaque_data
        message.ack()
    assert queue.depth() == 0


@pytest.mark.parametrize("raw", [False, True], ids=["enveloped", "raw"])
def test_microcosm_pubsub_consumes_what_microbus_produces(peer_python, make_queue, raw):
    # Given microbus publishing messages of two media types
    queue = make_queue(raw=raw)
    graph = microbus_graph(queue)
    graph.microbus_sns_producer.produce(OrderPlaced.MEDIA_TYPE, order_id="o-1", opaque_data={"x-request-id": "req-9"})
    graph.microbus_sns_producer.produce_batch(PaymentCaptured.MEDIA_TYPE, [{"order_id": "o-1", "amount_cents": 5}] * 2)
    # When microcosm-pubsub's own consumer and dispatcher handle them
    result = run_peer(peer_python, queue, "consume", "--queue-url", queue.queue_url, "--expect", "3", "--timeout", "30")
    # Then all three were handled (and acked by the peer) with their content and opaque data
    assert result.returncode == 0, result.stderr
    handled = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted(h["media_type"] for h in handled) == sorted(
        [OrderPlaced.MEDIA_TYPE] + [PaymentCaptured.MEDIA_TYPE] * 2
    )
    order = next(h for h in handled if h["media_type"] == OrderPlaced.MEDIA_TYPE)
    assert order["content"]["order_id"] == "o-1"
    assert order["opaque_data"]["x-request-id"] == "req-9"
    wait_for(lambda: queue.depth() == 0, timeout_s=10, what="the peer's deletes")
