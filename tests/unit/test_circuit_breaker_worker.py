"""The circuit breaker inside a worker, on the stub queue: a receive on the wire when the circuit opens brings
back messages that are returned unstarted, and a worker stopped while the circuit is open shuts down at once."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from microbus.reference.schemas import OrderPlaced

from microbus import EventKind, HandlerRegistry, LifecycleEvent, Outcome, SchemaRegistry, SQSMessageDispatcher, Worker
from microbus.consume.breaker import CircuitBreaker, CircuitBreakerSettings, CircuitState
from microbus.testing import StubQueue, wait_for


def order(i):
    return {"mediaType": OrderPlaced.MEDIA_TYPE, "order_id": f"o-{i}"}


def failed(message_id):
    return LifecycleEvent(kind=EventKind.FINISHED, queue_url="q", at=0.0, message_id=message_id, outcome=Outcome.FAILED)


@pytest.mark.timeout(60)
def test_a_receive_that_returns_after_the_circuit_opened_is_returned_unstarted():
    # Given a receive on the wire (a long poll) with three messages to bring back
    class SlowPoll(StubQueue):
        def __post_init__(self):
            super().__post_init__()
            self.polling, self.answer = threading.Event(), threading.Event()
            self.receives = 0

        def receive(self, **kwargs):
            self.receives += 1
            self.polling.set()
            self.answer.wait(30)
            return super().receive(**kwargs)

    queue = SlowPoll()
    for i in range(3):
        queue.put(order(i))
    handled = []
    breaker = CircuitBreaker(CircuitBreakerSettings(window=2, cooldown_s=60))
    dispatcher = SQSMessageDispatcher(handler_registry=HandlerRegistry({OrderPlaced.MEDIA_TYPE: handled.append}))
    worker = Worker(consumer=queue.consumer(SchemaRegistry()), dispatcher=dispatcher, circuit_breaker=breaker)
    worker.start()
    try:
        assert queue.polling.wait(5)
        # When the circuit opens meanwhile (two failures elsewhere), and then the receive returns
        breaker.on_event(failed("x-1"))
        breaker.on_event(failed("x-2"))
        assert breaker.state is CircuitState.OPEN and worker.circuit_open and worker.healthy
        queue.answer.set()
        # Then its messages go back to the queue at once, unhandled, and no further receive is made
        wait_for(lambda: worker.stats.released == 3, timeout_s=5, what="the late batch released")
        assert handled == []
        assert len(StubQueue.receive(queue, max_messages=10, wait_time_seconds=0)) == 3
        assert queue.receives == 1
    finally:
        worker.stop()
        worker.join()


@pytest.mark.timeout(60)
def test_a_worker_stopped_while_the_circuit_is_open_shuts_down_at_once():
    # Given a worker whose circuit opened on failures, with a long cool-down
    queue = StubQueue()
    for i in range(10):
        queue.put(order(i))

    def fail(content):
        raise ConnectionError("down")

    breaker = CircuitBreaker(CircuitBreakerSettings(window=2, cooldown_s=300))
    dispatcher = SQSMessageDispatcher(handler_registry=HandlerRegistry({OrderPlaced.MEDIA_TYPE: fail}))
    worker = Worker(consumer=queue.consumer(SchemaRegistry()), dispatcher=dispatcher, circuit_breaker=breaker)
    worker.start()
    wait_for(lambda: breaker.state is CircuitState.OPEN, timeout_s=10, what="the circuit to open")
    wait_for(lambda: worker.held == 0, timeout_s=10, what="everything held returned")
    # When it is stopped
    started = time.monotonic()
    worker.stop()
    worker.join()
    # Then it does not wait for the cool-down, and only the two that opened the circuit ran
    assert time.monotonic() - started < 5
    assert worker.stats.outcomes[Outcome.FAILED.label] == 2
    assert worker.stats.released == 8


@pytest.mark.timeout(60)
def test_the_worker_stops_starting_messages_when_the_circuit_opens_not_after_its_log_line():
    # Given handlers that fail at once, and a log handler that is slow to write the circuit's opening
    class SlowOpeningLine(logging.Handler):
        def emit(self, record):
            if "open" in record.getMessage():
                time.sleep(0.5)

    queue = StubQueue()
    for i in range(20):
        queue.put(order(i))
    calls = []

    def failing(content):
        calls.append(content["order_id"])
        raise ConnectionError("downstream is down")

    breaker = CircuitBreaker(CircuitBreakerSettings(window=2, cooldown_s=60))
    dispatcher = SQSMessageDispatcher(handler_registry=HandlerRegistry({OrderPlaced.MEDIA_TYPE: failing}))
    breaker_logger = logging.getLogger("microbus.consume.breaker")
    slow = SlowOpeningLine()
    breaker_logger.addHandler(slow)
    worker = Worker(
        consumer=queue.consumer(SchemaRegistry()),
        dispatcher=dispatcher,
        concurrency=2,
        prefetch=20,
        circuit_breaker=breaker,
    )
    worker.start()
    try:
        # When the second failure opens the circuit
        wait_for(lambda: worker.circuit_open, timeout_s=10, what="the circuit to open")
        # Then only the messages already running when it opened ran: the rest went back unstarted
        wait_for(lambda: worker.stats.in_flight == 0, timeout_s=10, what="every message settled or released")
        assert len(calls) <= 2 + 2 * 2, calls
        assert worker.stats.released >= 20 - len(calls)
    finally:
        breaker_logger.removeHandler(slow)
        worker.stop()
        worker.join()
