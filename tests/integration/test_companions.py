"""Companion daemons: a ConsumerDaemon with ``companions`` runs them in its process, each on its own queue,
and one SIGTERM stops them all cleanly.

The daemons are defined here and run in a child process (signals reach only a main thread) with
``microbus run tests.integration.test_companions:PrimaryDaemon``: the primary gets its queue on the command
line, the companion through microcosm's ``NAME__MICROBUS_SQS_CONSUMER__SQS_QUEUE_URL`` environment variable, or through
its ``defaults``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from marshmallow import fields

from microbus import ConsumerDaemon, PubSubMessageSchema, handles, schema
from microbus.testing import wait_for

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]

# Fixed (not random) media types: the child process imports this module again and must agree.
PRIMARY_MT = "application/vnd.microbus.test.companions.primary"
COMPANION_MT = "application/vnd.microbus.test.companions.companion"
COMPANION_QUEUE_VARIABLE = "MICROBUS_TEST_COMPANION_QUEUE_URL"


@schema
class PrimaryWork(PubSubMessageSchema):
    MEDIA_TYPE = PRIMARY_MT
    n = fields.Integer(required=True)


@schema
class CompanionWork(PubSubMessageSchema):
    MEDIA_TYPE = COMPANION_MT
    n = fields.Integer(required=True)


@handles(PrimaryWork)
def handle_primary(content: dict[str, Any]) -> None:
    """Handled by the primary daemon."""


@handles(CompanionWork)
def handle_companion(content: dict[str, Any]) -> None:
    """Handled by the companion daemon."""


class CompanionDaemon(ConsumerDaemon):
    """The companion; its queue comes from ``MICROBUS_TEST_COMPANION__MICROBUS_SQS_CONSUMER__SQS_QUEUE_URL``."""

    name = "microbus-test-companion"
    media_types = [COMPANION_MT]


class PrimaryDaemon(ConsumerDaemon):
    """The primary daemon, with the companion beside it."""

    name = "microbus-test-primary"
    media_types = [PRIMARY_MT]
    companions = (CompanionDaemon,)


class CompanionByDefaults(ConsumerDaemon):
    """A companion that sets its own queue in its ``defaults`` (here read from a variable of the test)."""

    name = "microbus-test-companion-by-defaults"
    media_types = [COMPANION_MT]

    @property
    def defaults(self) -> dict[str, Any]:
        config = super().defaults
        config["microbus_sqs_consumer"] = {"sqs_queue_url": os.environ[COMPANION_QUEUE_VARIABLE]}
        return config


class PrimaryWithDefaultsCompanion(ConsumerDaemon):
    name = "microbus-test-primary-2"
    media_types = [PRIMARY_MT]
    companions = (CompanionByDefaults,)


def send(queue, media_type, count):
    queue.sqs.send_message_batch(
        QueueUrl=queue.queue_url,
        Entries=[{"Id": str(n), "MessageBody": json.dumps({"mediaType": media_type, "n": n})} for n in range(count)],
    )


def run_daemon(target, primary, env_extra):
    env = {
        **os.environ,
        **primary.endpoint.environ(),
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        **env_extra,
    }
    return subprocess.Popen(
        [str(BIN / "microbus"), "run", target, "--sqs-queue-url", primary.queue_url, "--wait-seconds", "1"],
        env=env,
        cwd=str(ROOT),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("target", "companion_name", "how"),
    [
        ("PrimaryDaemon", CompanionDaemon.name, "environment"),
        ("PrimaryWithDefaultsCompanion", CompanionByDefaults.name, "defaults"),
    ],
    ids=["queue-from-environment", "queue-from-defaults"],
)
def test_a_daemon_and_its_companion_drain_their_own_queues_and_stop_on_one_sigterm(
    make_queue, target, companion_name, how
):
    # Given two queues, each with messages for one of the two daemons
    primary, companion = make_queue(), make_queue()
    send(primary, PRIMARY_MT, 5)
    send(companion, COMPANION_MT, 7)
    if how == "environment":
        variable = companion_name.upper().replace("-", "_") + "__MICROBUS_SQS_CONSUMER__SQS_QUEUE_URL"
        env_extra = {variable: companion.queue_url}
    else:
        env_extra = {COMPANION_QUEUE_VARIABLE: companion.queue_url}
    # When the primary daemon runs (its queue on the command line), with its companion in the same process
    process = run_daemon(f"tests.integration.test_companions:{target}", primary, env_extra)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True)
    reader.start()
    try:
        wait_for(lambda: sum("SUCCEEDED" in line for line in lines) >= 12, timeout_s=30, what="12 handled")
        wait_for(lambda: primary.depth() == 0 and companion.depth() == 0, timeout_s=10, what="both drained")
        # And gets one SIGTERM
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
        reader.join(10)
    finally:
        process.kill()
        process.wait()
        reader.join(10)
        process.stderr.close()
    stderr = "".join(lines)
    # Then it exited 0, with no traceback, each daemon having handled its own queue's messages
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert f"{target_name(target)} consuming {primary.queue_url}" in stderr
    assert f"{companion_name} consuming {companion.queue_url}" in stderr
    assert sum(PRIMARY_MT in line and "SUCCEEDED" in line for line in lines) == 5
    assert sum(COMPANION_MT in line and "SUCCEEDED" in line for line in lines) == 7
    assert f"{target_name(target)} stopped: {{'SUCCEEDED': 5," in stderr
    assert f"{companion_name} stopped: {{'SUCCEEDED': 7," in stderr


@pytest.mark.timeout(60)
def test_a_companion_without_a_queue_fails_with_a_sentence_that_names_the_companion(make_queue):
    # Given a primary daemon whose companion has no queue configured (and no topology)
    primary = make_queue()
    process = run_daemon("tests.integration.test_companions:PrimaryDaemon", primary, {})
    try:
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
        process.wait()
    # Then it exits 2 with one sentence that says which daemon lacks a queue and how to give it one:
    # the primary's --sqs-queue-url does not apply to companions
    assert process.returncode == 2, stderr
    assert "Traceback" not in stderr
    assert f"{CompanionDaemon.name}:" in stderr
    assert "MICROBUS_TEST_COMPANION__MICROBUS_SQS_CONSUMER__SQS_QUEUE_URL" in stderr


def target_name(target):
    return {"PrimaryDaemon": PrimaryDaemon.name, "PrimaryWithDefaultsCompanion": PrimaryWithDefaultsCompanion.name}[
        target
    ]
