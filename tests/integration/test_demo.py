"""The demo that README's first command runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_the_demo_handles_every_message_and_exits_zero():
    microbus = Path(sys.executable).parent / "microbus"
    result = subprocess.run([str(microbus), "demo", "--count", "60"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "produced      60" in result.stdout
    assert "handled       60 (0 duplicates)" in result.stdout
    assert "lost          0" in result.stdout
