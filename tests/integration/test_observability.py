"""Operating a daemon: its log lines (human and JSON), handler tracebacks, the periodic stats line, and the
metrics and health endpoints, on a daemon run as a child process against the emulator.

The daemon is defined here and run with ``microbus run tests.integration.test_observability:ObserveDaemon``
(signals reach only a main thread, and logging is configured by the command line).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from marshmallow import fields

from microbus import ConsumerDaemon, PubSubMessageSchema, handles, schema
from microbus.testing import wait_for

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]
WORK_MT = "application/vnd.microbus.test.observe.work"


@schema
class ObserveWork(PubSubMessageSchema):
    MEDIA_TYPE = WORK_MT
    n = fields.Integer(required=True)


def explode_for_the_traceback(n: int) -> None:
    raise ValueError(f"negative n: {n}")


@handles(ObserveWork)
def handle_work(content: dict[str, Any]) -> None:
    """n < 0 fails; n ≥ 1000 sleeps n/1000 seconds (a busy handler)."""
    if content["n"] < 0:
        explode_for_the_traceback(content["n"])
    if content["n"] >= 1000:
        time.sleep(content["n"] / 1000)


class ObserveDaemon(ConsumerDaemon):
    name = "observe-test"
    media_types = (ObserveWork,)


class Daemon:
    """A daemon child process whose stderr lines are collected as they come."""

    def __init__(self, queue: Any, *args: str) -> None:
        env = {
            **os.environ,
            **queue.endpoint.environ(),
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        }
        command = [str(BIN / "microbus"), "run", f"{__name__}:ObserveDaemon", "--sqs-queue-url", queue.queue_url]
        self.process = subprocess.Popen(
            [*command, "--wait-seconds", "1", *args],
            env=env,
            cwd=str(ROOT),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def wait_for_line(self, pattern: str, timeout_s: float = 20) -> re.Match[str]:
        found: list[re.Match[str]] = []

        def match() -> bool:
            found.extend(m for m in (re.search(pattern, line) for line in list(self.lines)) if m)
            return bool(found)

        wait_for(match, timeout_s=timeout_s, what=f"a line matching {pattern!r}; got:\n{self.stderr}")
        return found[0]

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=20)
        finally:
            self.close()

    def close(self) -> None:
        self.process.kill()
        self.process.wait()
        self._reader.join(10)
        assert self.process.stderr is not None
        self.process.stderr.close()


@pytest.fixture
def run_daemon(microbus_queue: Any) -> Iterator[Any]:
    started: list[Daemon] = []

    def run(*args: str) -> Daemon:
        daemon = Daemon(microbus_queue, *args)
        started.append(daemon)
        return daemon

    yield run
    for daemon in started:
        daemon.close()


def send(queue: Any, *ns: int) -> None:
    """Raw SQS messages (no SNS envelope), one per n."""
    for start in range(0, len(ns), 10):
        queue.sqs.send_message_batch(
            QueueUrl=queue.queue_url,
            Entries=[
                {"Id": str(i), "MessageBody": json.dumps({"mediaType": WORK_MT, "n": n})}
                for i, n in enumerate(ns[start : start + 10])
            ],
        )


@pytest.mark.parametrize("debug", [False, True], ids=["info", "debug"])
def test_a_handler_failure_logs_its_traceback(microbus_queue, run_daemon, debug):
    # Given a running daemon (with and without --debug)
    daemon = run_daemon(*(["--debug"] if debug else []))
    # When a handler raises
    send(microbus_queue, -1)
    daemon.wait_for_line(r"FAILED")
    assert daemon.stop() == 0
    # Then the traceback is logged with the outcome line, down to the raising function
    stderr = daemon.stderr
    assert "Traceback (most recent call last)" in stderr
    assert "in explode_for_the_traceback" in stderr
    assert "ValueError: negative n: -1" in stderr


def test_a_daemon_does_not_log_where_it_found_its_credentials(microbus_queue, run_daemon):
    # Given credentials in the environment (the emulator's dummy ones), at the default level
    daemon = run_daemon()
    send(microbus_queue, 1)
    daemon.wait_for_line(r"SUCCEEDED")
    assert daemon.stop() == 0
    # Then botocore's "Found credentials in environment variables" is not among the lines
    assert "Found credentials" not in daemon.stderr
