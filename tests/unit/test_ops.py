"""The operations layer without an emulator: JSON lines, health rules, metrics labels, the daemon's options,
and everything working without OpenTelemetry."""

from __future__ import annotations

import io
import json
import logging
import sys
import threading
import urllib.request
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from microbus.reference.schemas import OrderPlaced

from microbus import HandlerRegistry, SchemaRegistry, SQSMessageDispatcher, Worker
from microbus.consume.daemon import ConsumerDaemon, daemon_command
from microbus.consume.dispatch import RECORD_FIELDS
from microbus.consume.lifecycle import EventKind, LifecycleEvent
from microbus.ops.daemon import DaemonOperations
from microbus.ops.logs import JsonFormatter, configure_logging
from microbus.ops.metrics import Metrics
from microbus.ops.server import Health
from microbus.testing import StubQueue, wait_for
from microbus.wire import tracecontext


def order(i, media_type=OrderPlaced.MEDIA_TYPE):
    return {"mediaType": media_type, "order_id": f"o-{i}"}


def record(message, *args, exc_info=None, **fields):
    rec = logging.LogRecord("microbus.test", logging.WARNING, __file__, 1, message, args, exc_info, None)
    setattr(rec, RECORD_FIELDS, fields)
    return rec


def test_a_json_line_stays_one_line_whatever_the_message_holds_and_carries_the_fields_and_traceback():
    # Given a record whose message tries to forge a second line, with fields and an exception
    try:
        raise ValueError("bad\nline")
    except ValueError:
        exc_info = sys.exc_info()
    rec = record("%s", 'x\n{"level": "forged"}', exc_info=exc_info, daemon="d", queue="q", cid=None)
    # When it is formatted as JSON
    line = JsonFormatter().format(rec)
    # Then it is one line, one object, with the fields (None left out) and the traceback
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["message"] == 'x\n{"level": "forged"}' and parsed["level"] == "WARNING"
    assert parsed["daemon"] == "d" and parsed["queue"] == "q" and "cid" not in parsed
    assert "ValueError: bad" in parsed["traceback"]


def test_configure_logging_refuses_an_unknown_format_and_quiets_botocore():
    with pytest.raises(ValueError, match="Unknown log format 'xml'"):
        configure_logging(log_format="xml")
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        stream = io.StringIO()
        configure_logging(log_format="json", stream=stream)
        logging.getLogger("botocore.credentials").info("Found credentials in environment variables.")
        logging.getLogger("microbus.test").info("hello")
        assert [json.loads(line)["message"] for line in stream.getvalue().splitlines()] == ["hello"]
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def fake_worker(**overrides):
    values = dict(
        name="d",
        queue_name="q",
        stopping=False,
        activities_down=set(),
        last_receive_at=100.0,
        stats=SimpleNamespace(in_flight=0),
        circuit_open=False,
    )
    return SimpleNamespace(**(values | overrides))


@pytest.mark.parametrize(
    ("worker", "problem"),
    [
        (fake_worker(), None),
        (fake_worker(last_receive_at=100.0 - 61), "no receive completed for 61s (bound 60s)"),
        (fake_worker(last_receive_at=None), "no receive completed in the 100s since the start (bound 60s)"),
        (fake_worker(activities_down={"heartbeat"}), "activity heartbeat is down"),
        (fake_worker(stopping=True, activities_down={"heartbeat"}), "stopping"),
    ],
    ids=["healthy", "stalled-poller", "never-received", "activity-down", "stopping"],
)
def test_health_names_what_is_wrong(worker, problem):
    health = Health([worker], receive_bound_s=60.0, created_at=0.0)
    ok, report = health.check(now=100.0)
    assert ok is (problem is None)
    assert report["problems"] == ([] if problem is None else [f"d (q): {problem}"])


def test_an_open_circuit_is_reported_degraded_not_unhealthy():
    health = Health([fake_worker(), fake_worker(name="e", circuit_open=True)], receive_bound_s=60.0, created_at=0.0)
    ok, report = health.check(now=100.0)
    assert ok is True
    assert report["status"] == "degraded"
    assert [w["circuit_open"] for w in report["workers"]] == [False, True]


def test_the_circuit_breaker_state_is_a_metric():
    pytest.importorskip("prometheus_client")
    metrics = Metrics()
    observer = metrics.observer(daemon="d", queue="q", media_types=())

    def value(name):
        return metrics.registry.get_sample_value(name, {"daemon": "d", "queue": "q"})

    assert value("microbus_circuit_open") == 0
    observer.on_event(LifecycleEvent(kind=EventKind.CIRCUIT_OPENED, queue_url="stub://q", at=0.0))
    assert (value("microbus_circuit_open"), value("microbus_circuit_opened_total")) == (1, 1)
    observer.on_event(LifecycleEvent(kind=EventKind.CIRCUIT_HALF_OPENED, queue_url="stub://q", at=1.0))
    assert value("microbus_circuit_open") == 1
    observer.on_event(LifecycleEvent(kind=EventKind.CIRCUIT_CLOSED, queue_url="stub://q", at=2.0))
    assert (value("microbus_circuit_open"), value("microbus_circuit_opened_total")) == (0, 1)


def test_ready_only_between_the_start_and_the_shutdown():
    worker = fake_worker()
    health = Health([worker])
    assert health.ready() == (False, {"status": "starting"})
    health.started = True
    assert health.ready()[0] is True
    worker.stopping = True
    assert health.ready() == (False, {"status": "stopping", "workers": ["d"]})


def stub_worker(queue, name, handler=lambda content: None):
    dispatcher = SQSMessageDispatcher(handler_registry=HandlerRegistry({OrderPlaced.MEDIA_TYPE: handler}), source=name)
    return Worker(consumer=queue.consumer(SchemaRegistry()), dispatcher=dispatcher, grace_period_s=2.0)


def scrape(url):
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


@pytest.mark.timeout(30)
def test_companion_workers_share_one_endpoint_and_unknown_media_types_are_one_label():
    # Given two workers of one process (a daemon and its companion) on one endpoint
    pytest.importorskip("prometheus_client")
    first, second = StubQueue(queue_url="stub://first"), StubQueue(queue_url="stub://second")
    go = threading.Event()
    workers = [stub_worker(first, "primary", lambda content: go.wait(10)), stub_worker(second, "companion")]
    operations = DaemonOperations(metrics_port=0)
    operations.attach(workers)
    try:
        for worker in workers:
            worker.start()
        operations.started()
        # When messages arrive, some with media types nobody registered
        first.put(order(1))
        for i in range(3):
            second.put(order(i, media_type=f"application/vnd.random.{i}"))
        url = operations.server.url
        wait_for(lambda: 'outcome="REJECTED"' in scrape(url + "/metrics"), timeout_s=10, what="rejections counted")
        text = scrape(url + "/metrics")
        # Then one endpoint lists both daemons, and the unknown media types share one label value
        assert 'microbus_messages_waiting{daemon="primary",queue="first"}' in text
        assert 'microbus_messages_in_flight{daemon="primary",queue="first"} 1.0' in text
        rejected = (
            'microbus_messages_handled_total{daemon="companion",media_type="unknown",outcome="REJECTED",queue="second"}'
        )
        wait_for(lambda: f"{rejected} 3.0" in scrape(url + "/metrics"), timeout_s=10, what="three rejections")
        assert "application/vnd.random" not in scrape(url + "/metrics")
        assert [w["daemon"] for w in json.loads(scrape(url + "/health"))["workers"]] == ["primary", "companion"]
    finally:
        go.set()
        for worker in workers:
            worker.stop()
            worker.join()
        operations.close()


def test_without_opentelemetry_nothing_is_added_to_messages_and_handlers_run(monkeypatch):
    # Given no OpenTelemetry importable
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    tracecontext._otel.cache_clear()
    try:
        assert tracecontext.tracing_available() is False
        # Then produced messages carry only their media type, and a handler runs
        from microbus import SNSProducer, TopicArns

        registry = SchemaRegistry()
        producer = SNSProducer(transport=None, schema_registry=registry, topic_arns=TopicArns(default="arn:t"))
        outgoing = producer.create_message(OrderPlaced.MEDIA_TYPE, order_id="o-1")
        assert set(outgoing.message_attributes) == {"media_type"}
        queue = StubQueue()
        handled = []
        worker = stub_worker(queue, "plain", handled.append)
        worker.start()
        queue.put(order(1))
        wait_for(lambda: handled, timeout_s=10, what="handled")
        worker.stop()
        worker.join()
    finally:
        tracecontext._otel.cache_clear()


class OptionsDaemon(ConsumerDaemon):
    name = "options-test"


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--log-format", "xml"], "'xml' is not one of 'human', 'json'"),
        (["--metrics-port", "70000"], "70000 is not in the range 0<=x<=65535"),
        (["--stats-interval", "-1"], "-1.0 is not in the range x>=0"),
        (["--health-receive-bound", "0"], "0.0 is not in the range x>=1.0"),
    ],
)
def test_bad_observability_options_are_usage_errors(args, complaint):
    result = CliRunner().invoke(daemon_command(OptionsDaemon), args)
    assert result.exit_code == 2
    assert complaint in result.output


@pytest.mark.timeout(30)
def test_a_worker_at_capacity_stays_healthy_while_its_handlers_run_longer_than_the_receive_bound():
    # Given a worker with room for one message, whose handler runs for 3 s, and a 1.5 s receive bound
    queue = StubQueue()
    for i in range(3):
        queue.put(order(i))
    go = threading.Event()
    worker = Worker(
        consumer=queue.consumer(SchemaRegistry()),
        dispatcher=SQSMessageDispatcher(
            handler_registry=HandlerRegistry({OrderPlaced.MEDIA_TYPE: lambda c: go.wait(3)})
        ),
        prefetch=0,
    )
    health = Health([worker], receive_bound_s=1.5)
    worker.start()
    try:
        wait_for(lambda: worker.held == 1 and worker.last_receive_at is not None, timeout_s=5, what="one message held")
        # Then the poller, waiting for room, keeps /health at 200
        for _ in range(10):
            assert health.check()[0], health.check()[1]
            go.wait(0.25)
    finally:
        go.set()
        worker.stop()
        worker.join()


def test_a_metrics_port_in_use_is_one_sentence():
    from microbus import ConfigurationError

    taken = DaemonOperations(metrics_port=0)
    taken.attach([])
    try:
        port = taken.server.address[1]
        with pytest.raises(
            ConfigurationError, match=f"Cannot serve metrics on 127.0.0.1:{port}: Address already in use"
        ):
            DaemonOperations(metrics_port=port).attach([])
    finally:
        taken.close()
