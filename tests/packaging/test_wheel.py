"""The wheel a user installs: its files, its metadata and its entry points."""

from __future__ import annotations

import re
import zipfile
from email.parser import Parser

from microbus import __version__
from tests.packaging.conftest import OPS_STATIC


def test_the_wheel_ships_the_reference_application_namespaced_and_py_typed(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/", 1)[0] for name in names}
    # No generic top-level packages: only microbus and its dist-info
    assert top_level == {"microbus", f"microbus-{__version__}.dist-info"}
    assert "microbus/py.typed" in names
    assert {
        "microbus/reference/__init__.py",
        "microbus/reference/daemons/__init__.py",
        "microbus/reference/daemons/orders.py",
        "microbus/reference/daemons/fulfilment.py",
        "microbus/reference/daemons/demo.py",
        "microbus/reference/daemons/reference.py",
        "microbus/reference/schemas/__init__.py",
        "microbus/aliases.py",
        "microbus/testing/fixtures.py",
    } <= set(names)
    # Static files under microbus/ops/ travel as package data
    assert OPS_STATIC in names
    assert not [name for name in names if "__pycache__" in name or name.startswith("tests/")]


def test_the_wheel_metadata_names_license_python_classifiers_and_urls(wheel):
    with zipfile.ZipFile(wheel) as archive:
        metadata = Parser().parsestr(archive.read(f"microbus-{__version__}.dist-info/METADATA").decode())
    assert metadata["Name"] == "microbus"
    assert metadata["Version"] == __version__
    assert metadata["Requires-Python"] == ">=3.11"
    assert "MIT" in (metadata["License"] or metadata["License-Expression"] or "")
    classifiers = metadata.get_all("Classifier")
    for python in ("3.11", "3.12", "3.13"):
        assert f"Programming Language :: Python :: {python}" in classifiers
    assert "Typing :: Typed" in classifiers
    urls = dict(url.split(", ", 1) for url in metadata.get_all("Project-URL"))
    assert {"Source", "Changelog", "Issues"} <= set(urls)
    extras = set(metadata.get_all("Provides-Extra"))
    assert {"testing", "local", "yaml", "dev"} <= extras
    testing = [r for r in metadata.get_all("Requires-Dist") if re.search(r"extra == .testing.", r)]
    assert any(r.startswith("pytest") for r in testing)
    assert not [r for r in testing if r.startswith(("ruff", "mypy"))]


def test_the_wheel_entry_points_are_microbus_own_names_the_scripts_and_the_pytest_plugin(wheel):
    with zipfile.ZipFile(wheel) as archive:
        text = archive.read(f"microbus-{__version__}.dist-info/entry_points.txt").decode()
    sections: dict[str, dict[str, str]] = {}
    current = ""
    for line in text.splitlines():
        if line.startswith("["):
            current = line.strip("[]")
        elif "=" in line:
            name, target = (part.strip() for part in line.split("=", 1))
            sections.setdefault(current, {})[name] = target
    factories = sections["microcosm.factories"]
    for familiar in ("pubsub_message_schema_registry", "sqs_message_handler_registry", "sns_topic_arns",
                     "sns_producer", "sqs_consumer", "sqs_message_dispatcher"):  # fmt: skip
        assert familiar not in factories
        assert f"microbus_{familiar}" in factories
    assert sections["pytest11"] == {"microbus.testing.fixtures": "microbus.testing.fixtures"}
    assert sections["console_scripts"]["microbus-orders-daemon"] == "microbus.reference.daemons.orders:main"
    assert all(target.startswith("microbus") for target in sections["console_scripts"].values())
