"""ConsumerDaemon: a named daemon that builds its object graph and runs a :class:`Worker`."""

from __future__ import annotations

import logging
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import click
from microcosm.api import create_object_graph, load_each, load_from_dict, load_from_environ
from microcosm.object_graph import ObjectGraph

from microbus.consume.breaker import circuit_breaker_from_config
from microbus.consume.consumer import QueueInfo, SQSConsumer, live_queue_warnings
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
    dispatcher_component: ClassVar[str] = "sqs_message_dispatcher"
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
            "sqs_message_handler_registry": {"media_types": media_types},
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
        if not graph.config.sqs_consumer.sqs_queue_url:
            self._use_declared_queue(graph)
        graph.use("sqs_consumer", self.dispatcher_component)
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
        graph.config.sqs_consumer.sqs_queue_url = url

    def check_queue(self) -> list[str]:
        """Check the live queue against the handler timeout and the topology; log and return warnings.

        Raises:
            QueueNotFoundError: the queue does not exist (one sentence that says what to do).
        """
        consumer = cast(SQSConsumer, self.graph.sqs_consumer)
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
            consumer=self.graph.sqs_consumer,
            dispatcher=dispatcher,
            concurrency=concurrency,
            prefetch=prefetch if prefetch is not None else (int(configured) if configured is not None else None),
            grace_period_s=grace_period_s,
            heartbeat_fraction=heartbeat_fraction,
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
        circuit_breaker: bool | None = None,
    ) -> None:
        """Run this daemon and its :attr:`companions` until SIGTERM/SIGINT, then shut them all down gracefully.

        Each queue gets its own worker; one signal stops them all, and each gets the same grace period.
        ``circuit_breaker`` True gives each worker its own circuit breaker (see :meth:`create_worker`).
        """
        companions = [
            cls(debug=self.debug, testing=self.testing, **self._companion_overrides()) for cls in self.companions
        ]
        options: dict[str, Any] = {
            "concurrency": concurrency,
            "grace_period_s": grace_period_s,
            "heartbeat_fraction": heartbeat_fraction,
            "circuit_breaker": circuit_breaker,
        }
        workers = [self.create_worker(prefetch=prefetch, **options)]
        for companion in companions:
            try:
                worker = companion.create_worker(**options)
            except ConfigurationError as exc:
                variable = f"{companion.name.upper().replace('-', '_')}__SQS_CONSUMER__SQS_QUEUE_URL"
                raise ConfigurationError(
                    f"{companion.name}: companion of {self.name}: {exc}. A companion does not take --sqs-queue-url: "
                    f"set {variable} or declare its queue in its topology."
                ) from exc
            workers.append(worker)
        install_signal_handlers(workers)
        for daemon, worker in zip([self, *companions], workers, strict=True):
            logger.info(
                "%s consuming %s with concurrency %d", daemon.name, worker.consumer.queue_url, worker.concurrency
            )
            worker.start()
        while not all(worker.stopping for worker in workers):  # a fatal error in one stops them all
            if any(worker.fatal_error is not None for worker in workers):
                for worker in workers:
                    worker.stop()
            time.sleep(0.2)
        for daemon, worker in zip([self, *companions], workers, strict=True):
            worker.join()
            logger.info("%s stopped: %s", daemon.name, worker.stats.outcomes)
        fatal = next((worker.fatal_error for worker in workers if worker.fatal_error is not None), None)
        if fatal is not None:
            raise fatal

    def _companion_overrides(self) -> dict[str, Any]:
        """The command line's settings that apply to companions too: the endpoint and the long-poll wait."""
        overrides: dict[str, Any] = {}
        if "aws" in self.overrides:
            overrides["aws"] = {k: v for k, v in self.overrides["aws"].items() if k != "max_pool_connections"}
        wait = self.overrides.get("sqs_consumer", {}).get("wait_seconds")
        if wait is not None:
            overrides["sqs_consumer"] = {"wait_seconds": wait}
        return overrides


def daemon_overrides(sqs_queue_url: str | None, endpoint_url: str | None, wait_seconds: int | None) -> dict[str, Any]:
    """Command-line options as graph config overrides."""
    overrides: dict[str, Any] = {}
    if sqs_queue_url:
        overrides["sqs_consumer"] = {"sqs_queue_url": sqs_queue_url}
    if wait_seconds is not None:
        overrides.setdefault("sqs_consumer", {})["wait_seconds"] = wait_seconds
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
        click.option("--testing", is_flag=True, help="Testing mode of the object graph."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def run_daemon(cls: type[ConsumerDaemon], **options: Any) -> None:
    """Configure logging, build the daemon from command-line options and run it; clear errors, no tracebacks."""
    logging.basicConfig(
        level=logging.DEBUG if options["debug"] else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if options["debug"]:
        for noisy in ("botocore", "boto3", "urllib3"):
            logging.getLogger(noisy).setLevel(logging.INFO)
    logging.getLogger("botocore.credentials").setLevel(logging.WARNING)  # not "Found credentials in …" first
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
