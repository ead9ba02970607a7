"""`microbus topology` end to end, as a user runs it, against the emulator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
MICROBUS = str(Path(sys.executable).parent / "microbus")


def run(endpoint, *args, expect=0):
    result = subprocess.run(
        [MICROBUS, "topology", *args],
        env={**os.environ, **endpoint.environ()},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == expect, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    return result


def test_apply_creates_the_reference_topology_and_a_second_apply_says_nothing_changed(microbus_endpoint):
    run(microbus_endpoint, "apply")  # the reference topology may exist already (the emulator is shared)
    second = run(microbus_endpoint, "apply")
    assert second.stdout.strip().endswith("resources already match the topology.")
    assert "No changes" in run(microbus_endpoint, "plan", "--detailed-exitcode").stdout
    described = json.loads(run(microbus_endpoint, "describe", "--json").stdout)
    assert described["queues"]["orders"]["max_receive_count"] == 5
    assert described["subscriptions"]["orders → orders"]["raw"] is False
    # the whole reference application: fulfilment's queue, its callback queue and the fan-in table too
    assert described["queues"]["fulfilment-callbacks"]["max_receive_count"] == 5
    assert described["tables"]["fulfilment-fan-in"]["status"] == "ACTIVE"


def test_plan_apply_describe_a_yaml_file(microbus_endpoint, tmp_path):
    name = f"cli-{uuid.uuid4().hex[:8]}"
    path = tmp_path / "topology.yaml"
    path.write_text(
        f"topics: [{name}]\n"
        f"queues:\n  - name: {name}\n    visibility_timeout_s: 40\n    subscriptions:\n"
        f"      - topic: {name}\n        media_types: [application/vnd.microbus.order.placed]\n"
    )
    # plan shows the diff and exits 3 with --detailed-exitcode
    plan = run(microbus_endpoint, "--topology", str(path), "plan", "--detailed-exitcode", expect=3)
    assert f"+ create queue {name}\n    VisibilityTimeout=40" in plan.stdout
    assert f"+ create subscription {name} → {name}" in plan.stdout
    assert "Plan: 5 to create, 0 to update, 0 unchanged." in plan.stdout
    assert "Applied: 5 to create" in run(microbus_endpoint, "--topology", str(path), "apply").stdout
    assert "Nothing to change" in run(microbus_endpoint, "--topology", str(path), "apply").stdout
    describe = run(microbus_endpoint, "--topology", str(path), "describe").stdout
    assert f"  {name}: arn=arn:" in describe
    assert "visibility_timeout_s=40" in describe
    # a drifted setting shows as an update
    path.write_text(path.read_text().replace("40", "50"))
    assert "VisibilityTimeout: 40 → 50" in run(microbus_endpoint, "--topology", str(path), "plan").stdout


def test_a_malformed_file_fails_with_one_line(microbus_endpoint, tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("queues:\n  - name: q\n    visiblity_timeout_s: 5\n")
    result = run(microbus_endpoint, "--topology", str(path), "plan", expect=2)
    assert result.stderr.strip().count("\n") == 0
    assert "unknown key 'visiblity_timeout_s'" in result.stderr
