"""The operations server and the dashboard serve a bounded number of connections at once: one more is refused."""

from __future__ import annotations

import socket
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler

import pytest

from microbus.ops.server import Health, OpsServer
from microbus.ops.serving import MAX_CONNECTIONS, BoundedThreadingHTTPServer
from microbus.testing import wait_for

pytestmark = pytest.mark.timeout(60)


class Hello(BaseHTTPRequestHandler):
    timeout = 20  # an idle connection keeps its thread this long

    def do_GET(self) -> None:  # noqa: N802
        body = b"hello"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):  # noqa: A002
        pass


def idle_connections(port: int, n: int) -> list[socket.socket]:
    return [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(n)]


def test_connections_beyond_the_bound_are_answered_503_at_once_and_served_again_when_some_close():
    server = BoundedThreadingHTTPServer(("127.0.0.1", 0), Hello, max_connections=4)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    url = f"http://127.0.0.1:{port}/"
    before = threading.active_count()
    held = idle_connections(port, 4)  # four clients that send nothing
    try:
        wait_for(lambda: threading.active_count() >= before + 4, timeout_s=5, what="4 connection threads")
        # When a fifth client asks, it is refused at once with 503, and no thread is started for it
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=5)
        refused.value.close()
        assert refused.value.code == 503 and refused.value.headers["Retry-After"] == "1"
        more = idle_connections(port, 20)
        for extra in more:
            assert extra.recv(100).startswith(b"HTTP/1.1 503")
            extra.close()
        assert threading.active_count() <= before + 4
    finally:
        for connection in held:
            connection.close()
    # Then once the idle clients are gone, requests are served again
    wait_for(lambda: _status(url) == 200, timeout_s=5, what="a request served again")
    server.shutdown()
    server.server_close()


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code


def test_the_operations_server_starts_no_thread_beyond_its_bound_for_idle_clients():
    # Given the operations server, and more idle clients than it serves at once
    server = OpsServer(health=Health([]), metrics=None)
    server.start()
    _, port = server.address
    before = threading.active_count()
    held = idle_connections(port, MAX_CONNECTIONS)
    try:
        wait_for(lambda: threading.active_count() >= before + MAX_CONNECTIONS, timeout_s=10, what="the threads")
        more = idle_connections(port, 10)
        # Then the ones beyond the bound are refused at once, and the threads stop at the bound
        for extra in more:
            assert extra.recv(100).startswith(b"HTTP/1.1 503")
            extra.close()
        assert threading.active_count() <= before + MAX_CONNECTIONS
    finally:
        for connection in held:
            connection.close()
    wait_for(lambda: _status(server.url + "/health") in (200, 503), timeout_s=10, what="/health answered again")
    server.close()
