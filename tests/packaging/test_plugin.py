"""The fixtures reach a user's suite through the installed pytest11 plugin, with or without the old conftest line."""

from __future__ import annotations

import subprocess
import sys

import pytest

USER_TEST = "def test_fixtures_are_there(microbus_queue):\n    assert microbus_queue.depth() == 0\n"


@pytest.mark.parametrize("conftest", ["", 'pytest_plugins = ["microbus.testing.fixtures"]\n'], ids=["none", "old-line"])
def test_a_user_suite_gets_the_fixtures_from_the_plugin(tmp_path, conftest):
    # Given a user's suite, with no conftest or with the line older docs asked for
    (tmp_path / "test_user.py").write_text(USER_TEST)
    if conftest:
        (tmp_path / "conftest.py").write_text(conftest)
    # When pytest runs it (the fixtures start an embedded moto server)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    # Then the fixtures resolve and the plugin is registered once
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
    assert (
        "--emulator"
        in subprocess.run(
            [sys.executable, "-m", "pytest", "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120
        ).stdout
    )
