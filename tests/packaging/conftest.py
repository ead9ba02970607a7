"""The wheel, built once per session from a copy of the project's own files (``git ls-files``)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OPS_STATIC = "microbus/ops/static/microbus-packaging-check.css"
"""A static file under microbus/ops/ (where the dashboard's assets go): the wheel must carry such files."""


def run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, **kwargs)  # type: ignore[call-overload]
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip wheel --no-deps`` of the tracked files (plus the worktree's changes to them)."""
    source = tmp_path_factory.mktemp("source")
    tracked = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT).stdout
    for name in filter(None, tracked.split("\0")):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    if not (source / "microbus" / "ops" / "__init__.py").exists():
        (source / "microbus" / "ops").mkdir(exist_ok=True)
        (source / "microbus" / "ops" / "__init__.py").write_text('"""Operations (stand-in for the wheel test)."""\n')
    (source / OPS_STATIC).parent.mkdir(parents=True, exist_ok=True)
    (source / OPS_STATIC).write_text("body {}\n")
    out = tmp_path_factory.mktemp("wheel")
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--disable-pip-version-check",
            "-q",
            "-w",
            str(out),
            str(source),
        ]
    )
    (built,) = out.glob("microbus-*.whl")
    return built
