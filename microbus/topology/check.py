"""A daemon's start-up check of its live queue against its handler timeout and the declared topology (pure)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from microcosm.api import defaults

from microbus.consume.consumer import QueueInfo, live_queue_warnings
from microbus.consume.daemon import QueueDeclaration, QueueDeclarations
from microbus.errors import TopologyError
from microbus.topology.loading import resolve_topology
from microbus.topology.model import Queue, Topology

if TYPE_CHECKING:
    from microcosm.object_graph import ObjectGraph


def queue_warnings(
    info: QueueInfo, *, queue_url: str, handler_timeout_s: float | None = None, declared: Queue | None = None
) -> list[str]:
    """Warnings about a live queue: too short a visibility timeout, no redrive policy, drift from the topology."""
    warnings = live_queue_warnings(info, queue_url=queue_url, handler_timeout_s=handler_timeout_s)
    if declared is None:
        return warnings
    return warnings + drift_warnings(info, queue_url=queue_url, declared=declared)


def drift_warnings(info: QueueInfo, *, queue_url: str, declared: Queue) -> list[str]:
    """Warnings about a live queue that is not the declared one, or differs from its declaration."""
    warnings: list[str] = []
    if queue_url.rstrip("/").rsplit("/", 1)[-1] != declared.name:
        warnings.append(f"Queue {queue_url} is not the queue {declared.name!r} the topology gives this daemon.")
    drift = []
    if info.visibility_timeout_seconds != declared.visibility_timeout_s:
        drift.append(
            f"visibility timeout {info.visibility_timeout_seconds}s (declared {declared.visibility_timeout_s}s)"
        )
    if info.max_receive_count is not None and info.max_receive_count != declared.max_receive_count:
        drift.append(f"maxReceiveCount {info.max_receive_count} (declared {declared.max_receive_count})")
    if drift:
        warnings.append(
            f"Queue {queue_url} differs from the topology: {', '.join(drift)}; run `microbus topology plan`."
        )
    return warnings


def declarations_of(topology: Topology | str) -> QueueDeclarations:
    """The daemons' queue declarations of a topology (a Topology, a file or ``module:ATTRIBUTE``)."""
    resolved = resolve_topology(topology) if isinstance(topology, str) else topology

    def declaration(daemon_name: str) -> QueueDeclaration | None:
        try:
            entry = resolved.daemon(daemon_name)
            queue = resolved.queue(entry.queue)
        except TopologyError:
            return None
        return QueueDeclaration(
            queue_name=queue.name,
            handler_timeout_s=entry.handler_timeout_s,
            drift=lambda info, url: drift_warnings(info, queue_url=url, declared=queue),
        )

    return declaration


@defaults(topology=None)
def configure_queue_declarations(graph: ObjectGraph) -> QueueDeclarations:
    """microcosm factory: ``graph.queue_declarations``, from ``queue_declarations.topology``.

    Raises:
        TopologyError: no topology is configured, or it cannot be loaded.
    """
    topology = graph.config.queue_declarations.topology
    if topology is None:
        raise TopologyError("No topology configured: set queue_declarations.topology")
    return declarations_of(topology)
