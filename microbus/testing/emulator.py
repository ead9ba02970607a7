"""The embedded emulator: a moto server on 127.0.0.1, started and stopped by microbus.

The server runs in a child process (its own interpreter, so it does not compete with the
daemon for the GIL) and exits when its parent does: it watches its stdin, which the parent holds.
Needs the ``local`` extra (``pip install 'microbus[local]'``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from types import TracebackType
from typing import Any

from microbus.errors import ConfigurationError
from microbus.topology import AppliedTopology, Topology, apply_topology
from microbus.wire.transport import AWSSettings

# Emulator-only placeholders: moto accepts any key; these are not credentials.
EMULATOR_KEY_ID = "testing"
EMULATOR_SECRET = "testing"  # noqa: S105
EMULATOR_REGION = "us-east-1"


class Endpoint:
    """An emulator endpoint: AWS settings, graph config and child-process environment pointing at it."""

    kind = "external"

    def __init__(self, endpoint_url: str | None = None, *, kind: str | None = None) -> None:
        self.endpoint_url = endpoint_url
        if kind is not None:
            self.kind = kind

    def settings(self) -> AWSSettings:
        """AWS settings that point at this emulator."""
        if self.endpoint_url is None:
            raise ConfigurationError("The embedded emulator is not started")
        return AWSSettings(
            endpoint_url=self.endpoint_url,
            region_name=EMULATOR_REGION,
            access_key_id=EMULATOR_KEY_ID,
            secret_access_key=EMULATOR_SECRET,
        )

    def config(self) -> dict[str, Any]:
        """The ``aws`` config section that points a microcosm graph at this emulator."""
        settings = self.settings()
        return {
            "aws": {
                "endpoint_url": settings.endpoint_url,
                "region_name": settings.region_name,
                "access_key_id": settings.access_key_id,
                "secret_access_key": settings.secret_access_key,
            }
        }

    def clients(self) -> dict[str, Any]:
        """SNS, SQS and DynamoDB clients pointing at this emulator, by service name."""
        settings = self.settings()
        return {service: settings.client(service) for service in ("sns", "sqs", "dynamodb")}

    def apply(self, topology: Topology) -> AppliedTopology:
        """Create (or update) a topology on this emulator, tables included.

        Raises:
            TopologyError, TransportError.
        """
        return apply_topology(topology, **self.clients())

    def environ(self) -> dict[str, str]:
        """Environment variables that point a child process (a daemon) at this emulator."""
        settings = self.settings()
        assert settings.endpoint_url is not None
        return {
            "AWS_ENDPOINT_URL": settings.endpoint_url,
            "AWS_DEFAULT_REGION": EMULATOR_REGION,
            "AWS_ACCESS_KEY_ID": EMULATOR_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": EMULATOR_SECRET,
        }


class EmbeddedEmulator(Endpoint):
    """A moto server on a free loopback port.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    kind = "moto"

    def __init__(self, *, start_timeout_s: float = 30.0, port: int = 0) -> None:
        super().__init__()
        self.start_timeout_s = start_timeout_s
        self.port = port
        """The loopback port to serve on; 0 picks a free one."""
        self._process: subprocess.Popen[str] | None = None

    def start(self) -> str:
        """Start the server and return its endpoint URL once it answers.

        Raises:
            ConfigurationError: moto is not installed, the port is in use, or the server did not come up.
        """
        try:
            import moto.server  # noqa: F401
        except ImportError as exc:
            raise ConfigurationError("The embedded emulator needs moto: pip install 'microbus[local]'") from exc
        self._process = subprocess.Popen(
            [sys.executable, "-m", "microbus.testing.emulator", str(self.port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "MOTO_CALL_RESET_API": "false"},
        )
        assert self._process.stdout is not None
        line = self._process.stdout.readline().strip()
        if not line.isdigit():
            self.stop()
            if line.startswith(_IN_USE):
                raise ConfigurationError(
                    f"The embedded moto server cannot listen on 127.0.0.1 port {self.port}: it is in use; "
                    "choose another port (0 picks a free one)"
                )
            raise ConfigurationError(f"The embedded moto server did not start (it printed {line!r})")
        self.endpoint_url = f"http://127.0.0.1:{line}"
        self._wait_ready()
        return self.endpoint_url

    @property
    def running(self) -> bool:
        """Whether the server process is started and has not exited."""
        return self._process is not None and self._process.poll() is None

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise ConfigurationError(f"The embedded moto server at {self.endpoint_url} did not answer in time")

    def stop(self) -> None:
        """Stop the server."""
        if self._process is not None:
            if self._process.stdin is not None:
                self._process.stdin.close()
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            if self._process.stdout is not None:
                self._process.stdout.close()
            self._process = None

    def __enter__(self) -> EmbeddedEmulator:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _serialize_dynamodb() -> None:
    """Make moto's DynamoDB handle one request at a time.

    moto serves requests on several threads and does not lock items, so two concurrent conditional
    updates of one item can both pass their condition; DynamoDB itself applies them atomically. The
    fan-in store relies on that atomicity.
    """
    import threading

    from moto.dynamodb.responses import DynamoHandler

    lock = threading.Lock()
    call_action = DynamoHandler.call_action

    def serialized(self: DynamoHandler) -> Any:
        with lock:
            return call_action(self)

    DynamoHandler.call_action = serialized  # type: ignore[method-assign]


def _serialize_sqs_queues() -> None:
    """Make moto's SQS queues safe under concurrent requests, as SQS is.

    moto picks the visible messages of a queue without a lock, so two receives at once can both return the
    same message (and, on a FIFO queue, slices of one message group); and each delete rebuilds the queue's
    message list unlocked, so deletes (or a send) at once lose updates: a deleted message comes back (in
    flight, then visible: delivered twice, on a FIFO queue behind the rest of its group) or a sent one vanishes.
    Workers keep several receives and settle batches in flight, so the embedded emulator serialises each
    queue's receives, and its receives' picking, deletes and sends on the queue's own lock (a long poll's wait
    releases it).
    """
    import threading
    from collections import defaultdict

    from moto.sqs.models import Queue, SQSBackend

    locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
    receive_message = SQSBackend.receive_message
    delete_message = Queue.delete_message

    def serialized(self: SQSBackend, queue_name: str, *args: Any, **kwargs: Any) -> Any:
        queue = self.get_queue(queue_name)
        with locks[queue_name], queue._messages_lock:
            return receive_message(self, queue_name, *args, **kwargs)

    def locked_delete(self: Queue, receipt_handle: str) -> None:
        with self._messages_lock:
            delete_message(self, receipt_handle)

    SQSBackend.receive_message = serialized  # type: ignore[method-assign]
    Queue.delete_message = locked_delete  # type: ignore[method-assign]


def _cheap_sqs_retention_check() -> None:
    """Make moto's retention check of a received message read the queue's retention period directly.

    moto computes all of a queue's attributes (its approximate counts walk every message) to read the period,
    once per message received: a receive of 10 from a queue of n messages cost 10 walks of n, seconds for a
    few hundred messages.
    """
    from moto.core.utils import unix_time
    from moto.sqs.models import Message, SQSBackend

    def retained(self: SQSBackend, queue_name: str, message: Message) -> bool:
        period = int(getattr(self.get_queue(queue_name), "message_retention_period"))  # noqa: B009 - set dynamically
        return bool(period + message.sent_timestamp / 1000 > unix_time())  # type: ignore[operator]

    SQSBackend.is_message_valid_based_on_retention_period = retained  # type: ignore[method-assign]


_IN_USE = "in-use"


def _port_free(port: int) -> bool:
    """Whether 127.0.0.1:``port`` can be listened on (moto's server thread would hang on a port in use)."""
    import socket

    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does: TIME_WAIT is no conflict
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _serve(port: int = 0) -> None:
    """Child process: serve on a loopback port (0: a free one), print it, exit when stdin closes.

    Ctrl-C in a terminal reaches the whole process group: the child leaves it to its parent, which stops
    it by closing its stdin.
    """
    import logging
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if port and not _port_free(port):
        print(_IN_USE, flush=True)
        return
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    _serialize_dynamodb()
    _serialize_sqs_queues()
    _cheap_sqs_retention_check()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    print(server.get_host_and_port()[1], flush=True)
    sys.stdin.read()
    server.stop()


if __name__ == "__main__":
    _serve(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
