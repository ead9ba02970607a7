"""README's "Producing from a web app" examples run and print what the README says they print."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
README = Path(__file__).resolve().parents[2] / "README.md"


def examples() -> list[tuple[str, list[str]]]:
    """The section's runnable blocks (those on the embedded emulator), each with the lines it is said to print."""
    text = README.read_text()
    section = text[text.index("## Producing from a web app") :]
    section = section[: section.index("\n## ", 1)]
    found = []
    for match in re.finditer(r"```python\n((?:(?!```).)*)```\n\nIt prints (.*?)\.\n", section, re.S):
        code, prints = match.groups()
        if "EmbeddedEmulator" in code:
            found.append((code, re.findall(r"`([^`]+)`", prints)))
    return found


def test_the_section_has_the_flask_fastapi_and_outbox_examples():
    codes = [code for code, _ in examples()]
    assert all(any(name in code for code in codes) for name in ("MicrobusFlask", "DeferredPublishMiddleware", "Outbox"))
    assert len(codes) == 3


@pytest.mark.parametrize("index", range(3), ids=["flask", "fastapi", "outbox"])
def test_the_example_runs_and_prints_what_the_readme_says(tmp_path, index):
    code, expected = examples()[index]
    script = tmp_path / "example.py"
    script.write_text(code)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for line in expected:
        assert line in result.stdout, (line, result.stdout)
