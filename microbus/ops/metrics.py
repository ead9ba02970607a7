"""Prometheus metrics of consumer daemons, kept by a lifecycle observer (``pip install 'microbus[metrics]'``).

Names and labels (the dashboard reads them):

- ``microbus_messages_received_total{daemon,queue}``
- ``microbus_messages_handled_total{daemon,queue,media_type,outcome}``: every finished message, by outcome
- ``microbus_handler_duration_seconds{daemon,queue,media_type}``: histogram of handler run time (not for
  messages no handler ran for: REJECTED, DEFERRED)
- ``microbus_end_to_end_latency_seconds{daemon,queue,media_type}``: histogram, from the publish (the SNS
  envelope's ``Timestamp``, else SQS's ``SentTimestamp``) to the handler's successful end
- ``microbus_messages_in_flight{daemon,queue}``: received and not yet settled (waiting, running or settling)
- ``microbus_messages_waiting{daemon,queue}``: received, handler not started yet
- ``microbus_settle_failures_total{daemon,queue}``
- ``microbus_messages_resent_total{daemon,queue}``: deferred messages re-sent as fresh copies (``deliver_at``)
- ``microbus_activity_restarts_total{daemon,queue,activity}``: a background activity went down (and is restarted)
- ``microbus_circuit_open{daemon,queue}``: 1 while the circuit breaker holds receiving back (open or half-open)
- ``microbus_circuit_opened_total{daemon,queue}``: times the circuit breaker opened

``media_type`` is one the daemon handles, else ``unknown`` (media types come from the wire: bounded labels).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from microbus.consume.dispatch import Outcome
from microbus.consume.lifecycle import EventKind, LifecycleEvent
from microbus.errors import ConfigurationError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

UNKNOWN = "unknown"
_HANDLER_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
_LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
_COMPLETED = (Outcome.SUCCEEDED, Outcome.SKIPPED, Outcome.IGNORED)
_NO_HANDLER_RUN = (Outcome.REJECTED, Outcome.DEFERRED)
_ENDED = (EventKind.SETTLED, EventKind.RELEASED, EventKind.DEAD_LETTERED, EventKind.RESENT, EventKind.SETTLE_FAILED)


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError as exc:
        raise ConfigurationError(
            "Metrics need prometheus-client: pip install 'microbus[metrics]' (or start without --metrics-port)"
        ) from exc
    return prometheus_client


def metrics_available() -> bool:
    """True when prometheus-client is installed."""
    try:
        _prometheus()
    except ConfigurationError:
        return False
    return True


class Metrics:
    """The metric families of one process, in one registry (companion daemons share it, told apart by label).

    Raises:
        ConfigurationError: prometheus-client is not installed.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        prometheus = _prometheus()
        self.registry = registry if registry is not None else prometheus.CollectorRegistry()
        queue = ("daemon", "queue")
        typed = (*queue, "media_type")
        self.received = prometheus.Counter(
            "microbus_messages_received", "Messages received.", queue, registry=self.registry
        )
        self.handled = prometheus.Counter(
            "microbus_messages_handled", "Messages finished, by outcome.", (*typed, "outcome"), registry=self.registry
        )
        self.handler_duration = prometheus.Histogram(
            "microbus_handler_duration_seconds", "Handler run time.", typed, buckets=_HANDLER_BUCKETS,
            registry=self.registry,
        )  # fmt: skip
        self.latency = prometheus.Histogram(
            "microbus_end_to_end_latency_seconds", "From publish to handled.", typed, buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )  # fmt: skip
        self.in_flight = prometheus.Gauge(
            "microbus_messages_in_flight", "Received and not yet settled.", queue, registry=self.registry
        )
        self.waiting = prometheus.Gauge(
            "microbus_messages_waiting", "Received, handler not started.", queue, registry=self.registry
        )
        self.settle_failures = prometheus.Counter(
            "microbus_settle_failures", "Settling given up on (the message reappears).", queue, registry=self.registry
        )
        self.resent = prometheus.Counter(
            "microbus_messages_resent", "Deferred messages re-sent as fresh copies.", queue, registry=self.registry
        )
        self.circuit_open = prometheus.Gauge(
            "microbus_circuit_open", "1 while the circuit breaker holds receiving back.", queue, registry=self.registry
        )
        self.circuit_opened = prometheus.Counter(
            "microbus_circuit_opened", "Times the circuit breaker opened.", queue, registry=self.registry
        )
        self.activity_restarts = prometheus.Counter(
            "microbus_activity_restarts", "Background activities that went down.", (*queue, "activity"),
            registry=self.registry,
        )  # fmt: skip

    def exposition(self) -> tuple[bytes, str]:
        """The Prometheus text exposition of every metric, and its content type."""
        prometheus = _prometheus()
        return prometheus.generate_latest(self.registry), prometheus.CONTENT_TYPE_LATEST

    def observer(self, *, daemon: str, queue: str, media_types: Collection[str]) -> MetricsObserver:
        """A lifecycle observer of one daemon's worker."""
        return MetricsObserver(self, daemon=daemon, queue=queue, media_types=media_types)


class MetricsObserver:
    """Turns one worker's lifecycle events into the :class:`Metrics` of its daemon and queue."""

    def __init__(self, metrics: Metrics, *, daemon: str, queue: str, media_types: Collection[str]) -> None:
        self.metrics = metrics
        self.labels = (daemon, queue)
        self.media_types = frozenset(media_types)
        self._waiting: set[int] = set()
        self._lock = threading.Lock()
        self._received = metrics.received.labels(*self.labels)
        self._in_flight = metrics.in_flight.labels(*self.labels)
        self._waiting_gauge = metrics.waiting.labels(*self.labels)
        self._settle_failures = metrics.settle_failures.labels(*self.labels)
        self._resent = metrics.resent.labels(*self.labels)
        self._circuit_open = metrics.circuit_open.labels(*self.labels)
        self._circuit_opened = metrics.circuit_opened.labels(*self.labels)
        self._in_flight.set(0)
        self._waiting_gauge.set(0)
        self._circuit_open.set(0)

    def media_type_label(self, media_type: str | None) -> str:
        """The media type as a label: one the daemon handles, else ``unknown``."""
        return media_type if media_type in self.media_types and media_type is not None else UNKNOWN

    def on_event(self, event: LifecycleEvent) -> None:
        """Count one transition."""
        key = id(event.message)
        if event.kind is EventKind.RECEIVED:
            self._received.inc()
            self._in_flight.inc()
            self._waited(key, add=True)
        elif event.kind is EventKind.STARTED:
            self._waited(key, add=False)
        elif event.kind is EventKind.FINISHED:
            self._finished(event)
        elif event.kind in _ENDED:
            self._in_flight.dec()
            self._waited(key, add=False)
            if event.kind is EventKind.SETTLE_FAILED:
                self._settle_failures.inc()
            elif event.kind is EventKind.RESENT:
                self._resent.inc()
        elif event.kind is EventKind.ACTIVITY_DOWN:
            self.metrics.activity_restarts.labels(*self.labels, event.activity or UNKNOWN).inc()
        elif event.kind is EventKind.CIRCUIT_OPENED:
            self._circuit_opened.inc()
            self._circuit_open.set(1)
        elif event.kind is EventKind.CIRCUIT_CLOSED:
            self._circuit_open.set(0)

    def _waited(self, key: int, *, add: bool) -> None:
        with self._lock:
            if add:
                self._waiting.add(key)
            elif key in self._waiting:
                self._waiting.discard(key)
            else:
                return
            self._waiting_gauge.set(len(self._waiting))

    def _finished(self, event: LifecycleEvent) -> None:
        outcome = event.outcome
        if outcome is None:
            return
        media_type = self.media_type_label(event.media_type)
        self.metrics.handled.labels(*self.labels, media_type, outcome.label).inc()
        result = event.result
        if result is not None and outcome not in _NO_HANDLER_RUN:
            self.metrics.handler_duration.labels(*self.labels, media_type).observe(result.elapsed_s)
        sent_at = event.message.sent_at if event.message is not None else None
        if outcome in _COMPLETED and sent_at is not None:
            self.metrics.latency.labels(*self.labels, media_type).observe(max(0.0, time.time() - sent_at))
