"""The ``microbus`` command: run a daemon class, start the embedded emulator, run the demo."""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any

import click

from microbus.daemon import ConsumerDaemon, daemon_options, run_daemon
from microbus.errors import MicrobusError


@click.group()
def main() -> None:
    """microbus: media-typed SNS/SQS publish/subscribe."""


@main.command(context_settings={"show_default": True})
@click.argument("target")
@daemon_options
def run(target: str, **options: Any) -> None:
    """Run the ConsumerDaemon class TARGET, given as module:Class."""
    module_name, _, class_name = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise click.BadParameter(f"cannot load {target!r} ({exc}); expected module:Class", param_hint="TARGET") from exc
    if not (isinstance(cls, type) and issubclass(cls, ConsumerDaemon)):
        raise click.BadParameter(f"{target!r} is not a ConsumerDaemon subclass", param_hint="TARGET")
    run_daemon(cls, **options)


@main.command()
def emulator() -> None:
    """Start the embedded moto server, print its endpoint, and serve until Ctrl-C."""
    from microbus.emulator import EmbeddedEmulator

    with EmbeddedEmulator() as embedded:
        click.echo(embedded.endpoint_url)
        try:
            sys.stdin.read() if not sys.stdin.isatty() else click.pause(info="Ctrl-C to stop")
        except KeyboardInterrupt:
            pass


@main.command()
@click.option("--count", type=click.IntRange(2, 100_000), default=300, show_default=True)
@click.option("--concurrency", type=click.IntRange(1, 64), default=4, show_default=True)
@click.option("--timeout", "timeout_s", type=float, default=120.0, show_default=True)
@click.option("--fulfil", type=click.IntRange(0, 1_000), default=5, show_default=True, help="Orders to fan out.")
@click.option("--verbose", is_flag=True, help="Log every message outcome.")
def demo(count: int, concurrency: int, timeout_s: float, fulfil: int, verbose: bool) -> None:
    """The reference application end to end on the embedded emulator; exit 0 only if nothing was lost."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    from daemons.demo import run_demo

    try:
        summary = run_demo(count=count, concurrency=concurrency, timeout_s=timeout_s, fulfil=fulfil)
    except MicrobusError as exc:
        click.echo(f"demo: {exc}", err=True)
        sys.exit(2)
    click.echo("microbus demo: orders, fulfilment and fulfilment-callbacks daemons on the embedded moto server")
    for line in summary.lines():
        click.echo(f"  {line}")
    click.echo("OK: every message was handled and deleted" if summary.ok else "FAILED: messages were lost or left")
    sys.exit(0 if summary.ok else 1)
