"""The README's example of testing user code with the fixtures, kept runnable."""

from __future__ import annotations

import pytest

import daemons.orders  # noqa: F401  (registers the reference handlers)
from microbus import Outcome
from microbus.testing import wait_for
from schemas import OrderPlaced

pytestmark = pytest.mark.integration


def test_order_is_recorded(microbus_graph):
    microbus_graph.sns_producer.produce(OrderPlaced.MEDIA_TYPE, order_id="o-fixture")
    (message,) = wait_for(microbus_graph.sqs_consumer.consume)
    result = microbus_graph.sqs_message_dispatcher.handle(message)
    assert result.outcome is Outcome.SUCCEEDED
    assert daemons.orders.order_book.orders["o-fixture"]["order_id"] == "o-fixture"
