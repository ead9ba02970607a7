"""The `microbus` command itself: --version, -h, one-sentence usage errors, `run` finding modules in the cwd."""

from __future__ import annotations

import importlib.metadata
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from microbus.cli import main
from microbus.testing import wait_for

pytestmark = pytest.mark.integration
MICROBUS = str(Path(sys.executable).parent / "microbus")
COMMANDS = [
    [],
    ["run"],
    ["emulator"],
    ["produce"],
    ["stats"],
    ["peek"],
    ["dlq"],
    ["dlq", "list"],
    ["dlq", "redrive"],
    ["dlq", "purge"],
    ["topology"],
    ["topology", "plan"],
]


def test_version_prints_the_installed_package_version():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"microbus, version {importlib.metadata.version('microbus')}"


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "microbus")
def test_dash_h_is_help_on_every_command(command):
    result = CliRunner().invoke(main, [*command, "-h"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Usage: ")
    assert result.output == CliRunner().invoke(main, [*command, "--help"]).output


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["stats", "--no-such-option"], "no such option"),
        (["peek"], "missing argument"),
        (["peek", "q", "-n", "zero"], "'zero' is not a valid integer"),
        (["no-such-command"], "no such command"),
    ],
)
def test_usage_errors_are_one_sentence_on_stderr_with_exit_status_2(args, expected):
    result = subprocess.run([MICROBUS, *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert expected in result.stderr.lower()
    assert "-h" in result.stderr  # says where help is


def test_run_finds_a_module_in_the_current_directory_without_pythonpath(microbus_queue, tmp_path):
    # Given a daemon module in the current directory, and no PYTHONPATH
    marker = tmp_path / "handled.txt"
    (tmp_path / "myorders.py").write_text(
        textwrap.dedent(
            f"""
            from microbus import ConsumerDaemon, handles
            from microbus.reference.schemas import OrderPlaced

            @handles(OrderPlaced)
            def record(content):
                with open({str(marker)!r}, "a") as out:
                    out.write(content["order_id"] + "\\n")

            class OrdersDaemon(ConsumerDaemon):
                name = "myorders"
            """
        )
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | microbus_queue.endpoint.environ()
    process = subprocess.Popen(
        [MICROBUS, "run", "myorders:OrdersDaemon", "--sqs-queue-url", microbus_queue.queue_url, "--wait-seconds", "1"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True)
    reader.start()
    try:
        # When a message arrives
        microbus_queue.sqs.send_message(
            QueueUrl=microbus_queue.queue_url,
            MessageBody='{"mediaType": "application/vnd.microbus.order.placed", "order_id": "o-cwd"}',
        )
        # Then the daemon from the current directory handles it
        wait_for(  # the line written, not only the file opened
            lambda: (marker.exists() and marker.read_text().endswith("\n")) or process.poll() is not None,
            timeout_s=30,
            what="the handler",
        )
        assert marker.exists(), "".join(lines)
        assert marker.read_text() == "o-cwd\n"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        process.kill()
        process.wait()
        reader.join(10)
        process.stderr.close()
