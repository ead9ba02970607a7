"""The daemon's HTTP endpoint on loopback: ``/metrics`` (Prometheus text), ``/health`` and ``/ready`` (JSON).

``/health`` answers 503 while a supervised activity of a worker is down, when a worker's poller has not
completed a receive within ``receive_bound_s``, and once the daemon is stopping; the body says why.
A worker whose circuit breaker is open stays healthy (restarting it would not mend the downstream outage
that opened it) and says so: ``circuit_open`` in its entry, ``status`` ``degraded``. ``/ready`` answers 200
once every worker started, until the shutdown. Companion daemons in one process
share one endpoint: each worker is listed by its daemon's name.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any

from microbus.errors import ConfigurationError
from microbus.ops.serving import BoundedThreadingHTTPServer

if TYPE_CHECKING:
    from microbus.consume.worker import Worker
    from microbus.ops.metrics import Metrics

logger = logging.getLogger(__name__)

DEFAULT_RECEIVE_BOUND_S = 60.0
_REQUEST_TIMEOUT_S = 10.0


@dataclass
class Health:
    """The health and readiness of a process's workers.

    Parameters:
        workers: the workers, each named by its daemon (``Worker.name``).
        receive_bound_s: the longest a poller may go without completing a receive (its long poll included).
    """

    workers: Sequence[Worker]
    receive_bound_s: float = DEFAULT_RECEIVE_BOUND_S
    created_at: float = field(default_factory=time.monotonic)
    started: bool = False
    """Set once every worker started (``/ready``)."""

    def check(self, now: float | None = None) -> tuple[bool, dict[str, Any]]:
        """Whether the process is healthy, and a JSON-able body that says why not."""
        now = time.monotonic() if now is None else now
        problems: list[str] = []
        workers = []
        for worker in self.workers:
            own = self._problems(worker, now)
            problems += [f"{worker.name} ({worker.queue_name}): {problem}" for problem in own]
            last = worker.last_receive_at
            workers.append(
                {
                    "daemon": worker.name,
                    "queue": worker.queue_name,
                    "healthy": not own,
                    "activities_down": sorted(worker.activities_down),
                    "circuit_open": worker.circuit_open,
                    "last_receive_s_ago": None if last is None else round(now - last, 3),
                    "in_flight": worker.stats.in_flight,
                }
            )
        status = "unhealthy" if problems else "degraded" if any(w["circuit_open"] for w in workers) else "ok"
        return not problems, {"status": status, "problems": problems, "workers": workers}

    def _problems(self, worker: Worker, now: float) -> list[str]:
        if worker.stopping:
            return ["stopping"]
        problems = [f"activity {name} is down" for name in sorted(worker.activities_down)]
        bound = f"(bound {self.receive_bound_s:g}s)"
        last = worker.last_receive_at
        if last is None and now - self.created_at > self.receive_bound_s:
            problems.append(f"no receive completed in the {now - self.created_at:.0f}s since the start {bound}")
        elif last is not None and now - last > self.receive_bound_s:
            problems.append(f"no receive completed for {now - last:.0f}s {bound}")
        return problems

    def ready(self) -> tuple[bool, dict[str, Any]]:
        """Ready once started, until a worker stops."""
        if not self.started:
            return False, {"status": "starting"}
        stopping = [worker.name for worker in self.workers if worker.stopping]
        if stopping:
            return False, {"status": "stopping", "workers": stopping}
        return True, {"status": "ready"}


class OpsServer:
    """Serves ``/metrics``, ``/health`` and ``/ready`` on ``host:port`` (port 0: any free port) in threads, at most
    :data:`~microbus.ops.serving.MAX_CONNECTIONS` connections at once (one more is answered 503).

    Raises:
        ConfigurationError: the address cannot be bound (in use, or not on this machine).
    """

    def __init__(self, *, health: Health, metrics: Metrics | None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.health = health
        self.metrics = metrics
        try:
            self._server = BoundedThreadingHTTPServer((host, port), _handler(self))
        except OSError as exc:
            raise ConfigurationError(f"Cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from exc
        self._thread = threading.Thread(target=self._server.serve_forever, name="microbus-ops-http", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        """The host and port served."""
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        """``http://host:port``."""
        host, port = self.address
        return f"http://{host}:{port}"

    def start(self) -> None:
        """Start serving."""
        self._thread.start()

    def close(self) -> None:
        """Stop serving and release the port."""
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()

    def respond(self, path: str) -> tuple[int, str, bytes]:
        """The status, content type and body for a GET of ``path``."""
        route = path.split("?", 1)[0]
        if route == "/metrics":
            if self.metrics is None:
                return _json(HTTPStatus.NOT_FOUND, {"error": "metrics need prometheus-client: microbus[metrics]"})
            body, content_type = self.metrics.exposition()
            return HTTPStatus.OK, content_type, body
        if route == "/health":
            ok, report = self.health.check()
            return _json(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE, report)
        if route == "/ready":
            ok, report = self.health.ready()
            return _json(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE, report)
        return _json(HTTPStatus.NOT_FOUND, {"error": "not found", "paths": ["/metrics", "/health", "/ready"]})


def _json(status: int, body: dict[str, Any]) -> tuple[int, str, bytes]:
    return status, "application/json", json.dumps(body).encode() + b"\n"


def _handler(server: OpsServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = _REQUEST_TIMEOUT_S  # a client that sends nothing does not hold a thread for ever
        server_version = "microbus"
        sys_version = ""

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self._send(*self._respond())

        def do_HEAD(self) -> None:  # noqa: N802
            status, content_type, body = self._respond()
            self._send(status, content_type, body, head=True)

        def _respond(self) -> tuple[int, str, bytes]:
            try:
                return server.respond(self.path)
            except Exception:  # a bug must answer 500, not drop the connection or kill the server
                logger.exception("Metrics endpoint failed on %s", self.command)
                return _json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error"})

        def _send(self, status: int, content_type: str, body: bytes, *, head: bool = False) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
            logger.debug("%s " + format, self.address_string(), *args)

    return Handler
