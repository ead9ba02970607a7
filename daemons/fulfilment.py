"""Order fulfilment with fan-out/fan-in: an order fans out to inventory, payment and notification; once all
three finished, a final callback confirms the order (or rejects it, naming the steps that failed).

Two daemons:

- ``microbus-fulfilment-daemon --sqs-queue-url <fulfilment queue>`` runs the three targets and reports
  each outcome to the callback queue (the ``parallel_reporter`` middleware);
- ``microbus-fulfilment-callbacks-daemon --sqs-queue-url <callback queue>`` runs the callbacks; it keeps
  the fan-in state in the DynamoDB table ``fulfilment-fan-in``.

The orders service starts a fulfilment with :func:`fulfil_order` (its graph needs
``parallel.callback_queue_url`` and topics for the three media types).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from microbus.reference.schemas import ChargePayment, ReserveInventory, SendNotification

from microbus import ConsumerDaemon, handles
from microbus.patterns.fanin import CallbackDaemon
from microbus.patterns.parallel import Parallel, callback, current_cid, register_target
from microbus.topology import Daemon, Queue, Subscription, Table, Topic, Topology

logger = logging.getLogger(__name__)

TARGET_MEDIA_TYPES = (ReserveInventory.MEDIA_TYPE, ChargePayment.MEDIA_TYPE, SendNotification.MEDIA_TYPE)
ON_STEP = "fulfilment.step-done"
ON_ALL_STEPS = "fulfilment.confirm-order"
FAN_IN_TABLE = "fulfilment-fan-in"

register_target("inventory", ReserveInventory)
register_target("payment", ChargePayment)
register_target("notification", SendNotification)


class PaymentDeclined(Exception):
    """The payment provider refused the charge."""


class FulfilmentLedger:
    """In-memory record of fulfilment progress (a stand-in for a database)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Forget everything (the demo starts from a clean ledger)."""
        with self._lock:
            self.steps: dict[str, dict[str, bool]] = {}
            self.confirmed: dict[str, dict[str, Any]] = {}
            self.rejected: dict[str, list[str]] = {}
            self.final_runs = 0

    def step(self, order_id: str, target: str, ok: bool) -> None:
        with self._lock:
            self.steps.setdefault(order_id, {})[target] = ok

    def close(self, order_id: str, data: list[dict[str, Any]]) -> None:
        failed = sorted(item["target"] for item in data if not item["ok"])
        with self._lock:
            self.final_runs += 1
            if failed:
                self.rejected[order_id] = failed
            else:
                self.confirmed[order_id] = {item["target"]: item["response"] for item in data}


ledger = FulfilmentLedger()


@handles(ReserveInventory)
def reserve_inventory(content: dict[str, Any]) -> dict[str, Any]:
    """Reserve stock; the response says how much."""
    return {"order_id": content["order_id"], "reserved": content["quantity"]}


@handles(ChargePayment)
def charge_payment(content: dict[str, Any]) -> dict[str, Any]:
    """Charge the customer; amounts over 100,000 cents are declined."""
    if content["amount_cents"] > 100_000:
        raise PaymentDeclined(f"amount {content['amount_cents']} over the limit")
    return {"order_id": content["order_id"], "charge_id": f"ch-{current_cid()}"}


@handles(SendNotification)
def send_notification(content: dict[str, Any]) -> dict[str, Any]:
    """Notify the customer."""
    return {"order_id": content["order_id"], "notified": content["customer_id"]}


@callback(ON_STEP)
def step_done(payload: dict[str, Any]) -> None:
    """Record each step as it finishes (the order id is the cid)."""
    ledger.step(payload["cid"], payload["target"], payload["ok"])


@callback(ON_ALL_STEPS)
def confirm_order(payload: dict[str, Any]) -> None:
    """Confirm the order when every step succeeded, else reject it."""
    ledger.close(payload["cid"], payload["data"])
    logger.info("Order %r fulfilment finished: %d steps", payload["cid"], len(payload["data"]))


def fulfil_order(parallel: Parallel, order: dict[str, Any]) -> str:
    """Fan an order out to inventory, payment and notification; the order id is the cid."""
    order_id = order["order_id"]
    targets = {
        "inventory": {"order_id": order_id, "quantity": order.get("quantity", 1)},
        "payment": {"order_id": order_id, "amount_cents": order["total_cents"]},
        "notification": {"order_id": order_id, "customer_id": order["customer_id"]},
    }
    return parallel.fan_out(targets, on_target=[ON_STEP], on_final=[ON_ALL_STEPS], cid=order_id)


class FulfilmentDaemon(ConsumerDaemon):
    """Runs the fulfilment targets and reports each outcome to the callback queue."""

    name = "fulfilment"
    media_types = TARGET_MEDIA_TYPES

    @property
    def defaults(self) -> dict[str, Any]:
        return {
            **super().defaults,
            "microbus_sqs_message_dispatcher": {"middleware": ["parallel_reporter"]},
            "parallel_reporter": {"allowed_reply_queues": ["fulfilment-callbacks"]},  # reports go nowhere else
        }


class FulfilmentCallbacksDaemon(CallbackDaemon):
    """Consumes the fulfilment callback queue: records the steps and confirms orders."""

    name = "fulfilment-callbacks"

    @property
    def defaults(self) -> dict[str, Any]:
        return {**super().defaults, "fan_in_store": {"table_name": FAN_IN_TABLE}}


# The targets' topic routes their media types; the callback queue is sent to directly (no subscription);
# the callback daemon counts completions in the fan-in table.
# `microbus.reference.daemons.reference` adds the orders flow.
TOPOLOGY = Topology(
    topics=(Topic(name="fulfilment", media_types=TARGET_MEDIA_TYPES),),
    queues=(
        Queue(
            name="fulfilment",
            max_receive_count=5,
            subscriptions=(Subscription(topic="fulfilment", media_types=TARGET_MEDIA_TYPES),),
        ),
        Queue(name="fulfilment-callbacks", max_receive_count=5),
    ),
    tables=(Table(name=FAN_IN_TABLE),),
    daemons=(
        Daemon.of(FulfilmentDaemon, queue="fulfilment", sends_to=("fulfilment-callbacks",)),
        Daemon(
            name=FulfilmentCallbacksDaemon.name,
            queue="fulfilment-callbacks",
            sends_to=("fulfilment-callbacks",),  # one invocation message per callback, back to its own queue
            tables=(FAN_IN_TABLE,),
        ),
    ),
)

main = FulfilmentDaemon.main
callbacks_main = FulfilmentCallbacksDaemon.main

if __name__ == "__main__":
    main()
