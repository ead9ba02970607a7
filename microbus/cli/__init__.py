"""The ``microbus`` command: run a daemon class, the embedded emulator, the demo; topology; produce, stats, peek,
dead letters."""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from microbus.cli.common import CONTEXT_SETTINGS, REFERENCE_TOPOLOGY, TOPOLOGY_HELP, MicrobusGroup
from microbus.cli.dashboard import dashboard
from microbus.cli.dlq import dlq
from microbus.cli.emulator import emulator
from microbus.cli.outbox import outbox
from microbus.cli.produce import produce
from microbus.cli.queues import peek, stats
from microbus.consume.daemon import ConsumerDaemon, daemon_options, run_daemon
from microbus.errors import MicrobusError
from microbus.topology import apply_topology, describe_topology, plan_topology, resolve_topology
from microbus.topology.describe import describe_lines
from microbus.topology.policy import ArnBuilder, iam_policies
from microbus.wire.transport import AWSSettings, translate_errors

T = TypeVar("T")


@click.group(cls=MicrobusGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(package_name="microbus", prog_name="microbus")
def main() -> None:
    """microbus: media-typed SNS/SQS publish/subscribe."""
    _import_from_the_current_directory()


def _import_from_the_current_directory() -> None:
    """Put the current directory first on the module path, as ``python -m`` does (a console script has its
    own directory there instead), so ``microbus run myorders:OrdersDaemon`` finds ``./myorders.py``."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


for _command in (emulator, produce, stats, peek, dlq, outbox, dashboard):
    main.add_command(_command)


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
    from microbus.reference.daemons.demo import run_demo

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


def _run(action: Callable[[], T]) -> T:
    """Run ``action``; a MicrobusError becomes one line on stderr and exit status 2."""
    try:
        return action()
    except MicrobusError as exc:
        click.echo(f"microbus: {exc}", err=True)
        sys.exit(2)


@main.group()
@click.option("--topology", "reference", default=REFERENCE_TOPOLOGY, show_default=True, help=TOPOLOGY_HELP)
@click.option("--endpoint-url", envvar="AWS_ENDPOINT_URL", help="AWS endpoint (emulators); default: AWS.")
@click.option("--region", envvar="AWS_DEFAULT_REGION", default="us-east-1", show_default=True)
@click.pass_context
def topology(ctx: click.Context, reference: str, endpoint_url: str | None, region: str) -> None:
    """Plan, apply, describe a topology, and print the IAM policies its daemons and producers need."""
    ctx.obj = {"reference": reference, "settings": AWSSettings(endpoint_url=endpoint_url, region_name=region)}


def _clients(ctx: click.Context) -> dict[str, Any]:
    settings: AWSSettings = ctx.obj["settings"]
    return {service: settings.client(service) for service in ("sns", "sqs", "dynamodb")}


@topology.command()
@click.option("--verbose", is_flag=True, help="List unchanged resources too.")
@click.option("--detailed-exitcode", is_flag=True, help="Exit 3 when there are changes.")
@click.pass_context
def plan(ctx: click.Context, verbose: bool, detailed_exitcode: bool) -> None:
    """Show what apply would change, as a diff (+ create, ~ update), without changing anything."""
    result = _run(lambda: plan_topology(resolve_topology(ctx.obj["reference"]), **_clients(ctx)))
    for line in result.lines(verbose=verbose):
        click.echo(line)
    click.echo(f"Plan: {result.summary()}." if result.has_changes else "No changes: live resources match.")
    sys.exit(3 if detailed_exitcode and result.has_changes else 0)


@topology.command()
@click.option("--verbose", is_flag=True, help="List unchanged resources too.")
@click.pass_context
def apply(ctx: click.Context, verbose: bool) -> None:
    """Create what is missing and update what differs (never deletes); a second apply changes nothing."""
    applied = _run(lambda: apply_topology(resolve_topology(ctx.obj["reference"]), **_clients(ctx)))
    for line in applied.plan.lines(verbose=verbose):
        click.echo(line)
    if applied.plan.has_changes:
        click.echo(f"Applied: {applied.plan.summary()}.")
    else:
        click.echo(f"Nothing to change: {len(applied.plan.changes)} resources already match the topology.")


@topology.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def describe(ctx: click.Context, as_json: bool) -> None:
    """Show what exists of the topology's resources (MISSING where absent)."""
    description = _run(lambda: describe_topology(resolve_topology(ctx.obj["reference"]), **_clients(ctx)))
    click.echo(json.dumps(description, indent=2) if as_json else "\n".join(describe_lines(description)))


@topology.command()
@click.argument("name", required=False)
@click.option("--account-id", help="Account of the ARNs; default: asked of STS, else *.")
@click.option("--partition", default="aws", show_default=True)
@click.pass_context
def policy(ctx: click.Context, name: str | None, account_id: str | None, partition: str) -> None:
    """Print the least-privilege IAM policy of daemon/producer NAME (default: all of them, by name) as JSON."""
    settings: AWSSettings = ctx.obj["settings"]
    topology_ = _run(lambda: resolve_topology(ctx.obj["reference"]))
    arns = ArnBuilder(account_id=account_id or _account_id(settings), region=settings.region_name, partition=partition)
    documents = _run(lambda: iam_policies(topology_, arns=arns))
    if name is not None and name not in documents:
        _run(lambda: topology_.principal(name))
    click.echo(json.dumps(documents[name] if name else documents, indent=2))


def _account_id(settings: AWSSettings) -> str:
    try:
        with translate_errors("STS GetCallerIdentity"):
            return str(settings.client("sts").get_caller_identity()["Account"])
    except MicrobusError as exc:
        click.echo(f"microbus: account id unknown ({exc}); using * (pass --account-id)", err=True)
        return "*"
