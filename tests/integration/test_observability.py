"""Operating a daemon: its log lines (human and JSON), handler tracebacks, the periodic stats line, and the
metrics and health endpoints, on a daemon run as a child process against the emulator.

The daemon is defined here and run with ``microbus run tests.integration.test_observability:ObserveDaemon``
(signals reach only a main thread, and logging is configured by the command line).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from marshmallow import fields
from microcosm.api import create_object_graph, load_from_dict

from microbus import ConsumerDaemon, PubSubMessageSchema, handles, schema
from microbus.testing import wait_for

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]
WORK_MT = "application/vnd.microbus.test.observe.work"


@schema
class ObserveWork(PubSubMessageSchema):
    MEDIA_TYPE = WORK_MT
    n = fields.Integer(required=True)


def explode_for_the_traceback(n: int) -> None:
    raise ValueError(f"negative n: {n}")


@handles(ObserveWork)
def handle_work(content: dict[str, Any]) -> None:
    """n < 0 fails; n ≥ 1000 sleeps n/1000 seconds (a busy handler)."""
    if content["n"] < 0:
        explode_for_the_traceback(content["n"])
    if content["n"] >= 1000:
        time.sleep(content["n"] / 1000)


class ObserveDaemon(ConsumerDaemon):
    name = "observe-test"
    media_types = (ObserveWork,)

    @property
    def defaults(self) -> dict[str, Any]:
        # a failed message comes back after exactly a minute, not within the test's counting (the default backoff
        # of 1 s, jittered, let a loaded machine receive it a second time before the metrics were read)
        return {
            **super().defaults,
            "microbus_sqs_message_dispatcher": {"backoff_base_s": 60, "backoff_max_s": 60, "backoff_jitter": False},
        }


class Daemon:
    """A daemon child process whose stderr lines are collected as they come."""

    def __init__(self, queue: Any, *args: str) -> None:
        env = {
            **os.environ,
            **queue.endpoint.environ(),
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        }
        command = [str(BIN / "microbus"), "run", f"{__name__}:ObserveDaemon", "--sqs-queue-url", queue.queue_url]
        self.process = subprocess.Popen(
            [*command, "--wait-seconds", "1", *args],
            env=env,
            cwd=str(ROOT),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def wait_for_line(self, pattern: str, timeout_s: float = 20) -> re.Match[str]:
        found: list[re.Match[str]] = []

        def match() -> bool:
            found.extend(m for m in (re.search(pattern, line) for line in list(self.lines)) if m)
            return bool(found)

        wait_for(match, timeout_s=timeout_s, what=f"a line matching {pattern!r}; got:\n{self.stderr}")
        return found[0]

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=20)
        finally:
            self.close()

    def close(self) -> None:
        self.process.kill()
        self.process.wait()
        self._reader.join(10)
        assert self.process.stderr is not None
        self.process.stderr.close()


@pytest.fixture
def run_daemon(microbus_queue: Any) -> Iterator[Any]:
    started: list[Daemon] = []

    def run(*args: str) -> Daemon:
        daemon = Daemon(microbus_queue, *args)
        started.append(daemon)
        return daemon

    yield run
    for daemon in started:
        daemon.close()


def send(queue: Any, *ns: int) -> None:
    """Raw SQS messages (no SNS envelope), one per n."""
    for start in range(0, len(ns), 10):
        queue.sqs.send_message_batch(
            QueueUrl=queue.queue_url,
            Entries=[
                {"Id": str(i), "MessageBody": json.dumps({"mediaType": WORK_MT, "n": n})}
                for i, n in enumerate(ns[start : start + 10])
            ],
        )


@pytest.mark.parametrize("debug", [False, True], ids=["info", "debug"])
def test_a_handler_failure_logs_its_traceback(microbus_queue, run_daemon, debug):
    # Given a running daemon (with and without --debug)
    daemon = run_daemon(*(["--debug"] if debug else []))
    # When a handler raises
    send(microbus_queue, -1)
    daemon.wait_for_line(r"FAILED")
    assert daemon.stop() == 0
    # Then the traceback is logged with the outcome line, down to the raising function
    stderr = daemon.stderr
    assert "Traceback (most recent call last)" in stderr
    assert "in explode_for_the_traceback" in stderr
    assert "ValueError: negative n: -1" in stderr


def test_a_daemon_does_not_log_where_it_found_its_credentials(microbus_queue, run_daemon):
    # Given credentials in the environment (the emulator's dummy ones), at the default level
    daemon = run_daemon()
    send(microbus_queue, 1)
    daemon.wait_for_line(r"SUCCEEDED")
    assert daemon.stop() == 0
    # Then botocore's "Found credentials in environment variables" is not among the lines
    assert "Found credentials" not in daemon.stderr


def producer(queue: Any) -> Any:
    graph = create_object_graph("observe-producer", testing=True, loader=load_from_dict(queue.graph_config()))
    return graph.microbus_sns_producer


def get(url: str) -> tuple[int, str, str]:
    """Status, content type and body of a GET (an HTTP error status too)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers["Content-Type"], exc.read().decode()


def endpoint_of(daemon: Daemon) -> str:
    return daemon.wait_for_line(r"on (http://127\.0\.0\.1:\d+)", timeout_s=60).group(1)  # a loaded machine


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a Prometheus text exposition: (name, labels) → value."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.mark.parametrize("debug", [False, True], ids=["info", "debug"])
def test_with_json_log_format_every_line_is_one_json_object_with_the_message_fields(microbus_queue, run_daemon, debug):
    # Given a daemon logging JSON, with a short stats interval
    daemon = run_daemon("--log-format", "json", "--stats-interval", "0.5", *(["--debug"] if debug else []))
    # When a message succeeds, one fails and one has an unknown media type
    sns_id = producer(microbus_queue).produce(WORK_MT, n=1, opaque_data={"x-microbus-cid": "cid-7"})
    producer(microbus_queue).produce(WORK_MT, n=-2)
    microbus_queue.sqs.send_message(QueueUrl=microbus_queue.queue_url, MessageBody='{"mediaType": "x/\\u2028evil"}')
    for outcome in ("SUCCEEDED", "FAILED", "REJECTED"):
        daemon.wait_for_line(f'"outcome": "{outcome}"')
    # (a stats line written after the success was counted: one written while it ran says handled 0)
    daemon.wait_for_line(r'"stats": \{"received": 3, "handled": 1')
    assert daemon.stop() == 0
    # Then every line parses as one JSON object
    lines = [json.loads(line) for line in daemon.lines]
    assert all(isinstance(line, dict) and {"ts", "level", "logger", "message"} <= set(line) for line in lines)
    by_outcome = {line["outcome"]: line for line in lines if "outcome" in line}
    succeeded = by_outcome["SUCCEEDED"]
    assert succeeded["daemon"] == "observe-test"
    assert succeeded["queue"] == microbus_queue.queue_url.rsplit("/", 1)[-1]
    assert succeeded["media_type"] == WORK_MT
    assert succeeded["sns_message_id"] == sns_id
    assert succeeded["cid"] == "cid-7"
    assert succeeded["attempt"] == 1 and succeeded["level"] == "INFO"
    assert isinstance(succeeded["message_id"], str) and succeeded["elapsed_s"] >= 0
    # and a failure carries its traceback, the unknown media type is bounded and escaped, bodies are absent
    assert "in explode_for_the_traceback" in by_outcome["FAILED"]["traceback"]
    assert by_outcome["FAILED"]["level"] == "WARNING"
    assert "\u2028" not in json.dumps(by_outcome["REJECTED"], ensure_ascii=False)
    assert '"n": 1' not in daemon.stderr and "cid-7" not in succeeded["message"].replace("cid='cid-7'", "")
    stats = [line["stats"] for line in lines if "stats" in line]
    assert stats[-1]["received"] >= 3 and stats[-1]["handled"] == 1


def test_the_human_format_has_the_same_fields_a_periodic_stats_line_and_bodies_when_asked(microbus_queue, run_daemon):
    # Given a daemon with the default (human) format, a 0.5 s stats interval, and bodies asked for
    daemon = run_daemon("--stats-interval", "0.5", "--log-bodies")
    sns_id = producer(microbus_queue).produce(WORK_MT, n=1, opaque_data={"x-microbus-cid": "cid-9"})
    line = daemon.wait_for_line(r"SUCCEEDED .*").group(0)
    daemon.wait_for_line(r"observe-test stats queue=\S+ received=1 handled=1 failed=0 dead_lettered=0")
    wait_for(lambda: sum("observe-test stats" in each for each in daemon.lines) >= 2, timeout_s=5, what="a second")
    assert daemon.stop() == 0
    # Then the outcome line names daemon, queue, ids, cid, attempt and elapsed time, and stats lines repeat
    assert f"sns_message_id={sns_id!r}" in line and "cid='cid-9'" in line and "daemon=observe-test" in line
    assert re.search(r"receive_count=1 elapsed=\d+\.\d{3}s", line)
    assert '"Type": "Notification"' in line.split(" body={", 1)[1] and '\\"n\\":1' in line


@pytest.mark.timeout(90)
def test_metrics_health_and_ready_are_served_and_health_fails_during_the_shutdown(microbus_queue, run_daemon):
    # Given a daemon serving metrics on a free port
    daemon = run_daemon("--metrics-port", "0", "--grace-period", "20")
    url = endpoint_of(daemon)
    wait_for(lambda: get(url + "/ready")[0] == 200, timeout_s=10, what="ready")
    status, content_type, body = get(url + "/health")
    assert (status, content_type, json.loads(body)["status"]) == (200, "application/json", "ok")
    # When two messages succeed, one fails, and one has an unknown media type
    for n in (1, 2, -1):
        producer(microbus_queue).produce(WORK_MT, n=n)
    microbus_queue.sqs.send_message(QueueUrl=microbus_queue.queue_url, MessageBody='{"mediaType": "x/unknown-1"}')
    daemon.wait_for_line("REJECTED")
    daemon.wait_for_line("FAILED")
    wait_for(lambda: daemon.stderr.count("SUCCEEDED") >= 2, timeout_s=20, what="two handled")
    # Then /metrics counts them, with the unknown media type as "unknown"
    status, content_type, text = get(url + "/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    queue = microbus_queue.queue_url.rsplit("/", 1)[-1]
    base = {("daemon", "observe-test"), ("queue", queue)}
    values = samples(text)

    def value(name: str, **labels: str) -> float:
        return values.get((name, frozenset(base | set(labels.items()))), 0.0)

    def settled() -> bool:
        values.update(samples(get(url + "/metrics")[2]))
        return value("microbus_messages_in_flight") == 0

    wait_for(settled, timeout_s=10, what="every message settled")
    assert value("microbus_messages_received_total") == 4
    assert value("microbus_messages_handled_total", media_type=WORK_MT, outcome="SUCCEEDED") == 2
    assert value("microbus_messages_handled_total", media_type=WORK_MT, outcome="FAILED") == 1
    assert value("microbus_messages_handled_total", media_type="unknown", outcome="REJECTED") == 1
    assert value("microbus_handler_duration_seconds_count", media_type=WORK_MT) == 3
    assert value("microbus_end_to_end_latency_seconds_count", media_type=WORK_MT) == 2
    assert value("microbus_messages_waiting") == 0
    assert value("microbus_settle_failures_total") == 0
    assert "x/unknown-1" not in text
    # When it is stopped while a handler runs
    producer(microbus_queue).produce(WORK_MT, n=2500)
    wait_for(
        lambda: samples(get(url + "/metrics")[2]).get(("microbus_messages_in_flight", frozenset(base))) == 1,
        timeout_s=20,
        what="the slow message in flight",
    )
    daemon.process.send_signal(signal.SIGTERM)
    # Then /health and /ready answer 503 and say why, until the process ends
    wait_for(lambda: get(url + "/health")[0] == 503, timeout_s=5, what="503 during the shutdown")
    report = json.loads(get(url + "/health")[2])
    assert report["status"] == "unhealthy" and "stopping" in report["problems"][0]
    assert get(url + "/ready")[0] == 503
    assert daemon.process.wait(timeout=20) == 0


def test_health_fails_while_an_activity_is_down_and_counts_the_restart(microbus_queue, run_daemon):
    # Given a healthy daemon serving its health, its worker started (/health answers before that)
    daemon = run_daemon("--metrics-port", "0")
    url = endpoint_of(daemon)
    wait_for(lambda: get(url + "/ready")[0] == 200, timeout_s=10, what="ready")
    assert get(url + "/health")[0] == 200
    # When its queue disappears, so that receiving fails
    microbus_queue.sqs.delete_queue(QueueUrl=microbus_queue.queue_url)
    # Then /health answers 503 naming the activity, and the restart is counted
    wait_for(lambda: get(url + "/health")[0] == 503, timeout_s=20, what="503 while receiving is down")
    report = json.loads(get(url + "/health")[2])
    assert any("activity receiving is down" in problem for problem in report["problems"]), (report, daemon.stderr)
    assert report["workers"][0]["activities_down"] == ["receiving"]
    queue = microbus_queue.queue_url.rsplit("/", 1)[-1]
    labels = frozenset({("daemon", "observe-test"), ("queue", queue), ("activity", "receiving")})
    assert samples(get(url + "/metrics")[2])[("microbus_activity_restarts_total", labels)] == 1
    assert daemon.stop() == 0


def address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def raw_request(url: str, data: bytes) -> bytes:
    with socket.create_connection(address(url), timeout=5) as connection:
        connection.sendall(data)
        chunks = []
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_malformed_requests_to_the_metrics_port_get_an_error_and_the_port_keeps_serving(microbus_queue, run_daemon):
    daemon = run_daemon("--metrics-port", "0")
    url = endpoint_of(daemon)
    wait_for(lambda: get(url + "/ready")[0] == 200, timeout_s=10, what="ready")
    cases = {
        b"\x00\xff\xfe garbage\r\n\r\n": b"400",
        b"GET /health HTTP/9.9\r\n\r\n": b"505",
        b"GET /health HTTP/1.1\r\n" + b"X: y\r\n" * 120 + b"\r\n": b"431",
        b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n": b"414",
        b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc": b"501",
        b"GET /%00%ff/../etc HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n": b"404",
    }
    for request, expected in cases.items():
        response = raw_request(url, request)
        assert response.split(b"\r\n", 1)[0].find(expected) >= 0, (request[:40], response[:200])
    # A client that connects and sends nothing does not keep the others out
    with socket.create_connection(address(url), timeout=5):
        status, _, body = get(url + "/health")
    assert status == 200 and json.loads(body)["status"] == "ok"
    assert get(url + "/nope")[0] == 404
    assert daemon.stop() == 0
    assert "Traceback" not in daemon.stderr
