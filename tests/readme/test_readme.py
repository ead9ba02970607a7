"""Every Python block of README.md runs (see blocks.py for how blocks are grouped and steered)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from microbus.testing.fixtures import EMULATOR_VARIABLE
from tests.readme.blocks import README, Section, sections, shifted

ROOT = README.parent
pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(300),
    pytest.mark.skipif(
        os.environ.get(EMULATOR_VARIABLE) == "localstack",
        reason="README's blocks start their own embedded moto server: checked once, in the moto run",
    ),
]
SECTIONS = sections()
# What a section must print, where README shows its output.
EXPECTED_OUTPUT = {
    "Usage": [
        "Outcome.SUCCEEDED",
        "[('o-1', 1299)]",
        "on-target initech False RuntimeError: supplier offline",
        "best price 104",
        "hello ada",  # the AWS Lambda example
        "failed: ['nobody']",
    ],
}


def environment() -> dict[str, str]:
    """The shared prelude: the project on the path, no AWS credentials or metadata service (the emulator's dummy
    ones are what the blocks use), no endpoint from the caller's shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MICROBUS_"))}
    return {**env, "PYTHONPATH": str(ROOT), "AWS_EC2_METADATA_DISABLED": "true"}


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, env=environment(), capture_output=True, text=True, timeout=240)


@pytest.mark.parametrize("section", SECTIONS, ids=[section.title for section in SECTIONS])
def test_the_python_blocks_of_each_section_run(section: Section, tmp_path: Path) -> None:
    # Given the section's blocks, in order, and the ones to run under pytest
    plain = [block for block in section.blocks if not block.pytest]
    blocks = tmp_path / "blocks.json"
    blocks.write_text(json.dumps([vars(block) for block in plain]))
    # When they run in one fresh interpreter
    result = run([sys.executable, "-m", "tests.readme.run_section", str(blocks)], cwd=ROOT)
    # Then they finish without an error and print what README says they print
    assert result.returncode == 0, f"README section {section.title!r}:\n{result.stderr[-4000:]}"
    for line in EXPECTED_OUTPUT.get(section.title, []):
        assert line in result.stdout, result.stdout
    for block in section.blocks:
        if block.pytest:
            module = tmp_path / f"test_readme_line_{block.line}.py"
            module.write_text((block.setup + "\n" if block.setup else "") + shifted(block.code, block.line))
            tested = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(module)], cwd=tmp_path)
            assert tested.returncode == 0, f"README line {block.line} under pytest:\n{tested.stdout[-4000:]}"
            assert re.search(r"\b[1-9]\d* passed\b", tested.stdout), tested.stdout


def test_readme_has_python_blocks_and_they_are_all_collected() -> None:
    text = README.read_text()
    assert sum(len(section.blocks) for section in SECTIONS) == text.count("```python\n") > 5


def test_the_daemon_usage_line_lists_every_option() -> None:
    # Given the usage line README shows for a daemon, and the daemon's real options
    lines = README.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("microbus-orders-daemon "))
    usage = [lines[start]] + [line for line in lines[start + 1 :] if line.startswith("    [")][: len(lines)]
    usage = usage[: 1 + next((i for i, line in enumerate(usage[1:]) if not line.startswith("    [")), len(usage))]
    shown = set(re.findall(r"--[a-z][a-z-]*", " ".join(usage)))
    daemon = Path(sys.executable).parent / "microbus-orders-daemon"
    help_text = subprocess.run([str(daemon), "--help"], capture_output=True, text=True, timeout=60, check=True).stdout
    options = set(re.findall(r"^\s+(--[a-z][a-z-]*)", help_text, re.M)) - {"--help"}
    # Then every option is on the line, and nothing else
    assert options and shown == options, f"missing: {sorted(options - shown)}, unknown: {sorted(shown - options)}"
