"""The dashboard's JSON endpoints against the emulator, and what they do with malformed requests."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from microbus.reference.schemas import OrderPlaced
from microcosm.api import create_object_graph, load_from_dict

from microbus.ops.dashboard import Dashboard, DashboardServer, LiveSource
from microbus.testing import wait_for
from microbus.testing.emulator import Endpoint
from tests.integration.dashboard_helpers import closed_port_url, metrics_endpoint, request, serving

pytestmark = pytest.mark.integration
MICROBUS = str(Path(sys.executable).parent / "microbus")


def read_all(sock):
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def get_json(server, path):
    status, headers, body = request(server, "GET", path)
    assert headers["content-type"] == "application/json", body
    return status, json.loads(body)


def post_peek(server, payload, headers=None):
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    status, _, answer = request(
        server, "POST", "/api/peek", body, {"Content-Type": "application/json", **(headers or {})}
    )
    return status, json.loads(answer)


def queue_row(server, name):
    _, overview = get_json(server, "/api/overview")
    return next((queue for queue in overview["queues"] if queue["name"] == name), None)


def counts(server, name):
    row = queue_row(server, name) or {}
    return row.get("visible"), row.get("in_flight"), row.get("dlq_visible")


def producer(queue):
    graph = create_object_graph("dashboard-test", testing=True, loader=load_from_dict(queue.graph_config()))
    return graph.microbus_sns_producer


def test_overview_follows_the_queue_through_produce_receive_and_delete(make_queue):
    # Given a dashboard of a fresh topic, queue and DLQ
    queue = make_queue()
    name, dlq_name = queue.queue_url.rsplit("/", 1)[-1], queue.dlq_url.rsplit("/", 1)[-1]
    with serving(queue) as server:
        status, overview = get_json(server, "/api/overview")
        assert status == 200 and overview["ok"] is True
        assert [q["name"] for q in overview["queues"]] == [name, dlq_name]
        assert overview["queues"][1]["dead_letter_queue_for"] == [name]
        topic = next(t for t in overview["topics"] if t["arn"] == queue.topic_arn)
        assert [s["queue_name"] for s in topic["subscriptions"]] == [name]
        # When three messages are produced
        producer(queue).produce_batch(OrderPlaced.MEDIA_TYPE, [{"order_id": f"o-{i}"} for i in range(3)])
        # Then the dashboard shows them visible
        wait_for(lambda: (queue_row(server, name) or {}).get("visible") == 3, timeout_s=20, what="3 visible")
        # When two are received (held), then they are in flight
        held = queue.sqs.receive_message(QueueUrl=queue.queue_url, MaxNumberOfMessages=2, VisibilityTimeout=60)
        assert len(held["Messages"]) == 2
        wait_for(lambda: (queue_row(server, name) or {}).get("in_flight") == 2, timeout_s=20, what="2 in flight")
        # When they are deleted and a dead letter arrives, then one is left, and the DLQ count shows
        for message in held["Messages"]:
            queue.sqs.delete_message(QueueUrl=queue.queue_url, ReceiptHandle=message["ReceiptHandle"])
        queue.sqs.send_message(QueueUrl=queue.dlq_url, MessageBody="{}")
        wait_for(lambda: counts(server, name) == (1, 0, 1), timeout_s=20, what="1 visible, 0 in flight, 1 dead letter")


def test_peek_shows_messages_and_leaves_them_visible(make_queue):
    queue = make_queue()
    name = queue.queue_url.rsplit("/", 1)[-1]
    message_id = producer(queue).produce(OrderPlaced.MEDIA_TYPE, {"order_id": "o-peek"})
    wait_for(lambda: queue.depth() == 1, what="the message in the queue")
    with serving(queue) as server:
        status, answer = post_peek(server, {"queue": name, "count": 5})
        assert status == 200, answer
        [message] = answer["messages"]
        assert message["media_type"] == OrderPlaced.MEDIA_TYPE
        assert message["body"]["order_id"] == "o-peek"
        assert message["sns_message_id"] == message_id
        assert message["receive_count"] == 1
        assert "receipt_handle" not in message
        # released at once: visible again, nothing left in flight
        attributes = queue.sqs.get_queue_attributes(QueueUrl=queue.queue_url, AttributeNames=["All"])["Attributes"]
        assert (attributes["ApproximateNumberOfMessages"], attributes["ApproximateNumberOfMessagesNotVisible"]) == (
            "1",
            "0",
        )
        # an empty queue peeks as no message, not as an error
        status, answer = post_peek(server, {"queue": queue.dlq_url.rsplit("/", 1)[-1], "count": 1})
        assert (status, answer["messages"]) == (200, [])


def test_a_peeked_body_over_the_limit_is_cut_and_says_its_length(make_queue, monkeypatch):
    queue = make_queue()
    name = queue.queue_url.rsplit("/", 1)[-1]
    queue.sqs.send_message(QueueUrl=queue.queue_url, MessageBody="x" * 5000)
    monkeypatch.setattr("microbus.ops.dashboard_source.MAX_BODY_CHARS", 1000)
    with serving(queue) as server:
        status, answer = post_peek(server, {"queue": name, "count": 1})
    [message] = answer["messages"]
    assert (status, len(message["raw_body"]), message["body_truncated"]) == (200, 1000, 5000)


@pytest.mark.parametrize(
    "payload",
    [
        {"queue": "../etc/passwd"},
        {"queue": "a b"},
        {"queue": "<script>alert(1)</script>"},
        {"queue": "q" * 81},
        {"queue": ""},
        {"queue": 7},
        {"queue": None},
        {"queue": "ok", "count": 0},
        {"queue": "ok", "count": 11},
        {"queue": "ok", "count": "5"},
        {"queue": "ok", "count": True},
        {"queue": "ok", "count": 2.5},
        {},
    ],
)
def test_peek_refuses_a_bad_queue_name_or_count_with_400(make_queue, payload):
    with serving(make_queue()) as server:
        status, answer = post_peek(server, payload)
    assert status == 400
    assert answer["error"]


def test_peek_of_a_missing_queue_is_404(make_queue):
    with serving(make_queue()) as server:
        status, answer = post_peek(server, {"queue": "no-such-queue-here", "count": 1})
    assert status == 404
    assert "no-such-queue-here" in answer["error"]


@pytest.mark.parametrize(
    ("body", "headers", "expected"),
    [
        (b"not json", {}, 400),
        (b"[1, 2]", {}, 400),
        (b'"queue"', {}, 400),
        (b"\xff\xfe", {}, 400),
        (b"[" * 2000 + b"]" * 2000, {}, 400),
        (b'{"queue": "q"}', {"Content-Type": "text/plain"}, 415),
        (b'{"queue": "q"}', {"Content-Type": "application/x-www-form-urlencoded"}, 415),
        (b'{"queue": "q"}', {"Origin": "http://evil.example"}, 403),
        (b"{" + b" " * 5000 + b"}", {}, 413),
    ],
)
def test_peek_refuses_malformed_or_cross_site_requests(make_queue, body, headers, expected):
    with serving(make_queue()) as server:
        status, _, answer = request(server, "POST", "/api/peek", body, {"Content-Type": "application/json", **headers})
        assert status == expected, answer
        assert json.loads(answer)["error"]
        # the server keeps serving
        assert get_json(server, "/api/overview")[0] == 200


def test_unknown_paths_methods_hosts_and_huge_request_targets_get_json_errors(make_queue):
    with serving(make_queue()) as server:
        assert get_json(server, "/nope")[0] == 404
        assert get_json(server, "/static/../dashboard.py")[0] == 404
        assert get_json(server, "/api/peek")[0] == 405
        assert get_json(server, "/api/overview?" + "x" * 3000)[0] == 414
        assert request(server, "PUT", "/api/overview", b"{}")[0] == 405
        assert request(server, "DELETE", "/")[0] == 405
        assert request(server, "GET", "/", headers={"Host": "evil.example:80"})[0] == 421
        assert request(server, "POST", "/api/overview", b"{}", {"Content-Type": "application/json"})[0] == 405
        # a request line over the standard library's 64 KiB limit
        with socket.create_connection(server.server_address[:2], timeout=10) as sock:
            sock.sendall(b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = read_all(sock)
        assert answer.startswith(b"HTTP/1.1 414") or answer.startswith(b"HTTP/1.0 414"), answer[:100]
        assert b'{"error"' in answer
        # garbage instead of HTTP
        with socket.create_connection(server.server_address[:2], timeout=10) as sock:
            sock.sendall(b"\x00\x01\x02 garbage\r\n\r\n")
            answer = read_all(sock)
        assert answer.startswith(b"HTTP/1.1 400 "), answer[:100]
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"].startswith("Bad ")
        # and the page still loads, with its security headers
        status, headers, page = request(server, "GET", "/")
        assert status == 200 and b"/static/dashboard.js" in page
        assert "script-src 'self'" in headers["content-security-policy"]
        assert headers["x-content-type-options"] == "nosniff"


def test_metrics_sums_handled_counts_and_reports_unreachable_endpoints(make_queue):
    with (
        metrics_endpoint() as good,
        metrics_endpoint("oops", status=500) as failing,
        serving(make_queue(), metrics_urls=(good, closed_port_url(), failing)) as server,
    ):
        status, metrics = get_json(server, "/api/metrics")
    assert status == 200
    good_reading, unreachable, erroring = metrics["endpoints"]
    assert (good_reading["ok"], good_reading["series"], good_reading["malformed_lines"]) == (True, 3, 1)
    assert unreachable["ok"] is False and unreachable["error"].startswith("unreachable")
    assert erroring["ok"] is False and erroring["error"].startswith("HTTP 500")
    order = next(row for row in metrics["media_types"] if row["media_type"] == OrderPlaced.MEDIA_TYPE)
    assert order == {
        "media_type": OrderPlaced.MEDIA_TYPE,
        "outcomes": {"succeeded": 7.0, "failed": 2.0},
        "daemons": ["orders"],
        "total": 9.0,
    }


def test_an_unreachable_endpoint_is_reported_and_the_dashboard_keeps_serving():
    endpoint = Endpoint(closed_port_url().rsplit("/", 1)[0])
    settings = endpoint.settings()
    sqs = settings.client("sqs")
    source = LiveSource(sqs=sqs, sns=settings.client("sns"), endpoint=endpoint.endpoint_url or "")
    with DashboardServer(Dashboard(source=source), port=0).running() as server:
        status, overview = get_json(server, "/api/overview")
        assert status == 200
        assert overview["ok"] is False and overview["queues"] == []
        assert overview["endpoint"] == endpoint.endpoint_url
        assert overview["error"].startswith("Cannot reach SQS")
        status, answer = post_peek(server, {"queue": "orders", "count": 1})
        assert status == 502 and answer["error"]


def start_cli(*args, env=None):
    return subprocess.Popen(
        [MICROBUS, "dashboard", "--port", "0", *args],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_the_command_serves_until_sigterm(microbus_endpoint):
    process = start_cli("--prefix", "orders", env=microbus_endpoint.environ())
    try:
        line = process.stdout.readline()
        assert line.startswith("microbus dashboard: http://127.0.0.1:"), line + process.stderr.read()
        url = line.split()[2]
        with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1].strip("/"))), timeout=10):
            pass
        import urllib.request

        with urllib.request.urlopen(url + "api/overview", timeout=30) as response:
            assert json.load(response)["ok"] is True
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        assert "stopped" in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stderr.close()


@pytest.mark.parametrize(
    "args",
    [
        ("--metrics", "file:///etc/passwd"),
        ("--metrics", "not a url"),
        ("--port", "70000"),
        ("--refresh", "0"),
        ("--region", "nowhere"),
        ("--endpoint-url", "not-a-url"),
    ],
)
def test_the_command_refuses_bad_options_with_exit_2(args):
    result = subprocess.run([MICROBUS, "dashboard", *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr


def test_the_command_says_when_the_port_is_taken():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [MICROBUS, "dashboard", "--port", str(port)], capture_output=True, text=True, timeout=60
        )
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_stopped_server_answers_nothing_more_even_on_a_kept_alive_connection(make_queue):
    with serving(make_queue()) as server:
        host, port = server.server_address[:2]
        connection = http.client.HTTPConnection(str(host), int(port), timeout=10)
        connection.request("GET", "/api/overview")
        assert connection.getresponse().read()
    try:
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            connection.request("GET", "/api/overview")
            connection.getresponse().read()
    finally:
        connection.close()


def test_an_idle_connection_is_closed(make_queue, monkeypatch):
    monkeypatch.setattr("microbus.ops.dashboard._Handler.timeout", 0.5)
    with serving(make_queue()) as server, socket.create_connection(server.server_address[:2], timeout=10) as sock:
        sock.sendall(b"GET /api/overview HTTP/1.1\r\n")  # and then nothing more
        assert read_all(sock) == b""  # closed by the server, well before the client's own timeout
