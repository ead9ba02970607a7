"""The circuit breaker on the emulator: a handler that fails while a flag file exists (a downstream outage)
opens the circuit, receiving stops and the queue keeps its messages; once the flag is gone, after the cool-down
one trial message runs, then the worker resumes and drains the queue."""

from __future__ import annotations

import json
import threading
import uuid

import pytest
from marshmallow import fields

from microbus import (
    ConfigurationError,
    ConsumerDaemon,
    EventKind,
    HandlerRegistry,
    Outcome,
    PubSubMessageSchema,
    SchemaRegistry,
    SQSConsumer,
    SQSMessageDispatcher,
    Worker,
    handles,
    schema,
)
from microbus.consume.breaker import CircuitBreaker, CircuitBreakerSettings, CircuitState
from microbus.consume.dispatch import RetryPolicy
from microbus.testing import wait_for
from microbus.wire.transport import SQSTransport

pytestmark = pytest.mark.integration


@schema
class Call(PubSubMessageSchema):
    """A call to a downstream service."""

    MEDIA_TYPE = f"application/vnd.microbus.test.breaker-call.{uuid.uuid4().hex}"

    n = fields.Integer(required=True)


class Events:
    """A lifecycle observer that keeps every event, in order."""

    def __init__(self):
        self.events = []
        self._lock = threading.Lock()

    def on_event(self, event):
        with self._lock:
            self.events.append(event)

    def kinds(self):
        with self._lock:
            return [e.kind for e in self.events]

    def of(self, kind):
        with self._lock:
            return [e for e in self.events if e.kind is kind]


def visible(queue):
    attributes = queue.sqs.get_queue_attributes(
        QueueUrl=queue.queue_url, AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"])


@pytest.mark.parametrize("concurrency", [1, 4])
def test_failures_open_the_circuit_and_a_trial_message_closes_it(make_queue, tmp_path, concurrency):
    # Given a handler that fails while a flag file exists, and 10 messages on the queue
    queue = make_queue(max_receive_count=50)
    flag = tmp_path / "downstream-down"
    flag.touch()
    handled = []

    def call_downstream(content):
        if flag.exists():
            raise ConnectionError("downstream is down")
        handled.append(content["n"])

    queue.sqs.send_message_batch(
        QueueUrl=queue.queue_url,
        Entries=[{"Id": str(n), "MessageBody": json.dumps({"mediaType": Call.MEDIA_TYPE, "n": n})} for n in range(10)],
    )
    client = queue.endpoint.settings().client("sqs")
    breaker = CircuitBreaker(CircuitBreakerSettings(threshold=0.5, window=4, cooldown_s=4))
    receives = []
    client.meta.events.register(
        "provide-client-params.sqs.ReceiveMessage",
        lambda params, **kwargs: receives.append((breaker.state, params["MaxNumberOfMessages"])),
    )
    events = Events()
    worker = Worker(
        consumer=SQSConsumer(
            transport=SQSTransport(client=client, queue_url=queue.queue_url),
            schema_registry=SchemaRegistry(),
            wait_seconds=1,
        ),
        dispatcher=SQSMessageDispatcher(
            handler_registry=HandlerRegistry({Call.MEDIA_TYPE: call_downstream}),
            retry_policy=RetryPolicy(base_s=1, max_s=1, jitter=False),
        ),
        concurrency=concurrency,
        observers=[events],
        circuit_breaker=breaker,
    )
    worker.start()
    try:
        # When the handler keeps failing
        wait_for(lambda: events.of(EventKind.CIRCUIT_OPENED), timeout_s=20, what="the circuit to open")
        # Then the worker is not crashed, but reports the open circuit
        assert worker.circuit_open and worker.healthy
        # And what it held went back unstarted (if any still waited: handlers that finish at once may have started
        # them all before the worker heard of the opening), and receiving stopped: every message is visible
        wait_for(lambda: visible(queue) == 10, timeout_s=10, what="all 10 messages visible while open")
        assert breaker.state is CircuitState.OPEN
        assert sum(1 for state, _ in receives if state is CircuitState.OPEN) <= worker.receivers  # in flight at opening
        assert len(events.of(EventKind.CIRCUIT_OPENED)) == 1
        # When the downstream service is back
        flag.unlink()
        wait_for(lambda: events.of(EventKind.CIRCUIT_CLOSED), timeout_s=20, what="the circuit to close")
        # Then after the cool-down one message was received and handled alone before the circuit closed
        kinds = events.kinds()
        trial = kinds[kinds.index(EventKind.CIRCUIT_HALF_OPENED) : kinds.index(EventKind.CIRCUIT_CLOSED)]
        assert trial.count(EventKind.STARTED) == 1
        assert (CircuitState.HALF_OPEN, 1) in receives
        assert not worker.circuit_open
        # And then it resumes and drains the queue
        wait_for(lambda: sorted(handled) == list(range(10)), timeout_s=30, what="every message handled")
        wait_for(lambda: queue.depth() == 0, what="an empty queue")
    finally:
        worker.stop()
        worker.join()
    assert worker.stats.outcomes[Outcome.SUCCEEDED.label] == 10
    assert queue.drain_dlq() == []


@handles(Call)
def handle_call(content):
    """The daemon's handler (not run here)."""


class BreakerDaemon(ConsumerDaemon):
    """A daemon whose circuit breaker settings come from its configuration."""

    name = "breaker-daemon"
    media_types = [Call.MEDIA_TYPE]


def test_the_daemon_option_and_the_configuration_turn_the_breaker_on(microbus_queue):
    # Given a daemon on the emulator
    config = microbus_queue.graph_config()
    # Then the breaker is off by default
    assert BreakerDaemon(**config).create_worker().circuit_breaker is None
    # And --circuit-breaker turns it on with the configured settings
    worker = BreakerDaemon(**config, worker={"circuit_breaker": {"window": 8}}).create_worker(circuit_breaker=True)
    assert worker.circuit_breaker is not None
    assert worker.circuit_breaker.settings == CircuitBreakerSettings(threshold=0.5, window=8, cooldown_s=30.0)
    # And so does worker.circuit_breaker.enabled (e.g. BREAKER_DAEMON__WORKER__CIRCUIT_BREAKER__ENABLED=true)
    enabled = BreakerDaemon(**config, worker={"circuit_breaker": {"enabled": "true"}}).create_worker()
    assert enabled.circuit_breaker is not None
    # And a bad setting fails with one sentence that names it
    bad = BreakerDaemon(**config, worker={"circuit_breaker": {"threshold": "half"}})
    with pytest.raises(ConfigurationError, match="worker.circuit_breaker needs numbers"):
        bad.create_worker(circuit_breaker=True)
    zero = BreakerDaemon(**config, worker={"circuit_breaker": {"window": 0}})
    with pytest.raises(ConfigurationError, match="circuit_breaker.window must be at least 1"):
        zero.create_worker(circuit_breaker=True)
