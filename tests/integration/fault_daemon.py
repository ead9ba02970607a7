"""A daemon for the fault-injection tests, run as a real subprocess (``python -m tests.integration.fault_daemon``).

Its handler appends ``start N PID`` and ``done N PID`` lines to the ledger file named by
``MICROBUS_TEST_LEDGER`` (one ``write`` with ``O_APPEND`` each, then ``fsync``), so that the test can count
what was handled across processes that are killed and restarted.
"""

from __future__ import annotations

import os
import time
from typing import Any

from marshmallow import fields

from microbus import ConsumerDaemon, PubSubMessageSchema, handles

LEDGER_VARIABLE = "MICROBUS_TEST_LEDGER"


class Work(PubSubMessageSchema):
    """One unit of test work: ``n`` identifies it; it may sleep or always fail."""

    MEDIA_TYPE = "application/vnd.microbus.test.work"

    n = fields.Integer(required=True)
    sleep_s = fields.Float(required=False)
    fail = fields.Boolean(required=False)


def _record(event: str, n: int) -> None:
    fd = os.open(os.environ[LEDGER_VARIABLE], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{event} {n} {os.getpid()}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)


class WorkOnce(Work):
    """The same work, handled idempotently (needs ``FAULT__IDEMPOTENCY_GUARD__TABLE_NAME``)."""

    MEDIA_TYPE = "application/vnd.microbus.test.work-once"


@handles(WorkOnce, idempotent=True)
@handles(Work)
def handle_work(content: dict[str, Any]) -> bool:
    """Record the start, sleep or fail as asked, record the end."""
    _record("start", content["n"])
    if content.get("fail"):
        raise RuntimeError(f"work {content['n']} always fails")
    if content.get("sleep_s"):
        time.sleep(content["sleep_s"])
    _record("done", content["n"])
    return True


class FaultDaemon(ConsumerDaemon):
    """Handles test work; short AWS timeouts and backoffs so that faults play out within a test."""

    name = "fault"
    media_types = (Work, WorkOnce)

    @property
    def defaults(self) -> dict[str, Any]:
        return {
            **super().defaults,
            "aws": {"connect_timeout_s": 2.0, "read_timeout_s": 5.0, "max_attempts": 2},
            "microbus_sqs_message_dispatcher": {"backoff_base_s": 0.5, "backoff_max_s": 2.0},
        }


if __name__ == "__main__":
    FaultDaemon.main()
