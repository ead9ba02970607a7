"""Helpers of the dashboard tests: a dashboard on a test queue, a fake metrics endpoint, raw HTTP requests."""

from __future__ import annotations

import http.client
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from microbus.ops.dashboard import Dashboard, DashboardServer, LiveSource

ORDER = "application/vnd.microbus.order.placed"
EVIL = "<img src=x onerror='window.__pwned=3'>"


def sample(media_type: str, outcome: str, value: str, *, daemon: str = "orders", suffix: str = "total") -> str:
    """One sample line of the handled counter (or, with ``suffix``, of its companions)."""
    labels = f'daemon="{daemon}",queue="{daemon}",media_type="{media_type}",outcome="{outcome}"'
    return f"microbus_messages_handled_{suffix}{{{labels}}} {value}"


EXPOSITION = "\n".join(
    [
        "# HELP microbus_messages_handled_total Messages handled, by outcome.",
        "# TYPE microbus_messages_handled_total counter",
        sample(ORDER, "succeeded", "7.0"),
        sample(ORDER, "failed", "2.0"),
        sample(ORDER, "failed", "1.7e9", suffix="created"),
        sample(EVIL, "succeeded", "1", daemon="evil"),
        "this line is not a sample",
    ]
)


@contextmanager
def serving(queue: Any, *, metrics_urls: tuple[str, ...] = (), refresh_s: float = 0.5) -> Iterator[DashboardServer]:
    """A dashboard of the queues named like ``queue`` (its DLQ too), on a free loopback port."""
    name = queue.queue_url.rsplit("/", 1)[-1]
    source = LiveSource(sqs=queue.sqs, sns=queue.sns, endpoint="test", prefix=name, topics_ttl_s=0.5)
    dashboard = Dashboard(source=source, metrics_urls=metrics_urls, refresh_s=refresh_s, cache_s=0.2)
    with DashboardServer(dashboard, port=0).running() as server:
        yield server


def answer(handler: BaseHTTPRequestHandler, text: str, status: int = 200) -> None:
    """Answer ``text`` with ``status``, as a Prometheus endpoint does."""
    body = text.encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "text/plain; version=0.0.4")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


@contextmanager
def metrics_endpoint(
    text: str = EXPOSITION, status: int = 200, respond: Callable[[BaseHTTPRequestHandler], None] | None = None
) -> Iterator[str]:
    """A Prometheus-like endpoint on loopback answering ``text`` (or calling ``respond``); yields its URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            if respond is None:
                answer(self, text, status)
            else:
                respond(self)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/metrics"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def closed_port_url() -> str:
    """A loopback URL where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/metrics"


def request(
    server: DashboardServer, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request to the dashboard: status, headers, body."""
    host, port = server.server_address[:2]
    connection = http.client.HTTPConnection(str(host), int(port), timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()
