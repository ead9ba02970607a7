"""Opt-in familiar component names: ``graph.sns_producer`` for ``graph.microbus_sns_producer``, and so on.

microbus registers its microcosm factories under names of its own (``microbus_sns_producer``,
``microbus_sqs_consumer``, …), so that it installs beside microcosm-pubsub, which registers the familiar
names. A service that has no microcosm-pubsub installed may call :func:`use_familiar_names` once, before it
builds its graph, to keep the familiar names at its call sites. With microcosm-pubsub installed it refuses:
two factories under one name resolve unpredictably.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from microcosm.object_graph import ObjectGraph
from microcosm.registry import _registry

from microbus.errors import ConfigurationError

FAMILIAR_NAMES: dict[str, str] = {
    name: f"microbus_{name}"
    for name in (
        "pubsub_message_schema_registry",
        "sqs_message_handler_registry",
        "sns_topic_arns",
        "sns_producer",
        "sqs_consumer",
        "sqs_message_dispatcher",
    )
}
"""Familiar (microcosm-pubsub) component name → microbus's own name, which is also its config section."""


def foreign_registrations() -> dict[str, list[str]]:
    """Distributions other than microbus that register a familiar name as a ``microcosm.factories`` entry point.

    Returns:
        The distribution's name and version → the familiar names it registers (empty when there are none).
    """
    found: dict[str, list[str]] = {}
    for entry_point in entry_points(group="microcosm.factories"):
        dist = entry_point.dist
        owner = dist.metadata["Name"] if dist is not None else "an unknown distribution"
        if entry_point.name in FAMILIAR_NAMES and owner.lower() != "microbus":
            label = f"{owner} {dist.version}" if dist is not None else owner
            found.setdefault(label, []).append(entry_point.name)
    return found


def _alias(familiar: str, own: str) -> Callable[[ObjectGraph], Any]:
    def factory(graph: ObjectGraph) -> Any:
        if graph.config.get(familiar):
            raise ConfigurationError(
                f"Configuration section {familiar!r} is not read by microbus: move its keys to {own!r} "
                f"({familiar} is an alias of {own})"
            )
        return getattr(graph, own)

    factory.__name__ = f"alias_{familiar}"
    return factory


def use_familiar_names() -> None:
    """Bind the familiar names to microbus's components, for every graph of this process (idempotent).

    ``graph.sns_producer`` is then ``graph.microbus_sns_producer``, and likewise for the names in
    :data:`FAMILIAR_NAMES`; configuration stays under the ``microbus_`` sections.

    Raises:
        ConfigurationError: another distribution (microcosm-pubsub) registers one of the familiar names, or one
            is already bound to something else in this process.
    """
    foreign = foreign_registrations()
    if foreign:
        listed = "; ".join(f"{owner} registers {', '.join(sorted(names))}" for owner, names in sorted(foreign.items()))
        raise ConfigurationError(
            f"Cannot use the familiar component names beside microcosm-pubsub ({listed}): "
            "use microbus's own names (graph.microbus_sns_producer, …) in this environment"
        )
    for familiar, own in FAMILIAR_NAMES.items():
        bound = _registry.factories.get(familiar)
        if bound is None:
            _registry.bind(familiar, _alias(familiar, own))
        elif getattr(bound, "__name__", "") != f"alias_{familiar}":
            raise ConfigurationError(
                f"Component {familiar!r} is already bound to {bound!r}; cannot alias it to {own!r}"
            )
