"""The demo: the reference application end to end on the embedded emulator."""

from __future__ import annotations

import time
from dataclasses import dataclass

from daemons.orders import TOPOLOGY, OrdersDaemon, order_book
from microbus.emulator import EmbeddedEmulator
from schemas import OrderPlaced, PaymentCaptured


@dataclass
class DemoSummary:
    """What the demo produced and what became of it."""

    produced: int
    handled: int
    failed: int
    dead_lettered: int
    left_in_queue: int
    elapsed_s: float

    @property
    def lost(self) -> int:
        """Produced messages neither handled nor dead-lettered."""
        return max(0, self.produced - self.handled - self.dead_lettered)

    @property
    def ok(self) -> bool:
        """True when nothing was lost and nothing is left behind."""
        return self.lost == 0 and self.left_in_queue == 0 and self.handled == self.produced

    def lines(self) -> list[str]:
        """The summary as printable lines."""
        rate = self.handled / self.elapsed_s if self.elapsed_s else 0.0
        return [
            f"produced      {self.produced}",
            f"handled       {self.handled}",
            f"failed        {self.failed}",
            f"dead-lettered {self.dead_lettered}",
            f"left in queue {self.left_in_queue}",
            f"lost          {self.lost}",
            f"elapsed       {self.elapsed_s:.2f}s",
            f"throughput    {rate:.0f} messages/s",
        ]


def _queue_depth(sqs: object, url: str) -> int:
    attributes = sqs.get_queue_attributes(  # type: ignore[attr-defined]
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(attributes["ApproximateNumberOfMessagesNotVisible"])


def run_demo(*, count: int = 300, concurrency: int = 4, timeout_s: float = 120.0) -> DemoSummary:
    """Start the emulator and the topology, run the orders daemon, produce ``count`` messages of two
    media types, and wait until every one was handled and deleted (or the timeout passed)."""
    with EmbeddedEmulator() as emulator:
        settings = emulator.settings()
        sqs = settings.client("sqs")
        applied = emulator.apply(TOPOLOGY)
        queue_url = applied.queue_urls["orders"]
        daemon = OrdersDaemon(
            **emulator.config(),
            sqs_consumer={"sqs_queue_url": queue_url, "wait_seconds": 1},
            sns_topic_arns=applied.sns_topic_arns_config(),
        )
        worker = daemon.create_worker(concurrency=concurrency)
        started = time.monotonic()
        worker.start()
        producer = daemon.graph.sns_producer
        orders = [
            {"order_id": f"order-{i}", "customer_id": f"c-{i % 7}", "total_cents": 100 + i} for i in range(count // 2)
        ]
        payments = [{"order_id": f"order-{i}", "amount_cents": 100 + i} for i in range(count - len(orders))]
        produced = len(producer.produce_batch(OrderPlaced.MEDIA_TYPE, orders))
        produced += len(producer.produce_batch(PaymentCaptured.MEDIA_TYPE, payments))
        deadline = started + timeout_s
        while time.monotonic() < deadline and worker.stats.handled + worker.stats.dead_lettered < produced:
            time.sleep(0.05)
        elapsed = time.monotonic() - started
        worker.stop()
        worker.join()
        return DemoSummary(
            produced=produced,
            handled=worker.stats.handled,
            failed=worker.stats.failed,
            dead_lettered=worker.stats.dead_lettered,
            left_in_queue=_queue_depth(sqs, queue_url),
            elapsed_s=elapsed,
        )


__all__ = ["DemoSummary", "run_demo", "order_book"]
