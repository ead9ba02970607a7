"""Loading a topology from YAML/JSON files, plain dicts, or a ``module:ATTRIBUTE`` reference.

YAML needs PyYAML (``pip install 'microbus[yaml]'``); JSON needs nothing.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from microbus.errors import TopologyError
from microbus.topology.model import Daemon, Producer, Queue, Subscription, Table, Topic, Topology, field_names

_SECTIONS: dict[str, type] = {
    "topics": Topic,
    "queues": Queue,
    "tables": Table,
    "daemons": Daemon,
    "producers": Producer,
}


def resolve_topology(reference: str) -> Topology:
    """Load a topology from a file path (``.yaml``, ``.yml``, ``.json``) or a ``module:ATTRIBUTE`` reference.

    Raises:
        TopologyError: the reference cannot be loaded, or what it names is not a valid topology.
    """
    if reference.endswith((".yaml", ".yml", ".json")) or Path(reference).is_file():
        return load_topology(reference)
    module_name, _, attribute = reference.partition(":")
    try:
        value = getattr(importlib.import_module(module_name), attribute or "TOPOLOGY")
    except (ImportError, AttributeError, ValueError) as exc:
        raise TopologyError(f"Cannot load topology {reference!r} ({exc}): give a file or module:ATTRIBUTE") from exc
    if not isinstance(value, Topology):
        raise TopologyError(f"{reference!r} is a {type(value).__name__}, not a Topology")
    return value


def load_topology(path: str | Path) -> Topology:
    """Load a topology file; the format follows the extension (YAML unless ``.json``).

    Raises:
        TopologyError: the file is missing, malformed, or does not describe a valid topology.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TopologyError(f"Cannot read topology file {path}: {exc.strerror or exc}") from exc
    data = _parse_json(text, path) if path.suffix == ".json" else _parse_yaml(text, path)
    try:
        return topology_from_dict(data)
    except TopologyError as exc:
        raise TopologyError(f"{path}: {exc}") from exc


def _parse_json(text: str, path: Path) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise TopologyError(f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from exc


def _parse_yaml(text: str, path: Path) -> Any:
    try:
        import yaml
    except ImportError as exc:
        raise TopologyError(f"Reading {path} needs PyYAML: pip install 'microbus[yaml]' (or use JSON)") from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise TopologyError(f"{path} is not valid YAML{where}: {problem}") from exc


def topology_from_dict(data: Any) -> Topology:
    """Build a topology from plain data (parsed YAML/JSON).

    Daemons may name their class (``class: module:Class``) to take its name, handled media types
    and handler timeout from it.

    Raises:
        TopologyError: naming the first unknown key, missing key or wrong type, and where it is.
    """
    data = _mapping(data, "the topology")
    _check_keys(data, [*_SECTIONS, "default_topic"], "the topology")
    sections: dict[str, Any] = {}
    for section, cls in _SECTIONS.items():
        items = data.get(section) or []
        if not isinstance(items, list):
            raise TopologyError(f"{section} must be a list, not {type(items).__name__}")
        sections[section] = tuple(_item(cls, item, f"{section}[{i}]") for i, item in enumerate(items))
    topology = Topology(**sections, default_topic=data.get("default_topic"))
    topology.validate()
    return topology


def _item(cls: type, item: Any, where: str) -> Any:
    if cls is Topic and isinstance(item, str):
        return Topic(name=item)
    item = dict(_mapping(item, where))
    if cls is Daemon and "class" in item:
        return _daemon_of_class(item, where)
    _check_keys(item, field_names(cls), where)
    if cls is Queue and "subscriptions" in item:
        subscriptions = item["subscriptions"] or []
        if not isinstance(subscriptions, list):
            raise TopologyError(f"{where}.subscriptions must be a list")
        item["subscriptions"] = tuple(
            _build(
                Subscription, _checked(s, Subscription, f"{where}.subscriptions[{i}]"), f"{where}.subscriptions[{i}]"
            )
            for i, s in enumerate(subscriptions)
        )
    return _build(cls, item, where)


def _checked(item: Any, cls: type, where: str) -> dict[str, Any]:
    mapping = _mapping(item, where)
    _check_keys(mapping, field_names(cls), where)
    return mapping


def _daemon_of_class(item: dict[str, Any], where: str) -> Daemon:
    reference = item.pop("class")
    module_name, _, class_name = str(reference).partition(":")
    try:
        daemon_class = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise TopologyError(f"{where}: cannot load class {reference!r} ({exc}); expected module:Class") from exc
    _check_keys(item, [n for n in field_names(Daemon) if n != "name"], where)
    if "queue" not in item:
        raise TopologyError(f"{where}: missing key 'queue'")
    try:
        return Daemon.of(daemon_class, **item)
    except (TypeError, ValueError) as exc:
        raise TopologyError(f"{where}: {exc}") from exc


def _build(cls: type, item: dict[str, Any], where: str) -> Any:
    _check_types(cls, item, where)
    try:
        return cls(**item)
    except TypeError as exc:
        missing = [n for n in field_names(cls) if n not in item and _required(cls, n)]
        detail = f"missing key {missing[0]!r}" if missing else str(exc)
        raise TopologyError(f"{where}: {detail}") from exc


def _check_types(cls: type, item: dict[str, Any], where: str) -> None:
    """Scalars must have the type of the field's default (booleans for flags, whole numbers for counts)."""
    for f in fields(cls):
        if f.name not in item or f.default is MISSING or f.default is None:
            continue
        value, expected = item[f.name], type(f.default)
        if expected in (int, bool, str) and not (type(value) is expected or (expected is int and _whole(value))):
            raise TopologyError(f"{where}.{f.name} must be {_TYPE_NAMES[expected]}, not {value!r}")


def _whole(value: Any) -> bool:
    return isinstance(value, float) and value.is_integer()


_TYPE_NAMES = {int: "a whole number", bool: "true or false", str: "a string"}


def _required(cls: type, name: str) -> bool:
    return any(f.name == name and f.default is MISSING and f.default_factory is MISSING for f in fields(cls))


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TopologyError(f"{where} must be a mapping, not {type(value).__name__}")
    return dict(value)


def _check_keys(item: dict[str, Any], known: list[str], where: str) -> None:
    unknown = sorted(set(item) - set(known))
    if unknown:
        raise TopologyError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(known)})")
