"""The dashboard's answers with a stub source: caching, error mapping, and shutdown waiting for peeks."""

from __future__ import annotations

import http.client
import json
import threading
import time

from microbus.errors import QueueNotFoundError, TransportError
from microbus.ops.dashboard import Dashboard, DashboardServer
from microbus.testing import wait_for
from tests.integration.dashboard_helpers import request


class StubSource:
    endpoint = "stub"

    def __init__(self) -> None:
        self.overviews = 0
        self.fail: Exception | None = None
        self.peek_started = threading.Event()
        self.peek_may_end = threading.Event()
        self.peeks_ended = 0

    def overview(self):
        self.overviews += 1
        if self.fail is not None:
            raise self.fail
        return {"queues": [{"name": "q"}], "topics": []}

    def peek(self, queue_name, count):
        if queue_name == "missing":
            raise QueueNotFoundError("SQS queue 'missing' does not exist")
        if queue_name == "broken":
            raise TransportError("Cannot reach SQS")
        self.peek_started.set()
        self.peek_may_end.wait(10)
        self.peeks_ended += 1
        return [{"message_id": "m-1"}]


def test_pages_polling_at_once_share_one_reading_of_the_endpoint():
    source = StubSource()
    dashboard = Dashboard(source=source, cache_s=60)
    threads = [threading.Thread(target=dashboard.overview) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert source.overviews == 1


def test_an_endpoint_failure_is_an_answer_that_says_so_and_is_read_again_later(caplog):
    source = StubSource()
    source.fail = TransportError("Cannot reach SQS ListQueues")
    dashboard = Dashboard(source=source, cache_s=0)
    failed = dashboard.overview()
    assert (failed["ok"], failed["error"], failed["queues"], failed["endpoint"]) == (
        False,
        "Cannot reach SQS ListQueues",
        [],
        "stub",
    )
    dashboard.overview()
    source.fail = None
    assert dashboard.overview()["ok"] is True
    # logged once when it started failing and once when it recovered, not once per poll
    assert [r.getMessage() for r in caplog.records] == [
        "dashboard: cannot read the endpoint: Cannot reach SQS ListQueues",
        "dashboard: the endpoint answers again",
    ]


def test_peek_errors_map_to_statuses():
    with DashboardServer(Dashboard(source=StubSource()), port=0).running() as server:
        for queue, status in (("missing", 404), ("broken", 502)):
            code, _, body = request(
                server, "POST", "/api/peek", json.dumps({"queue": queue}).encode(), {"Content-Type": "application/json"}
            )
            assert (code, bool(json.loads(body)["error"])) == (status, True)


def test_stopping_the_server_waits_for_a_running_peek_to_release_its_messages():
    source = StubSource()
    server = DashboardServer(Dashboard(source=source), port=0)
    answers: list[int] = []
    with server.running():
        body = json.dumps({"queue": "q", "count": 1}).encode()
        peeking = threading.Thread(
            target=lambda: answers.append(
                request(server, "POST", "/api/peek", body, {"Content-Type": "application/json"})[0]
            )
        )
        peeking.start()
        assert source.peek_started.wait(10)
        threading.Timer(1.5, source.peek_may_end.set).start()
        started = time.monotonic()
    # the block's exit waited for the peek, and its answer went out
    assert source.peeks_ended == 1
    assert time.monotonic() - started >= 1.2
    peeking.join(10)
    assert answers == [200]


def test_while_stopping_a_kept_alive_connection_is_refused_with_503():
    source = StubSource()
    server = DashboardServer(Dashboard(source=source), port=0)
    host, port = server.server_address[:2]
    body = json.dumps({"queue": "q", "count": 1}).encode()
    with server.running():
        other = http.client.HTTPConnection(str(host), int(port), timeout=10)
        other.request("GET", "/api/overview")
        assert other.getresponse().read()
        peeking = threading.Thread(
            target=lambda: request(server, "POST", "/api/peek", body, {"Content-Type": "application/json"})
        )
        peeking.start()
        assert source.peek_started.wait(10)
        stopping = threading.Thread(target=lambda: server.finish_requests(timeout_s=10))
        stopping.start()
        wait_for(lambda: server.stopping, timeout_s=5, what="the server stopping")
        other.request("GET", "/api/overview")
        refused = other.getresponse()
        assert (refused.status, refused.getheader("Connection")) == (503, "close")
        source.peek_may_end.set()
        stopping.join(10)
        peeking.join(10)
    other.close()
