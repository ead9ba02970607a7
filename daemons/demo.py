"""The demo: the reference application end to end on the embedded emulator."""

from __future__ import annotations

import time
from dataclasses import dataclass

from microbus.reference.daemons import fulfilment, reference
from microbus.reference.daemons.orders import OrdersDaemon, order_book
from microbus.reference.schemas import OrderPlaced, PaymentCaptured

from microbus.consume.worker import Worker
from microbus.testing.emulator import EmbeddedEmulator


@dataclass
class DemoSummary:
    """What the demo produced and what became of it."""

    produced: int
    handled: int
    distinct: int
    failed: int
    dead_lettered: int
    left_in_queue: int
    elapsed_s: float
    fanned_out: int = 0
    confirmed: int = 0
    final_runs: int = 0

    @property
    def lost(self) -> int:
        """Produced messages neither handled (counted once, by message id) nor dead-lettered."""
        return max(0, self.produced - self.distinct - self.dead_lettered)

    @property
    def ok(self) -> bool:
        """True when nothing was lost and nothing is left behind, and every fan-out confirmed its order once."""
        fulfilled = self.confirmed == self.fanned_out == self.final_runs
        return self.lost == 0 and self.left_in_queue == 0 and fulfilled

    def lines(self) -> list[str]:
        """The summary as printable lines."""
        rate = self.handled / self.elapsed_s if self.elapsed_s else 0.0
        return [
            f"produced      {self.produced}",
            f"handled       {self.handled} ({self.handled - self.distinct} duplicates)",
            f"failed        {self.failed}",
            f"dead-lettered {self.dead_lettered}",
            f"left in queue {self.left_in_queue}",
            f"lost          {self.lost}",
            f"elapsed       {self.elapsed_s:.2f}s",
            f"throughput    {rate:.0f} messages/s",
            f"fan-outs      {self.fanned_out} orders to inventory, payment and notification",
            f"confirmed     {self.confirmed} orders (on-final ran {self.final_runs} times)",
        ]


def _queue_depth(sqs: object, url: str) -> int:
    attributes = sqs.get_queue_attributes(  # type: ignore[attr-defined]
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(attributes["ApproximateNumberOfMessagesNotVisible"])


def run_demo(*, count: int = 300, concurrency: int = 4, timeout_s: float = 120.0, fulfil: int = 5) -> DemoSummary:
    """Start the emulator and the topology, run the orders daemon, produce ``count`` messages of two
    media types, fan ``fulfil`` orders out to the fulfilment daemons, and wait until every message was
    handled and deleted and every fan-out confirmed its order (or the timeout passed)."""
    fulfilment.ledger.reset()
    with EmbeddedEmulator() as emulator:
        settings = emulator.settings()
        sqs = settings.client("sqs")
        applied = emulator.apply(reference.TOPOLOGY)
        queue_url = applied.queue_urls["orders"]
        daemon = OrdersDaemon(
            **emulator.config(),
            microbus_sqs_consumer={"sqs_queue_url": queue_url, "wait_seconds": 1},
            microbus_sns_topic_arns=applied.sns_topic_arns_config(),
            parallel={"callback_queue_url": applied.queue_urls["fulfilment-callbacks"]},
        )
        worker = daemon.create_worker(concurrency=concurrency)
        helpers = [
            cls(
                **emulator.config(),
                microbus_sqs_consumer={"sqs_queue_url": applied.queue_urls[cls.name], "wait_seconds": 1},
            ).create_worker(concurrency=2)
            for cls in (fulfilment.FulfilmentDaemon, fulfilment.FulfilmentCallbacksDaemon)
        ]
        started = time.monotonic()
        for each in (worker, *helpers):
            each.start()
        producer = daemon.graph.microbus_sns_producer
        orders = [
            {"order_id": f"order-{i}", "customer_id": f"c-{i % 7}", "total_cents": 100 + i} for i in range(count // 2)
        ]
        payments = [{"order_id": f"order-{i}", "amount_cents": 100 + i} for i in range(count - len(orders))]
        produced = len(producer.produce_batch(OrderPlaced.MEDIA_TYPE, orders))
        produced += len(producer.produce_batch(PaymentCaptured.MEDIA_TYPE, payments))
        fanned_out = [fulfilment.fulfil_order(daemon.graph.parallel, order) for order in orders[:fulfil]]
        deadline = started + timeout_s
        while time.monotonic() < deadline and not (
            len(order_book.message_ids) + worker.stats.dead_lettered >= produced and _fulfilled(fanned_out)
        ):
            time.sleep(0.05)
        elapsed = time.monotonic() - started
        _stop(worker, *helpers)
        return DemoSummary(
            produced=produced,
            handled=worker.stats.handled,
            distinct=len(order_book.message_ids),
            failed=worker.stats.failed,
            dead_lettered=worker.stats.dead_lettered,
            left_in_queue=sum(_queue_depth(sqs, url) for url in applied.queue_urls.values()),
            elapsed_s=elapsed,
            fanned_out=len(fanned_out),
            confirmed=len(set(fanned_out) & set(fulfilment.ledger.confirmed)),
            final_runs=fulfilment.ledger.final_runs,
        )


def _fulfilled(order_ids: list[str]) -> bool:
    """Every order's three steps reported, and its final callback ran."""
    ledger = fulfilment.ledger
    closed = set(ledger.confirmed) | set(ledger.rejected)
    return all(len(ledger.steps.get(order_id, {})) == 3 and order_id in closed for order_id in order_ids)


def _stop(*workers: Worker) -> None:
    for worker in workers:
        worker.stop()
    for worker in workers:
        worker.join()


__all__ = ["DemoSummary", "run_demo", "order_book"]
