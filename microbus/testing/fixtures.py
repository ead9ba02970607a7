"""pytest fixtures: an emulator endpoint, a fresh topic + queue (+ DLQ) per test, a configured graph.

Enable with ``pytest_plugins = ["microbus.testing.fixtures"]``. The emulator is the embedded moto
server, or the endpoint in ``MICROBUS_TEST_ENDPOINT_URL`` (e.g. LocalStack) when that is set.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from microcosm.api import create_object_graph, load_from_dict
from microcosm.object_graph import ObjectGraph

from microbus.emulator import EmbeddedEmulator, Endpoint
from microbus.topology import Queue, Subscription, Topology, apply_topology

ENDPOINT_VARIABLE = "MICROBUS_TEST_ENDPOINT_URL"


@dataclass
class TestQueue:
    """A topic and a subscribed queue (with a DLQ) made for one test."""

    __test__ = False

    endpoint: Endpoint
    topic_arn: str
    queue_url: str
    dlq_url: str | None
    sns: Any
    sqs: Any

    def graph_config(self, **extra: Any) -> dict[str, Any]:
        """Graph config pointing the producer at the topic and the consumer at the queue."""
        config: dict[str, Any] = {
            **self.endpoint.config(),
            "sns_topic_arns": {"default": self.topic_arn},
            "sqs_consumer": {"sqs_queue_url": self.queue_url, "wait_seconds": 1},
        }
        for key, value in extra.items():
            config[key] = {**config.get(key, {}), **value}
        return config

    def depth(self, url: str | None = None) -> int:
        """Visible plus in-flight messages of the queue (or of ``url``)."""
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=url or self.queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attributes["ApproximateNumberOfMessages"]) + int(attributes["ApproximateNumberOfMessagesNotVisible"])

    def drain_dlq(self) -> list[dict[str, Any]]:
        """Receive (and delete) everything in the DLQ, with message attributes."""
        assert self.dlq_url is not None
        out: list[dict[str, Any]] = []
        while True:
            batch = self.sqs.receive_message(
                QueueUrl=self.dlq_url, MaxNumberOfMessages=10, WaitTimeSeconds=0, MessageAttributeNames=["All"]
            ).get("Messages", [])
            if not batch:
                return out
            out.extend(batch)
            self.sqs.delete_message_batch(
                QueueUrl=self.dlq_url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(batch)],
            )


@pytest.fixture(scope="session")
def microbus_endpoint() -> Iterator[Endpoint]:
    """The emulator every integration test talks to, over HTTP on loopback."""
    url = os.environ.get(ENDPOINT_VARIABLE)
    if url:
        yield Endpoint(url)
        return
    with EmbeddedEmulator() as emulator:
        yield emulator


@pytest.fixture
def make_queue(microbus_endpoint: Endpoint) -> Callable[..., TestQueue]:
    """Factory of fresh, uniquely named topic + queue pairs: ``make_queue(raw=False, max_receive_count=5)``."""

    def make(
        *, raw: bool = False, max_receive_count: int | None = 5, visibility_timeout_s: int = 30, media_types: Any = None
    ) -> TestQueue:
        name = f"t-{uuid.uuid4().hex[:12]}"
        settings = microbus_endpoint.settings()
        sns, sqs = settings.client("sns"), settings.client("sqs")
        topology = Topology(
            topics=(name,),
            queues=(
                Queue(
                    name=name,
                    visibility_timeout_s=visibility_timeout_s,
                    max_receive_count=max_receive_count,
                    subscriptions=(Subscription(topic=name, raw=raw, media_types=media_types),),
                ),
            ),
        )
        applied = apply_topology(topology, sns=sns, sqs=sqs)
        dlq_url = sqs.get_queue_url(QueueName=f"{name}-dlq")["QueueUrl"] if max_receive_count else None
        return TestQueue(microbus_endpoint, applied.topic_arns[name], applied.queue_urls[name], dlq_url, sns, sqs)

    return make


@pytest.fixture
def microbus_queue(make_queue: Callable[..., TestQueue]) -> TestQueue:
    """A fresh topic and subscribed queue (enveloped delivery, DLQ after 5 receives)."""
    return make_queue()


@pytest.fixture
def microbus_graph(microbus_queue: TestQueue) -> ObjectGraph:
    """A microcosm graph whose producer and consumer use ``microbus_queue``."""
    graph = create_object_graph("microbus-test", testing=True, loader=load_from_dict(microbus_queue.graph_config()))
    graph.use("sns_producer", "sqs_consumer", "sqs_message_dispatcher")
    return graph
