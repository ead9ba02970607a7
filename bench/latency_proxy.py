"""A loopback HTTP/1.1 relay that delays each response, to emulate the network latency of real AWS.

Put it between a client and an emulator endpoint (moto, LocalStack)::

    with LatencyProxy("http://127.0.0.1:4566", delay_ms=20) as proxy:
        client = boto3.client("sqs", endpoint_url=proxy.url, ...)

    .venv/bin/python bench/latency_proxy.py --target http://127.0.0.1:4566 --delay-ms 20 [--port 0]
        [--actions DeleteMessageBatch,ReceiveMessage]

Each client connection gets its own upstream connection (so keep-alive and botocore's connection
pool map 1:1). Requests are read whole (Content-Length or chunked), forwarded, the whole response is
read (Content-Length, chunked — forwarded as received — or until the upstream closes), then held
for the delay (an ``asyncio.sleep``: no CPU while waiting) and written back. With ``actions`` only
responses to requests whose AWS action is in the set are delayed; the action is read from the
``X-Amz-Target`` header (JSON protocol, ``AmazonSQS.ReceiveMessage``) or ``Action=`` in the
form body or query string (query protocol). The proxy runs its own event loop in a background thread.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import threading
import urllib.parse
from collections.abc import Iterable
from types import TracebackType

_MAX_HEADER = 64 * 1024


class _Closed(Exception):
    """The peer closed the connection between messages."""


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial.strip():
            raise _Closed from None
        raise
    except asyncio.LimitOverrunError:
        raise ValueError("HTTP header too large") from None


def _parse_headers(head: bytes) -> tuple[str, list[tuple[str, str]]]:
    lines = head.decode("latin-1").split("\r\n")
    headers = []
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers.append((name.strip().lower(), value.strip()))
    return lines[0], headers


def _header(headers: list[tuple[str, str]], name: str) -> str | None:
    for key, value in headers:
        if key == name:
            return value
    return None


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    """Read a chunked body and return it as received (framing included), trailers too."""
    parts = []
    while True:
        size_line = await reader.readuntil(b"\r\n")
        parts.append(size_line)
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while True:  # trailers, up to the empty line
                line = await reader.readuntil(b"\r\n")
                parts.append(line)
                if line == b"\r\n":
                    return b"".join(parts)
        parts.append(await reader.readexactly(size + 2))


async def _read_body(reader: asyncio.StreamReader, headers: list[tuple[str, str]], *, until_eof: bool) -> bytes:
    encoding = (_header(headers, "transfer-encoding") or "").lower()
    if "chunked" in encoding:
        return await _read_chunked(reader)
    length = _header(headers, "content-length")
    if length is not None:
        return await reader.readexactly(int(length))
    return await reader.read() if until_eof else b""


def _action(headers: list[tuple[str, str]], request_line: str, body: bytes) -> str | None:
    target = _header(headers, "x-amz-target")
    if target:
        return target.rsplit(".", 1)[-1]
    query = urllib.parse.urlsplit(request_line.split(" ")[1] if " " in request_line else "").query
    found = urllib.parse.parse_qs(query).get("Action")
    if not found and "x-www-form-urlencoded" in (_header(headers, "content-type") or "") and b"Action=" in body:
        found = urllib.parse.parse_qs(body.decode("latin-1")).get("Action")
    return found[0] if found else None


class LatencyProxy:
    """Relay from ``url`` (127.0.0.1, a free port unless ``port`` is given) to ``target``, delaying responses.

    Parameters:
        target: upstream endpoint URL (http only), e.g. ``http://127.0.0.1:4566``.
        delay_ms: added to each (matching) response.
        actions: when given, only responses to these AWS actions are delayed.
    """

    def __init__(
        self, target: str, *, delay_ms: float = 20.0, actions: Iterable[str] | None = None, port: int = 0
    ) -> None:
        parts = urllib.parse.urlsplit(target)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"Target must be an http:// URL, not {target!r}")
        self.target = target
        self.upstream = (parts.hostname, parts.port or 80)
        self.delay_s = delay_ms / 1000.0
        self.actions = frozenset(actions) if actions else None
        self.port = port
        self.url: str | None = None
        self.requests = 0
        self.delayed = 0
        self.connections = 0
        self.max_open = 0
        self._open = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> str:
        """Start the relay thread; return the proxy URL once it listens."""
        self._thread = threading.Thread(target=self._run, name="latency-proxy", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error
        assert self.url is not None
        return self.url

    def stop(self) -> None:
        """Close the listener and every relayed connection, then end the thread."""
        if self._loop is not None and self._stop is not None and self._thread is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)
        self._thread = None

    def __enter__(self) -> LatencyProxy:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, limit=_MAX_HEADER, backlog=512)
        self.port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._ready.set()
        await self._stop.wait()
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    # -- relay -------------------------------------------------------------------------------------

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        self._open += 1
        self.max_open = max(self.max_open, self._open)
        upstream_writer: asyncio.StreamWriter | None = None
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.upstream, limit=_MAX_HEADER)
            while await self._exchange(client_reader, client_writer, upstream_reader, upstream_writer):
                pass
        except (_Closed, ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError, ValueError, OSError):
            pass
        finally:
            self._open -= 1
            self._tasks.discard(task)
            for writer in (client_writer, upstream_writer):
                if writer is not None:
                    writer.close()

    async def _exchange(
        self,
        client_reader: asyncio.StreamReader,
        client_writer: asyncio.StreamWriter,
        upstream_reader: asyncio.StreamReader,
        upstream_writer: asyncio.StreamWriter,
    ) -> bool:
        """Relay one request and its response; return whether the connection stays open."""
        head = await _read_head(client_reader)
        request_line, headers = _parse_headers(head)
        if (_header(headers, "expect") or "").lower() == "100-continue":
            # Answer the expectation ourselves and forward without it: the upstream then never sends a 1xx.
            client_writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            lines = [line for line in head.split(b"\r\n") if not line.lower().startswith(b"expect:")]
            head = b"\r\n".join(lines)
        body = await _read_body(client_reader, headers, until_eof=False)
        method = request_line.split(" ", 1)[0].upper()
        delay = self.delay_s if self.actions is None or _action(headers, request_line, body) in self.actions else 0.0
        self.requests += 1
        upstream_writer.write(head + body)
        await upstream_writer.drain()

        while True:  # skip over (forward) interim 1xx responses
            response_head = await _read_head(upstream_reader)
            status_line, response_headers = _parse_headers(response_head)
            status = int(status_line.split(" ")[1])
            if status >= 200 or status == 101:
                break
            client_writer.write(response_head)
        if method == "HEAD" or status in (204, 304):
            response_body = b""
        else:
            response_body = await _read_body(upstream_reader, response_headers, until_eof=True)
        framed = (
            _header(response_headers, "content-length") is not None
            or "chunked" in (_header(response_headers, "transfer-encoding") or "").lower()
            or method == "HEAD"
            or status in (204, 304)
        )
        if delay > 0:
            self.delayed += 1
            await asyncio.sleep(delay)
        client_writer.write(response_head + response_body)
        await client_writer.drain()
        closing = (_header(response_headers, "connection") or "").lower() == "close" or (
            (_header(headers, "connection") or "").lower() == "close"
        )
        return framed and not closing


def self_test() -> None:
    """Check keep-alive, chunked and Content-Length framing and per-action delays against a toy upstream."""
    import http.client
    import json
    import time

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await _read_head(reader)
                _, headers = _parse_headers(head)
                body = await _read_body(reader, headers, until_eof=False)
                if _header(headers, "x-chunked"):
                    payload = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
                    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + payload)
                else:
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
        except (_Closed, ConnectionError, asyncio.IncompleteReadError):
            writer.close()

    ready = threading.Event()
    box: dict[str, object] = {}

    def serve() -> None:
        async def run() -> None:
            server = await asyncio.start_server(upstream, "127.0.0.1", 0)
            box["port"] = server.sockets[0].getsockname()[1]
            ready.set()
            await asyncio.Event().wait()

        asyncio.run(run())

    threading.Thread(target=serve, daemon=True).start()
    ready.wait(5)
    with LatencyProxy(f"http://127.0.0.1:{box['port']}", delay_ms=100, actions=["Slow"]) as proxy:
        assert proxy.port is not None
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port)
        for target, body, expect_slow in (
            ("AmazonSQS.Fast", b'{"a": 1}', False),
            ("AmazonSQS.Slow", b"x" * 200_000, True),
            (None, b"Action=Slow&Version=1", True),
            (None, b"Action=Fast", False),
        ):
            headers = {"Content-Type": "application/x-www-form-urlencoded"}
            if target:
                headers = {"X-Amz-Target": target, "Content-Type": "application/x-amz-json-1.0"}
            started = time.monotonic()
            conn.request("POST", "/", body=body, headers=headers)
            response = conn.getresponse()
            assert response.read() == body, target
            elapsed = time.monotonic() - started
            assert (elapsed >= 0.1) == expect_slow, (target, body[:20], elapsed)
        conn.request("GET", "/", headers={"X-Chunked": "1", "X-Amz-Target": "AmazonSQS.Slow"})
        response = conn.getresponse()
        assert response.read() == b"hello world"
        assert proxy.connections == 1, proxy.connections  # all on one kept-alive connection
        print(json.dumps({"ok": True, "requests": proxy.requests, "delayed": proxy.delayed}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", help="upstream endpoint, e.g. http://127.0.0.1:4566")
    parser.add_argument("--delay-ms", type=float, default=20.0)
    parser.add_argument("--port", type=int, default=0, help="listen port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--actions", default="", help="comma-separated AWS actions to delay (default: all)")
    parser.add_argument("--self-test", action="store_true", help="check framing and keep-alive, then exit")
    args = parser.parse_args()
    if args.self_test:
        self_test()
        return
    if not args.target:
        parser.error("--target is required")
    actions = [a for a in args.actions.split(",") if a] or None
    proxy = LatencyProxy(args.target, delay_ms=args.delay_ms, actions=actions, port=args.port)
    print(proxy.start(), flush=True)
    done = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: done.set())
    done.wait()
    proxy.stop()
    print(
        f"requests={proxy.requests} delayed={proxy.delayed} connections={proxy.connections} max_open={proxy.max_open}"
    )


if __name__ == "__main__":
    main()
