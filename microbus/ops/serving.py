"""An HTTP server with a thread per connection, up to a bound: one connection more is answered 503 at once.

``http.server.ThreadingHTTPServer`` starts a thread for every connection it accepts, however many there are; a
client that opens connections and sends nothing would hold a thread each until their timeout. The operations
endpoints and the dashboard serve a few scrapers and browsers: more connections than the bound at once are
refused (``503``, ``Retry-After: 1``, closed) instead of growing the process's threads without limit.
"""

from __future__ import annotations

import socket
import threading
from http.server import ThreadingHTTPServer
from typing import Any

MAX_CONNECTIONS = 64
"""Connections served at once by default."""

_BUSY = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"


class BoundedThreadingHTTPServer(ThreadingHTTPServer):
    """A :class:`~http.server.ThreadingHTTPServer` serving at most ``max_connections`` connections at once."""

    daemon_threads = True
    request_queue_size = MAX_CONNECTIONS
    """The listen backlog (socketserver's 5 made a burst of connections wait on SYN retries)."""

    def __init__(self, address: tuple[str, int], handler: Any, *, max_connections: int = MAX_CONNECTIONS) -> None:
        self.max_connections = max(1, max_connections)
        self._slots = threading.BoundedSemaphore(self.max_connections)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve the connection on a thread of its own, or refuse it at once when the bound is reached."""
        if not self._slots.acquire(blocking=False):
            self._refuse(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """The connection's thread; its slot is free again when the connection is done."""
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def _refuse(self, request: socket.socket) -> None:
        try:
            request.settimeout(1.0)
            request.sendall(_BUSY)
        except OSError:
            pass  # the client is gone already
        self.shutdown_request(request)
