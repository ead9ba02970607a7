"""What the daemon command line gets from the operations layer: log formats, metrics, health, tracing.

:class:`DaemonOperations` implements :class:`microbus.consume.daemon.Operations`; the package root registers
it (the core never imports this layer).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from microbus.ops.logs import configure_logging
from microbus.ops.metrics import Metrics, metrics_available
from microbus.ops.server import DEFAULT_RECEIVE_BOUND_S, Health, OpsServer

if TYPE_CHECKING:
    from microbus.consume.worker import Worker

logger = logging.getLogger(__name__)


class DaemonOperations:
    """Logging, and the metrics and health endpoint of one daemon process (its companions included).

    Parameters:
        metrics_port: serve ``/metrics``, ``/health`` and ``/ready`` on this port (0: any free port); None: no
            endpoint and no metrics.
        metrics_host: the address to bind (loopback by default).
        receive_bound_s: ``/health`` fails when a poller has not completed a receive for this long.
    """

    def __init__(
        self,
        *,
        metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1",
        receive_bound_s: float = DEFAULT_RECEIVE_BOUND_S,
    ) -> None:
        self.metrics_port = metrics_port
        self.metrics_host = metrics_host
        self.receive_bound_s = receive_bound_s
        self.metrics: Metrics | None = None
        self.health: Health | None = None
        self.server: OpsServer | None = None

    def configure_logging(self, *, debug: bool, log_format: str) -> None:
        """The root logger's handler and levels (see :func:`microbus.ops.logs.configure_logging`)."""
        configure_logging(debug=debug, log_format=log_format)

    def attach(self, workers: Sequence[Worker]) -> None:
        """Observe the workers (metrics) and serve the endpoint, before they start.

        Raises:
            ConfigurationError: the endpoint's address cannot be bound.
        """
        if self.metrics_port is None:
            return
        if metrics_available():
            self.metrics = Metrics()
            for worker in workers:
                media_types = worker.dispatcher.handler_registry.media_types
                worker.observers.add(
                    self.metrics.observer(daemon=worker.name, queue=worker.queue_name, media_types=media_types)
                )
        else:
            logger.warning("prometheus-client is not installed: /metrics is off (pip install 'microbus[metrics]')")
        self.health = Health(workers, receive_bound_s=self.receive_bound_s)
        self.server = OpsServer(
            health=self.health, metrics=self.metrics, host=self.metrics_host, port=self.metrics_port
        )
        self.server.start()
        logger.info("Serving /metrics, /health and /ready on %s", self.server.url)

    def started(self) -> None:
        """Every worker started: ``/ready`` answers 200."""
        if self.health is not None:
            self.health.started = True

    def close(self) -> None:
        """Stop serving."""
        if self.server is not None:
            self.server.close()
