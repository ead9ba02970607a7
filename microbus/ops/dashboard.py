"""The live dashboard: a static page and a few JSON endpoints, served by the standard library.

``GET /`` is the page (``static/``: HTML, CSS and JS, no build step); the page polls ``GET /api/overview``
(topics, subscriptions, queues with depth, in flight and dead letters) and ``GET /api/metrics`` (handled
counts by media type, from daemons' Prometheus endpoints), and peeks at a queue with ``POST /api/peek``.

Everything the page shows came from the wire and is inserted as text, never as HTML; the Content
Security Policy allows only the page's own script. The server refuses Host headers other than its own
address when it listens on loopback (a web page elsewhere cannot reach it through DNS rebinding), and
peek, which receives messages, needs a JSON request, which a cross-site form or image cannot send.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from microbus.errors import MicrobusError, QueueNotFoundError
from microbus.ops.dashboard_source import DashboardSource, LiveSource, TimedCache
from microbus.ops.scrape import handled_by_media_type, read_endpoints
from microbus.ops.serving import BoundedThreadingHTTPServer
from microbus.wire.sanitize import log_text, one_line
from microbus.wire.transport import is_loopback_endpoint

__all__ = ["ApiError", "Dashboard", "DashboardServer", "DashboardSource", "LiveSource"]
logger = logging.getLogger(__name__)

QUEUE_NAME = re.compile(r"[A-Za-z0-9_-]{1,75}(\.fifo)?|[A-Za-z0-9_-]{1,80}")
"""An SQS queue name: up to 80 letters, digits, ``-`` and ``_``, a FIFO queue's ending in ``.fifo``."""
MAX_PEEK = 10
_PEEKS_AT_ONCE = 2
MAX_PATH = 2048
MAX_REQUEST_BODY = 4096
IDLE_TIMEOUT_S = 60
"""A connection that sends nothing for this long is closed (its thread ends)."""
_STATIC = {
    "/favicon.ico": ("", ""),
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/static/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/static/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class ApiError(Exception):
    """A request the dashboard answers with an error status and a one-sentence reason."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


class Dashboard:
    """The dashboard's answers, independent of HTTP.

    Parameters:
        source: topics, queues and peek.
        metrics_urls: daemons' Prometheus endpoints to read handled counts from.
        refresh_s: how often the page polls.
        cache_s: how long one reading of the endpoint serves every page that asks.
        scrape_timeout_s: how long one metrics endpoint may take to answer.
    """

    def __init__(
        self,
        *,
        source: DashboardSource,
        metrics_urls: Sequence[str] = (),
        refresh_s: float = 2.0,
        cache_s: float = 1.0,
        scrape_timeout_s: float = 2.0,
    ) -> None:
        self.source = source
        self.metrics_urls = tuple(metrics_urls)
        self.refresh_s = refresh_s
        self.scrape_timeout_s = scrape_timeout_s
        self._overview = TimedCache(self._read_overview, cache_s)
        self._metrics = TimedCache(self._read_metrics, cache_s)
        self._peeks = threading.BoundedSemaphore(_PEEKS_AT_ONCE)
        self._last_error: str | None = None

    def overview(self) -> dict[str, Any]:
        """``{ok, error, endpoint, generated_at, refresh_s, topics, queues}``; ``ok`` False with the ``error``."""
        return self._overview.get()

    def metrics(self) -> dict[str, Any]:
        """``{endpoints: [{url, ok, error, ...}], media_types: [{media_type, outcomes, total, daemons}]}``."""
        return self._metrics.get()

    def peek(self, queue_name: object, count: object) -> dict[str, Any]:
        """Peek at ``queue_name`` (validated here: it came from a request).

        Raises:
            ApiError: a bad name or count (400), no such queue (404), too many peeks at once (503), the
                endpoint failed (502).
        """
        if not isinstance(queue_name, str) or not QUEUE_NAME.fullmatch(queue_name):
            raise ApiError(HTTPStatus.BAD_REQUEST, f"{log_text(queue_name, 100)!r} is not an SQS queue name")
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_PEEK:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"count must be a whole number from 1 to {MAX_PEEK}")
        if not self._peeks.acquire(timeout=10):
            raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, "too many peeks at once; try again")
        try:
            messages = self.source.peek(queue_name, count)
        except QueueNotFoundError as exc:
            raise ApiError(HTTPStatus.NOT_FOUND, str(exc)) from exc
        except MicrobusError as exc:
            raise ApiError(HTTPStatus.BAD_GATEWAY, str(exc)) from exc
        finally:
            self._peeks.release()
        return {"queue": queue_name, "messages": messages, "peeked_at": _now()}

    def _read_overview(self) -> dict[str, Any]:
        base = {"endpoint": self.source.endpoint, "generated_at": _now(), "refresh_s": self.refresh_s}
        try:
            overview = {"ok": True, "error": None, **base, **self.source.overview()}
        except MicrobusError as exc:
            if str(exc) != self._last_error:  # once per new error, not once per poll
                logger.warning("dashboard: cannot read the endpoint: %s", exc)
            self._last_error = str(exc)
            return {"ok": False, "error": str(exc), **base, "topics": [], "queues": []}
        if self._last_error is not None:
            logger.warning("dashboard: the endpoint answers again")
            self._last_error = None
        return overview

    def _read_metrics(self) -> dict[str, Any]:
        readings = read_endpoints(self.metrics_urls, timeout_s=self.scrape_timeout_s)
        return {
            "generated_at": _now(),
            "endpoints": [reading.as_json() for reading in readings],
            "media_types": handled_by_media_type(readings),
        }


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _static(name: str) -> bytes:
    return (resources.files("microbus.ops") / "static" / name).read_bytes()


class DashboardServer(BoundedThreadingHTTPServer):
    """The dashboard over HTTP: ``DashboardServer(dashboard, host="127.0.0.1", port=0)``; ``url`` says where. At most
    :data:`~microbus.ops.serving.MAX_CONNECTIONS` connections at once (one more is answered 503)."""

    block_on_close = False

    def __init__(self, dashboard: Dashboard, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        self._closed = False
        self._requests = threading.Condition()
        self._running_requests = 0
        self._stopping = False
        super().__init__((host, port), _Handler)  # closes itself (server_close) when it cannot bind
        self.dashboard = dashboard
        self.host = host
        bound = self.server_address[1]
        self.allowed_hosts: frozenset[str] | None = None
        if is_loopback_endpoint(f"http://{_bracketed(host)}"):
            names = {"127.0.0.1", "localhost", "[::1]", _bracketed(host)}
            self.allowed_hosts = frozenset(f"{name}:{bound}" for name in names)

    def finish_requests(self, timeout_s: float) -> bool:
        """Refuse new requests (503) and wait, at most ``timeout_s``, for the running ones to be answered: a
        peek releases its messages and gets its answer out.

        Returns:
            Whether every request finished in time.
        """
        with self._requests:
            self._stopping = True
            return self._requests.wait_for(lambda: self._running_requests == 0, timeout=timeout_s)

    @property
    def stopping(self) -> bool:
        """Whether :meth:`finish_requests` was called (new requests are refused)."""
        with self._requests:
            return self._stopping

    @contextmanager
    def serving_request(self) -> Iterator[bool]:
        """Count a request while it runs; yields False once the server is stopping (the request is refused)."""
        with self._requests:
            if self._stopping:
                accepted = False
            else:
                accepted = True
                self._running_requests += 1
        try:
            yield accepted
        finally:
            if accepted:
                with self._requests:
                    self._running_requests -= 1
                    self._requests.notify_all()

    def process_request(self, request: Any, client_address: Any) -> None:
        """Track the connection, so that closing the server closes it too (a keep-alive one included)."""
        with self._connections_lock:
            closed = self._closed
            if not closed:
                self._connections.add(request)
        if closed:
            self.shutdown_request(request)
        else:
            super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def server_close(self) -> None:
        """Stop listening and end every open connection: a stopped dashboard answers nothing more."""
        super().server_close()
        with self._connections_lock:
            self._closed = True
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by its client

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away is not an error; anything else is logged with its traceback."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            logger.debug("dashboard: a client closed its connection early")
        else:
            logger.exception("dashboard: a request from %s failed", client_address)

    @property
    def url(self) -> str:
        """The page's address."""
        return f"http://{_bracketed(self.host)}:{self.server_address[1]}/"

    @contextmanager
    def running(self) -> Iterator[DashboardServer]:
        """Serve on a background thread for the block's duration, then stop and close."""
        thread = threading.Thread(target=self.serve_forever, name="microbus-dashboard", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.shutdown()
            if not self.finish_requests(timeout_s=15):
                logger.warning("dashboard: a request (a peek?) still running at shutdown; its messages reappear soon")
            self.server_close()
            thread.join(5)


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


class _Handler(BaseHTTPRequestHandler):
    server: DashboardServer
    server_version = "microbus-dashboard"
    protocol_version = "HTTP/1.1"
    timeout = IDLE_TIMEOUT_S

    def version_string(self) -> str:
        return self.server_version

    def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
        self._serve(self._get)

    def do_POST(self) -> None:  # noqa: N802
        self._serve(self._post)

    def do_PUT(self) -> None:  # noqa: N802
        self._serve(self._not_allowed)

    do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_PUT  # noqa: N815

    def _serve(self, handle: Callable[[str], None]) -> None:
        with self.server.serving_request() as accepted:
            if accepted:
                self._handle(handle)
            else:
                self.close_connection = True
                self._json({"error": "the dashboard is stopping"}, HTTPStatus.SERVICE_UNAVAILABLE)

    def _handle(self, handle: Callable[[str], None]) -> None:
        try:
            path = self._checked_path()
            handle(path)
        except ApiError as exc:
            self._json({"error": str(exc)}, exc.status)
        except ConnectionError:
            self.close_connection = True  # the client went away; nothing to answer
        except Exception:
            logger.exception("dashboard: %s failed", log_text(self.requestline, 120))
            self._json({"error": "internal error; see the dashboard's log"}, HTTPStatus.INTERNAL_SERVER_ERROR)

    def _checked_path(self) -> str:
        if len(self.path) > MAX_PATH:
            raise ApiError(HTTPStatus.REQUEST_URI_TOO_LONG, f"request target over {MAX_PATH} characters")
        allowed = self.server.allowed_hosts
        if allowed is not None and (self.headers.get("Host") or "").lower() not in allowed:
            raise ApiError(
                HTTPStatus.MISDIRECTED_REQUEST, "unexpected Host header: open the address the server printed"
            )
        return urlsplit(self.path).path

    def _get(self, path: str) -> None:
        dashboard = self.server.dashboard
        if path in _STATIC:
            name, content_type = _STATIC[path]
            if name:
                self._send(_static(name), content_type, HTTPStatus.OK)
            else:
                self._send(b"", "image/x-icon", HTTPStatus.NO_CONTENT)  # no icon, and no 404 in the console
        elif path == "/api/overview":
            self._json(dashboard.overview(), HTTPStatus.OK)
        elif path == "/api/metrics":
            self._json(dashboard.metrics(), HTTPStatus.OK)
        elif path == "/api/peek":
            raise ApiError(HTTPStatus.METHOD_NOT_ALLOWED, 'peek is POST /api/peek with {"queue": NAME, "count": N}')
        else:
            raise ApiError(HTTPStatus.NOT_FOUND, f"no such page: {log_text(path, 100)}")

    def _post(self, path: str) -> None:
        if path != "/api/peek":
            self._not_allowed(path)
            return
        origin = self.headers.get("Origin")
        if (
            origin is not None
            and self.server.allowed_hosts is not None
            and urlsplit(origin).netloc.lower() not in (self.server.allowed_hosts)
        ):
            raise ApiError(HTTPStatus.FORBIDDEN, "cross-origin peek refused")
        request = self._json_body()
        answer = self.server.dashboard.peek(request.get("queue"), request.get("count", MAX_PEEK))
        self._json(answer, HTTPStatus.OK)

    def _json_body(self) -> dict[str, Any]:
        if (self.headers.get_content_type() or "") != "application/json":
            raise ApiError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send the request as application/json")
        length_header = self.headers.get("Content-Length")
        if length_header is None or not length_header.isdigit():
            raise ApiError(HTTPStatus.LENGTH_REQUIRED, "a Content-Length is required")
        length = int(length_header)
        if length > MAX_REQUEST_BODY:
            self.close_connection = True  # the body is not read
            raise ApiError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"request body over {MAX_REQUEST_BODY} bytes")
        try:
            request = json.loads(self.rfile.read(length))
        except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
            raise ApiError(HTTPStatus.BAD_REQUEST, "the request body is not JSON") from exc
        if not isinstance(request, dict):
            raise ApiError(HTTPStatus.BAD_REQUEST, "the request body must be a JSON object")
        return request

    def _not_allowed(self, path: str) -> None:
        allow = "POST" if path == "/api/peek" else "GET"
        raise ApiError(HTTPStatus.METHOD_NOT_ALLOWED, f"{log_text(self.command, 20)} is not allowed here (use {allow})")

    def _json(self, data: dict[str, Any], status: HTTPStatus) -> None:
        self._send(json.dumps(data).encode("utf-8"), "application/json", status)

    def _send(self, body: bytes, content_type: str, status: HTTPStatus) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in _SECURITY_HEADERS.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Errors the standard library detects (a request line over 64 KiB, bad syntax) as JSON too."""
        self.close_connection = True
        if not str(getattr(self, "request_version", "")).startswith("HTTP/1."):
            self.request_version = "HTTP/1.0"  # a status line even for garbage (the standard library sends none)
        reason = one_line(message or HTTPStatus(code).phrase, 200)
        self._json({"error": reason}, HTTPStatus(code))

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the standard library's name)
        logger.debug("dashboard: %s", log_text(format % args, 300))
