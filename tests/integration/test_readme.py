"""README's runnable example stays runnable."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_parallel_execution_example_runs_and_prints_the_best_quote(tmp_path):
    text = README.read_text()
    section = text[text.index("#### Runnable example") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    script = tmp_path / "example.py"
    script.write_text(code)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "on-target initech False RuntimeError: supplier offline" in result.stdout
    assert "best price 104" in result.stdout


def test_the_lambda_example_runs_and_reports_the_failed_message(tmp_path):
    text = README.read_text()
    section = text[text.index("#### Try it on the embedded emulator") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    script = tmp_path / "lambda_example.py"
    script.write_text(code)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["hello ada", "failed: ['nobody']"]
