"""Daemon commands take ``--prefetch N`` (messages received ahead of free handler threads)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "command",
    [["microbus-orders-daemon"], ["microbus", "run", "microbus.reference.daemons.orders:OrdersDaemon"]],
    ids=["entry-point", "microbus-run"],
)
def test_daemon_commands_offer_a_prefetch_option(command):
    # When a daemon command's help is shown
    result = subprocess.run([str(BIN / command[0]), *command[1:], "--help"], capture_output=True, text=True, timeout=30)
    # Then it lists --prefetch
    assert result.returncode == 0, result.stderr
    assert "--prefetch" in result.stdout
