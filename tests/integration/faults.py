"""Helpers of the fault-injection tests: the daemon as a subprocess, its ledger, a faulty TCP proxy, pacing."""

from __future__ import annotations

import collections
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from microbus.testing import wait_for
from tests.integration.fault_daemon import LEDGER_VARIABLE

REPO = Path(__file__).resolve().parents[2]
REPORT_VARIABLE = "MICROBUS_FAULT_REPORT"


class Ledger:
    """Reads the ``start N PID`` / ``done N PID`` lines the daemons wrote."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.touch()

    def events(self, kind: str) -> collections.Counter[int]:
        """How often each ``n`` had the event ``kind``."""
        counts: collections.Counter[int] = collections.Counter()
        for line in self.path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == kind:
                counts[int(parts[1])] += 1
        return counts

    def done(self) -> collections.Counter[int]:
        return self.events("done")

    def started(self) -> collections.Counter[int]:
        return self.events("start")

    def duplicates(self) -> int:
        """Handler completions beyond the first, over all messages."""
        return sum(count - 1 for count in self.done().values() if count > 1)


@dataclass
class Daemon:
    """The fault daemon as a real subprocess, pointed at an endpoint and a queue."""

    environ: dict[str, str]
    queue_url: str
    ledger: Ledger
    log_dir: Path
    args: Sequence[str] = ()
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    logs: list[Path] = field(default_factory=list)

    def start(self) -> Daemon:
        self.starts += 1
        log = self.log_dir / f"daemon-{self.starts}.log"
        self.logs.append(log)
        env = {**os.environ, **self.environ, LEDGER_VARIABLE: str(self.ledger.path), "PYTHONPATH": str(REPO)}
        command = [sys.executable, "-m", "tests.integration.fault_daemon", "--sqs-queue-url", self.queue_url]
        command += ["--wait-seconds", "1", *self.args]
        with log.open("wb") as stream:
            self.process = subprocess.Popen(command, cwd=REPO, env=env, stdout=stream, stderr=subprocess.STDOUT)
        return self

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL, and reap."""
        self.signal(signal.SIGKILL)
        assert self.process is not None
        self.process.wait(10)

    def wait(self, timeout_s: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout_s)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_text(self) -> str:
        return "\n".join(path.read_text(errors="replace") for path in self.logs if path.exists())

    def stop(self) -> None:
        """Make sure the process is gone (test teardown)."""
        if self.alive:
            self.kill()


class PacedProducer(threading.Thread):
    """Publishes ``items`` in tens, never more than ``max_ahead`` ahead of ``handled()``.

    moto's cost per message grows with queue depth: this keeps the backlog shallow. :meth:`finish`
    joins and re-raises what the publisher raised.
    """

    def __init__(
        self, publish: Callable[[list[Any]], None], items: Sequence[Any], handled: Callable[[], int], max_ahead: int
    ) -> None:
        super().__init__(name="paced-producer", daemon=True)
        self.publish, self.items, self.handled, self.max_ahead = publish, items, handled, max_ahead
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for start in range(0, len(self.items), 10):
                wait_for(lambda s=start: s - self.handled() < self.max_ahead, timeout_s=120, what="the backlog")
                self.publish(list(self.items[start : start + 10]))
        except BaseException as exc:  # reported by finish()
            self.error = exc

    def finish(self, timeout_s: float) -> None:
        self.join(timeout_s)
        assert not self.is_alive(), "the producer did not finish"
        if self.error is not None:
            raise self.error


def paced_produce(
    publish: Callable[[list[Any]], None], items: Sequence[Any], *, handled: Callable[[], int], max_ahead: int = 100
) -> PacedProducer:
    """Start a :class:`PacedProducer`."""
    producer = PacedProducer(publish, items, handled, max_ahead)
    producer.start()
    return producer


def report(scenario: str, **figures: Any) -> None:
    """Print a table row; append it as JSON to ``$MICROBUS_FAULT_REPORT`` when set."""
    row = {"scenario": scenario, **figures}
    print(json.dumps(row))
    path = os.environ.get(REPORT_VARIABLE)
    if path:
        with open(path, "a", encoding="utf-8") as stream:
            stream.write(json.dumps(row) + "\n")


class FaultyProxy:
    """A loopback TCP proxy that can pass, reset, stall or drop connections.

    - ``pass``: forward both ways.
    - ``reset``: reset every open connection, and each new one as soon as it is accepted (RST).
    - ``stall``: accept, read and discard, never answer (the client's read timeout fires).
    - ``drop``: close every open connection, and each new one at once, without a byte (FIN).
    """

    MODES = ("pass", "reset", "stall", "drop")

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.mode = "pass"
        self.accepted = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set_mode(self, mode: str) -> None:
        """Switch mode; a change cuts every open connection (a FIN for ``drop``, else a RST)."""
        assert mode in self.MODES
        with self._lock:
            changed, self.mode = mode != self.mode, mode
            doomed = list(self._open) if changed else []
            self._open.difference_update(doomed)
        for sock in doomed:
            _abort(sock, reset=mode != "drop")

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        self.set_mode("reset")

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.accepted += 1
            mode = self.mode
            if mode in ("reset", "drop"):
                _abort(client, reset=mode == "reset")
            elif mode == "stall":
                self._track(client)
                threading.Thread(target=_discard, args=(client,), daemon=True).start()
            else:
                self._forward(client)

    def _forward(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
        except OSError:
            _abort(client, reset=True)
            return
        upstream.settimeout(None)
        self._track(client, upstream)
        for source, sink in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _track(self, *sockets: socket.socket) -> None:
        with self._lock:
            self._open.update(sockets)

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            with self._lock:
                self._open.discard(sock)
            _abort(sock, reset=False)


def _discard(sock: socket.socket) -> None:
    try:
        while sock.recv(65536):
            pass
    except OSError:
        pass


def _abort(sock: socket.socket, *, reset: bool) -> None:
    """Close; with ``reset``, abort with a RST. Shutting down reading first wakes a thread blocked in recv."""
    try:
        if reset:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.shutdown(socket.SHUT_RD)
        else:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


def visible_messages(sqs: Any, queue_url: str) -> int:
    """ApproximateNumberOfMessages: visible messages only."""
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages"])
    return int(attributes["Attributes"]["ApproximateNumberOfMessages"])


def elapsed(since: float) -> float:
    return round(time.monotonic() - since, 1)
