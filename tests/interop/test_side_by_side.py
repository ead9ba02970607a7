"""microbus and microcosm-pubsub 3.0.0 installed in one virtualenv (the peer's): each graph gets its own
package's components, microbus works end to end there, and the familiar names refuse to load."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.interop.peer_env import HERE, ensure_peer_python

# The first test builds the peer venv (cached in .cache/): minutes on a loaded machine.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]
CACHE = Path(__file__).resolve().parents[2] / ".cache"


def test_both_packages_in_one_venv_keep_their_own_components(microbus_queue):
    # Given a venv with microcosm-pubsub 3.0.0 and microbus installed side by side
    python = ensure_peer_python(CACHE)
    config = microbus_queue.graph_config()
    env = {**os.environ, **microbus_queue.endpoint.environ()}
    # When one process builds a microbus graph and a microcosm-pubsub graph, and microbus sends a message
    result = subprocess.run(
        [str(python), str(HERE / "side_by_side.py"), json.dumps(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    # Then each graph resolved its own package's factories
    assert report["microbus"] == dict.fromkeys(report["microbus"], "microbus"), report
    assert report["peer"] == dict.fromkeys(report["peer"], "microcosm_pubsub"), report
    # And microbus produced, consumed and handled its message there
    assert report["outcomes"] == ["SUCCEEDED"], report
    assert report["handled"][0]["text"] == "hello"
    # And the opt-in familiar names refuse to load beside microcosm-pubsub's, saying why
    assert "microcosm-pubsub" in report["familiar_names"], report
