"""The reference application's fulfilment fan-out/fan-in, and the demo, against the emulator."""

from __future__ import annotations

import uuid

import pytest
from microbus.reference.daemons import fulfilment
from microbus.reference.daemons.demo import run_demo
from microcosm.api import create_object_graph, load_from_dict

from microbus.testing import wait_for
from microbus.topology import apply_topology

pytestmark = pytest.mark.integration


def test_an_order_is_confirmed_when_all_steps_succeed_and_rejected_when_payment_is_declined(microbus_endpoint):
    # Given the fulfilment topology and both fulfilment daemons
    settings = microbus_endpoint.settings()
    shop = apply_topology(
        fulfilment.TOPOLOGY,
        sns=settings.client("sns"),
        sqs=settings.client("sqs"),
        dynamodb=settings.client("dynamodb"),
    )
    workers = [
        cls(
            **microbus_endpoint.config(),
            microbus_sqs_consumer={"sqs_queue_url": shop.queue_urls[cls.name], "wait_seconds": 1},
        ).create_worker(concurrency=2)
        for cls in (fulfilment.FulfilmentDaemon, fulfilment.FulfilmentCallbacksDaemon)
    ]
    config = {
        **microbus_endpoint.config(),
        "microbus_sns_topic_arns": {"default": shop.topic_arns["fulfilment"]},
        "parallel": {"callback_queue_url": shop.queue_urls["fulfilment-callbacks"]},
    }
    graph = create_object_graph("orders", testing=True, loader=load_from_dict(config))
    good, declined = f"o-{uuid.uuid4().hex[:8]}", f"o-{uuid.uuid4().hex[:8]}"
    for worker in workers:
        worker.start()
    try:
        # When two orders fan out, one over the payment limit
        assert (
            fulfilment.fulfil_order(graph.parallel, {"order_id": good, "customer_id": "c", "total_cents": 500}) == good
        )
        fulfilment.fulfil_order(graph.parallel, {"order_id": declined, "customer_id": "c", "total_cents": 500_000})
        # Then the first is confirmed with every step's response, the second rejected for its payment
        ledger = fulfilment.ledger
        wait_for(lambda: good in ledger.confirmed and declined in ledger.rejected, what="both orders closed")
        wait_for(lambda: len(ledger.steps.get(good, {})) == len(ledger.steps.get(declined, {})) == 3, what="steps")
    finally:
        for worker in workers:
            worker.stop()
        for worker in workers:
            worker.join()
    assert ledger.confirmed[good] == {
        "inventory": {"order_id": good, "reserved": 1},
        "payment": {"order_id": good, "charge_id": f"ch-{good}"},
        "notification": {"order_id": good, "notified": "c"},
    }
    assert ledger.rejected[declined] == ["payment"]
    assert ledger.steps[declined] == {"inventory": True, "payment": False, "notification": True}


def test_the_demo_confirms_every_fanned_out_order_and_loses_nothing():
    summary = run_demo(count=20, concurrency=2, timeout_s=60, fulfil=3)
    assert summary.ok, summary.lines()
    assert (summary.fanned_out, summary.confirmed) == (3, 3)
    assert any(line.startswith("confirmed     3 orders") for line in summary.lines())
