"""ConsumerDaemon: a named daemon that builds its object graph and runs a :class:`Worker`."""

from __future__ import annotations

import logging
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, cast

import click
from microcosm.api import create_object_graph, load_each, load_from_dict, load_from_environ
from microcosm.object_graph import ObjectGraph

from microbus.consume.breaker import circuit_breaker_from_config
from microbus.consume.consumer import QueueInfo, SQSConsumer, live_queue_warnings
from microbus.consume.dispatch import RECORD_FIELDS
from microbus.consume.worker import Worker, install_signal_handlers, transport_backoff_s
from microbus.errors import ConfigurationError, EndpointUnreachableError, MicrobusError, TransientTransportError
from microbus.wire.codecs import PubSubMessageSchema
from microbus.wire.schemas import media_type_of
from microbus.wire.transport import translate_errors

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class QueueDeclaration:
    """What a topology declares for one daemon: its queue's name, its handler timeout, and a check of the
    live queue against the declaration (``drift(info, queue_url)`` returns warnings)."""

    queue_name: str
    handler_timeout_s: float | None
    drift: Callable[[QueueInfo, str], list[str]]


QueueDeclarations = Callable[[str], QueueDeclaration | None]
"""Daemon name → its declaration, or None; the graph's ``queue_declarations`` (the topology layer provides it)."""


class Operations(Protocol):
    """What a daemon process gets from the operations layer (:class:`microbus.ops.daemon.DaemonOperations`):
    log formats, metrics and the health endpoint. The core never imports that layer; the package root
    registers it with :func:`register_operations`."""

    def configure_logging(self, *, debug: bool, log_format: str) -> None:
        """Configure the process's logging."""

    def attach(self, workers: Sequence[Worker]) -> None:
        """Observe the workers and serve the endpoint, before they start."""

    def started(self) -> None:
        """Every worker started."""

    def close(self) -> None:
        """The daemon stopped."""


OperationsFactory = Callable[..., Operations]
_operations: list[OperationsFactory] = []

DEFAULT_STATS_INTERVAL_S = 60.0


def register_operations(factory: OperationsFactory) -> None:
    """Register the operations layer: ``factory(metrics_port=, metrics_host=, receive_bound_s=)``."""
    _operations[:] = [factory]


def stats_line(worker: Worker) -> str:
    """A worker's counters, and what it holds, for the periodic stats line."""
    stats = worker.stats
    down = ",".join(sorted(worker.activities_down)) or "-"
    return (
        f"{worker.name} stats queue={worker.queue_name} received={stats.received} handled={stats.handled} "
        f"failed={stats.failed} dead_lettered={stats.dead_lettered} released={stats.released} "
        f"settle_failed={stats.settle_failed} in_flight={stats.in_flight} down={down}"
    )


def log_stats(worker: Worker) -> None:
    """Log :func:`stats_line` at INFO, with the same figures as fields for structured formatters."""
    stats = worker.stats
    fields = {
        "daemon": worker.name,
        "queue": worker.queue_name,
        "stats": {
            "received": stats.received,
            "handled": stats.handled,
            "failed": stats.failed,
            "dead_lettered": stats.dead_lettered,
            "released": stats.released,
            "settle_failed": stats.settle_failed,
            "in_flight": stats.in_flight,
            "outcomes": dict(stats.outcomes),
            "activities_down": sorted(worker.activities_down),
        },
    }
    logger.info("%s", stats_line(worker), extra={RECORD_FIELDS: fields})


class ConsumerDaemon:
    """Base class of consumer daemons; subclasses set ``name`` and import their handlers.

    ``media_types`` restricts the daemon to some ``@handles`` registrations (None: all of them);
    ``dispatcher_component`` names the graph component that dispatches its messages.
    ``handler_timeout_s`` is the longest a handler may take (the queue's visibility timeout should not be
    shorter); ``topology`` (a Topology, a file or ``module:ATTRIBUTE``) declares the daemon's queue, which
    it consumes when no queue URL is configured.
    Configuration comes from ``defaults``, then the environment (microcosm's ``NAME__SECTION__KEY``),
    then the keyword overrides given to the constructor (the command line).
    """

    name: ClassVar[str] = ""
    media_types: ClassVar[Sequence[str | type[PubSubMessageSchema]] | None] = None
    dispatcher_component: ClassVar[str] = "microbus_sqs_message_dispatcher"
    handler_timeout_s: ClassVar[float | None] = None
    topology: ClassVar[Any] = None
    companions: ClassVar[Sequence[type[ConsumerDaemon]]] = ()
    """Daemons run in the same process, on their own queues (e.g. this daemon's callback daemon)."""
    """A :class:`~microbus.topology.Topology`, a file or ``module:ATTRIBUTE``; ``graph.queue_declarations`` reads it."""

    def __init__(self, *, debug: bool = False, testing: bool = False, **overrides: Any) -> None:
        if not self.name:
            raise MicrobusError(f"{type(self).__qualname__} must set a name")
        self.debug = debug
        self.testing = testing
        self.overrides = overrides
        self._graph: ObjectGraph | None = None

    @property
    def defaults(self) -> dict[str, Any]:
        """Configuration defaults of this daemon (override to add your own)."""
        media_types = None if self.media_types is None else [media_type_of(m) for m in self.media_types]
        return {
            "microbus_sqs_message_handler_registry": {"media_types": media_types},
            "queue_declarations": {"topology": self.topology},
            "worker": {
                "prefetch": None,
                "circuit_breaker": {"enabled": False, "threshold": 0.5, "window": 20, "cooldown_s": 30.0},
            },
        }

    @property
    def graph(self) -> ObjectGraph:
        """The daemon's object graph, created on first use."""
        if self._graph is None:
            self._graph = self.create_object_graph()
        return self._graph

    def create_object_graph(self) -> ObjectGraph:
        """Create the graph from defaults, environment and overrides."""
        loader = load_each(load_from_dict(self.defaults), load_from_environ, load_from_dict(self.overrides))
        graph = create_object_graph(self.name, debug=self.debug, testing=self.testing, loader=loader)
        if not graph.config.microbus_sqs_consumer.sqs_queue_url:
            self._use_declared_queue(graph)
        graph.use("microbus_sqs_consumer", self.dispatcher_component)
        return graph

    def _use_declared_queue(self, graph: ObjectGraph) -> None:
        """Without a configured queue URL, consume the queue the topology declares for this daemon.

        While the endpoint is unreachable, wait for it (as the worker does), logging once.
        """
        declared = self._declaration(graph)
        if declared is None:
            return
        failures = 0
        while True:
            try:
                with translate_errors(f"SQS queue {declared.queue_name}"):
                    url = graph.sqs_client.get_queue_url(QueueName=declared.queue_name)["QueueUrl"]
                break
            except (EndpointUnreachableError, TransientTransportError) as exc:
                if failures == 0:
                    logger.warning("Queue unreachable at start, waiting for it: %s", exc)
                failures += 1
                time.sleep(transport_backoff_s(failures, max_s=20.0))
        graph.config.microbus_sqs_consumer.sqs_queue_url = url

    def check_queue(self) -> list[str]:
        """Check the live queue against the handler timeout and the topology; log and return warnings.

        Raises:
            QueueNotFoundError: the queue does not exist (one sentence that says what to do).
        """
        consumer = cast(SQSConsumer, self.graph.microbus_sqs_consumer)
        info = consumer.queue_info()
        declared = self._declaration(self.graph)
        handler_timeout_s = self.handler_timeout_s
        if handler_timeout_s is None and declared is not None:
            handler_timeout_s = declared.handler_timeout_s
        warnings = live_queue_warnings(info, queue_url=consumer.queue_url, handler_timeout_s=handler_timeout_s)
        if declared is not None:
            warnings += declared.drift(info, consumer.queue_url)
        for warning in warnings:
            logger.warning("%s", warning)
        return warnings

    def _declaration(self, graph: ObjectGraph) -> QueueDeclaration | None:
        """The topology's declaration for this daemon (None without a topology, or when it declares none)."""
        if self.topology is None:
            return None
        declarations: QueueDeclarations = graph.queue_declarations
        return declarations(self.name)

    def create_worker(
        self,
        *,
        concurrency: int = 1,
        grace_period_s: float = 30.0,
        heartbeat_fraction: float = 0.5,
        prefetch: int | None = None,
        log_bodies: bool = False,
        circuit_breaker: bool | None = None,
    ) -> Worker:
        """Check the queue (:meth:`check_queue`) and build the worker that runs it.

        The SQS client's connection pool is sized to the worker (unless the graph was already built). An
        unreachable endpoint is not an error here: the worker waits for it when it starts. ``prefetch`` None
        takes ``worker.prefetch`` from the configuration, else the worker's default. ``circuit_breaker`` True
        turns the breaker on with the ``worker.circuit_breaker`` settings; None leaves it to their ``enabled``.

        With idempotent handlers, the idempotency guard's lease must cover the handler timeout, and its store
        must allow the guard's calls (probed without writing; deferred, like the queue check, while unreachable).

        Raises:
            QueueNotFoundError: the queue does not exist.
            ConfigurationError: the idempotency lease is shorter than the handler timeout, or the idempotency
                store refuses the guard's calls (AccessDeniedError) or does not exist; or the circuit breaker's
                settings are invalid.
        """
        if self._graph is None:
            aws = self.overrides.setdefault("aws", {})
            aws.setdefault("max_pool_connections", Worker.connections_for(concurrency) + 4)
        dispatcher = getattr(self.graph, self.dispatcher_component)
        guards = self._idempotency_guards(dispatcher)
        for guard in guards:
            guard.check_handler_timeout(self._handler_timeout_s(), daemon=self.name)
        try:
            self.check_queue()
        except (EndpointUnreachableError, TransientTransportError) as exc:
            logger.debug("Queue check deferred until the queue is reachable: %s", exc)
        for guard in guards:
            try:
                guard.check_store()
            except (EndpointUnreachableError, TransientTransportError) as exc:
                logger.debug("Idempotency store check deferred: %s", exc)
        worker_config = self.graph.config.worker if "worker" in self.graph.config else {}
        configured = worker_config.get("prefetch")
        breaker = circuit_breaker_from_config(worker_config.get("circuit_breaker"), enabled=circuit_breaker)
        return Worker(
            consumer=self.graph.microbus_sqs_consumer,
            dispatcher=dispatcher,
            concurrency=concurrency,
            prefetch=prefetch if prefetch is not None else (int(configured) if configured is not None else None),
            grace_period_s=grace_period_s,
            heartbeat_fraction=heartbeat_fraction,
            log_bodies=log_bodies,
            circuit_breaker=breaker,
        )

    def _handler_timeout_s(self) -> float | None:
        """The daemon's handler timeout: its own, else its topology's declaration (None: not declared)."""
        if self.handler_timeout_s is not None:
            return self.handler_timeout_s
        declared = self._declaration(self.graph)
        return declared.handler_timeout_s if declared is not None else None

    @staticmethod
    def _idempotency_guards(dispatcher: Any) -> list[Any]:
        """The dispatcher's idempotency guards (patterns layer, so found by their marker), when handlers use one."""
        registry = getattr(dispatcher, "handler_registry", None)
        if registry is None or not registry.idempotent:
            return []
        return [
            m
            for m in getattr(dispatcher, "middleware", ())
            if m.guards_idempotent_handlers and hasattr(m, "check_handler_timeout") and hasattr(m, "check_store")
        ]

    @classmethod
    def main(cls) -> None:
        """Console entry point: parse the command line and run."""
        daemon_command(cls)()

    def run(
        self,
        *,
        concurrency: int = 1,
        grace_period_s: float = 30.0,
        heartbeat_fraction: float = 0.5,
        prefetch: int | None = None,
        stats_interval_s: float = DEFAULT_STATS_INTERVAL_S,
        operations: Operations | None = None,
        log_bodies: bool = False,
        circuit_breaker: bool | None = None,
    ) -> None:
        """Run this daemon and its :attr:`companions` until SIGTERM/SIGINT, then shut them all down gracefully.

        Each queue gets its own worker; one signal stops them all, and each gets the same grace period. Every
        ``stats_interval_s`` (0: never) each worker's counters are logged in one line; ``operations`` observes
        the workers and serves their metrics and health while they run. ``log_bodies`` adds each message's
        body (bounded) to its outcome line. ``circuit_breaker`` True gives each worker its own circuit breaker
        (see :meth:`create_worker`).
        """
        companions = [
            cls(debug=self.debug, testing=self.testing, **self._companion_overrides()) for cls in self.companions
        ]
        options: dict[str, Any] = {
            "concurrency": concurrency,
            "grace_period_s": grace_period_s,
            "heartbeat_fraction": heartbeat_fraction,
            "log_bodies": log_bodies,
            "circuit_breaker": circuit_breaker,
        }
        workers = [self.create_worker(prefetch=prefetch, **options)]
        for companion in companions:
            try:
                worker = companion.create_worker(**options)
            except ConfigurationError as exc:
                variable = f"{companion.name.upper().replace('-', '_')}__MICROBUS_SQS_CONSUMER__SQS_QUEUE_URL"
                raise ConfigurationError(
                    f"{companion.name}: companion of {self.name}: {exc}. A companion does not take --sqs-queue-url: "
                    f"set {variable} or declare its queue in its topology."
                ) from exc
            workers.append(worker)
        install_signal_handlers(workers)
        if operations is not None:
            operations.attach(workers)
        try:
            self._run_workers([self, *companions], workers, stats_interval_s, operations)
        finally:
            if operations is not None:
                operations.close()
        fatal = next((worker.fatal_error for worker in workers if worker.fatal_error is not None), None)
        if fatal is not None:
            raise fatal

    @staticmethod
    def _run_workers(
        daemons: list[ConsumerDaemon], workers: list[Worker], stats_interval_s: float, operations: Operations | None
    ) -> None:
        for daemon, worker in zip(daemons, workers, strict=True):
            logger.info(
                "%s consuming %s with concurrency %d", daemon.name, worker.consumer.queue_url, worker.concurrency
            )
            worker.start()
        if operations is not None:
            operations.started()
        next_stats = time.monotonic() + stats_interval_s
        while not all(worker.stopping for worker in workers):  # a fatal error in one stops them all
            if any(worker.fatal_error is not None for worker in workers):
                for worker in workers:
                    worker.stop()
            if stats_interval_s > 0 and time.monotonic() >= next_stats:
                next_stats = time.monotonic() + stats_interval_s
                for worker in workers:
                    log_stats(worker)
            time.sleep(min(0.2, max(0.05, stats_interval_s)) if stats_interval_s > 0 else 0.2)
        for daemon, worker in zip(daemons, workers, strict=True):
            worker.join()
            logger.info("%s stopped: %s", daemon.name, worker.stats.outcomes)

    def _companion_overrides(self) -> dict[str, Any]:
        """The command line's settings that apply to companions too: the endpoint and the long-poll wait."""
        overrides: dict[str, Any] = {}
        if "aws" in self.overrides:
            overrides["aws"] = {k: v for k, v in self.overrides["aws"].items() if k != "max_pool_connections"}
        wait = self.overrides.get("microbus_sqs_consumer", {}).get("wait_seconds")
        if wait is not None:
            overrides["microbus_sqs_consumer"] = {"wait_seconds": wait}
        return overrides


def daemon_overrides(sqs_queue_url: str | None, endpoint_url: str | None, wait_seconds: int | None) -> dict[str, Any]:
    """Command-line options as graph config overrides."""
    overrides: dict[str, Any] = {}
    if sqs_queue_url:
        overrides["microbus_sqs_consumer"] = {"sqs_queue_url": sqs_queue_url}
    if wait_seconds is not None:
        overrides.setdefault("microbus_sqs_consumer", {})["wait_seconds"] = wait_seconds
    if endpoint_url:
        overrides["aws"] = {"endpoint_url": endpoint_url}
    return overrides


def daemon_options(function: Any) -> Any:
    """The options every daemon command takes."""
    options = [
        click.option("--sqs-queue-url", envvar="MICROBUS_SQS_QUEUE_URL", help="Queue to consume."),
        click.option("--endpoint-url", envvar="AWS_ENDPOINT_URL", help="AWS endpoint (emulators)."),
        click.option("--concurrency", type=click.IntRange(1, 256), default=1, show_default=True),
        click.option("--wait-seconds", type=click.IntRange(0, 20), default=None, help="Long-poll wait."),
        click.option(
            "--prefetch",
            type=click.IntRange(0, 10_000),
            default=None,
            help="Messages held beyond the running ones (default: worker.prefetch, else 20 per receiver).",
        ),
        click.option("--grace-period", type=float, default=30.0, show_default=True, help="Seconds to finish."),
        click.option(
            "--heartbeat-fraction",
            type=click.FloatRange(0.0, 1.0, max_open=True),
            default=0.5,
            show_default=True,
            help="Extend a running message's visibility after this fraction of the timeout (0: never).",
        ),
        click.option(
            "--circuit-breaker",
            is_flag=True,
            default=None,
            help="Stop receiving while most handlers fail, then try one message (settings: worker.circuit_breaker).",
        ),
        click.option("--debug", is_flag=True, help="Debug logging."),
        click.option(
            "--log-format",
            type=click.Choice(["human", "json"]),
            default="human",
            envvar="MICROBUS_LOG_FORMAT",
            show_default=True,
            help="Log lines for people, or one JSON object per line.",
        ),
        click.option(
            "--log-bodies", is_flag=True, help="Add each message's body (bounded) to its outcome line: may hold data."
        ),
        click.option(
            "--stats-interval",
            type=click.FloatRange(0.0),
            default=DEFAULT_STATS_INTERVAL_S,
            envvar="MICROBUS_STATS_INTERVAL",
            show_default=True,
            help="Seconds between stats lines (0: none).",
        ),
        click.option(
            "--metrics-port",
            type=click.IntRange(0, 65535),
            default=None,
            envvar="MICROBUS_METRICS_PORT",
            help="Serve /metrics, /health and /ready on this port (0: any free port).",
        ),
        click.option(
            "--metrics-host",
            default="127.0.0.1",
            envvar="MICROBUS_METRICS_HOST",
            show_default=True,
            help="Address of the metrics port.",
        ),
        click.option(
            "--health-receive-bound",
            type=click.FloatRange(1.0),
            default=60.0,
            envvar="MICROBUS_HEALTH_RECEIVE_BOUND",
            show_default=True,
            help="/health fails when no receive completed for this many seconds.",
        ),
        click.option("--testing", is_flag=True, help="Testing mode of the object graph."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def run_daemon(cls: type[ConsumerDaemon], **options: Any) -> None:
    """Configure logging, build the daemon from command-line options and run it; clear errors, no tracebacks."""
    operations = _operations[0](
        metrics_port=options["metrics_port"],
        metrics_host=options["metrics_host"],
        receive_bound_s=options["health_receive_bound"],
    )
    operations.configure_logging(debug=options["debug"], log_format=options["log_format"])
    overrides = daemon_overrides(options["sqs_queue_url"], options["endpoint_url"], options["wait_seconds"])
    for signum in (signal.SIGTERM, signal.SIGINT):  # until the worker runs, a signal just exits cleanly
        signal.signal(signum, _exit_before_start)
    try:
        daemon = cls(debug=options["debug"], testing=options["testing"], **overrides)
        daemon.run(
            concurrency=options["concurrency"],
            grace_period_s=options["grace_period"],
            heartbeat_fraction=options["heartbeat_fraction"],
            prefetch=options["prefetch"],
            stats_interval_s=options["stats_interval"],
            operations=operations,
            log_bodies=options["log_bodies"],
            circuit_breaker=options.get("circuit_breaker"),
        )
    except MicrobusError as exc:
        click.echo(f"{cls.name}: {exc}", err=True)
        sys.exit(2)


def _exit_before_start(signum: int, frame: object) -> None:
    raise SystemExit(0)


def daemon_command(cls: type[ConsumerDaemon]) -> click.Command:
    """A click command that runs ``cls``."""

    @click.command(name=cls.name, help=cls.__doc__)
    @daemon_options
    def command(**options: Any) -> None:
        run_daemon(cls, **options)

    return command
