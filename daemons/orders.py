"""The orders daemon: records placed orders and captured payments.

Run it with ``microbus-orders-daemon --sqs-queue-url URL``.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from microbus.reference.schemas import OrderPlaced, PaymentCaptured

from microbus import ConsumerDaemon, handles
from microbus.topology import Daemon, Producer, Queue, Subscription, Topic, Topology

logger = logging.getLogger(__name__)


class OrderBook:
    """In-memory record of what the daemon handled (a stand-in for a database)."""

    def __init__(self) -> None:
        self.orders: dict[str, dict[str, Any]] = {}
        self.payments: dict[str, int] = {}
        self.message_ids: set[str] = set()  # distinct messages handled, by the producer's message id
        self._lock = threading.Lock()

    def place(self, content: dict[str, Any]) -> None:
        with self._lock:
            self.orders[content["order_id"]] = content
            self._seen(content)

    def capture(self, content: dict[str, Any]) -> None:
        with self._lock:
            self.payments[content["order_id"]] = self.payments.get(content["order_id"], 0) + content["amount_cents"]
            self._seen(content)

    def _seen(self, content: dict[str, Any]) -> None:
        message_id = (content.get("opaque_data") or {}).get("x-microbus-message-id")
        if message_id:
            self.message_ids.add(message_id)


order_book = OrderBook()


@handles(OrderPlaced)
def handle_order_placed(content: dict[str, Any]) -> bool:
    """Record a placed order."""
    order_book.place(content)
    return True


@handles(PaymentCaptured)
def handle_payment_captured(content: dict[str, Any]) -> bool:
    """Record a captured payment."""
    order_book.capture(content)
    return True


class OrdersDaemon(ConsumerDaemon):
    """Consumes the orders queue."""

    name = "orders"
    media_types = (OrderPlaced, PaymentCaptured)
    handler_timeout_s = 10.0
    topology = "microbus.reference.daemons.orders:TOPOLOGY"


# The reference application's topology: `microbus topology apply` creates it; the embedded emulator, the
# demo and the test fixtures apply it with the same code. The subscription's filter is the daemon's media types.
TOPOLOGY = Topology(
    topics=(Topic(name="orders", media_types=(OrderPlaced.MEDIA_TYPE, PaymentCaptured.MEDIA_TYPE)),),
    default_topic="orders",
    queues=(
        Queue(
            name="orders",
            visibility_timeout_s=30,
            max_receive_count=5,
            subscriptions=(Subscription(topic="orders"),),
        ),
    ),
    daemons=(Daemon.of(OrdersDaemon, queue="orders"),),
    producers=(Producer(name="orders-api", produces=(OrderPlaced.MEDIA_TYPE, PaymentCaptured.MEDIA_TYPE)),),
)

main = OrdersDaemon.main

if __name__ == "__main__":
    main()
