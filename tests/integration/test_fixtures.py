"""The README's example of testing user code with the fixtures, kept runnable."""

from __future__ import annotations

import microbus.reference.daemons.orders  # noqa: F401  (registers the reference handlers)
import pytest
from microbus.reference.schemas import OrderPlaced

from microbus import Outcome
from microbus.testing import wait_for

pytestmark = pytest.mark.integration


def test_order_is_recorded(microbus_graph):
    microbus_graph.microbus_sns_producer.produce(OrderPlaced.MEDIA_TYPE, order_id="o-fixture")
    (message,) = wait_for(microbus_graph.microbus_sqs_consumer.consume)
    result = microbus_graph.microbus_sqs_message_dispatcher.handle(message)
    assert result.outcome is Outcome.SUCCEEDED
    assert microbus.reference.daemons.orders.order_book.orders["o-fixture"]["order_id"] == "o-fixture"
