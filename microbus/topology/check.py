"""A daemon's start-up check of its live queue against its handler timeout and the declared topology (pure)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from microbus.consumer import QueueInfo
    from microbus.topology.model import Queue


def queue_warnings(
    info: QueueInfo, *, queue_url: str, handler_timeout_s: float | None = None, declared: Queue | None = None
) -> list[str]:
    """Warnings about a live queue: too short a visibility timeout, no redrive policy, drift from the topology."""
    warnings: list[str] = []
    if handler_timeout_s is not None and info.visibility_timeout_seconds < handler_timeout_s:
        warnings.append(
            f"Queue {queue_url} has a visibility timeout of {info.visibility_timeout_seconds}s, shorter than the "
            f"handler timeout of {handler_timeout_s:g}s: a slow message may be handled twice; raise the queue's "
            "visibility_timeout_s and run `microbus topology apply`."
        )
    if info.max_receive_count is None or info.dead_letter_queue_arn is None:
        warnings.append(
            f"Queue {queue_url} has no redrive policy: messages that keep failing are retried until they "
            "expire; give it max_receive_count and run `microbus topology apply`."
        )
    if declared is None:
        return warnings
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
