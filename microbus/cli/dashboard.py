"""``microbus dashboard``: serve the live dashboard of an endpoint's topics, queues and daemons' metrics."""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading
from types import FrameType

import click

from microbus.cli.common import CONTEXT_SETTINGS, aws_options
from microbus.ops.dashboard import Dashboard, DashboardServer, LiveSource
from microbus.ops.scrape import check_metrics_url
from microbus.wire.transport import AWSSettings


def _metrics_urls(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
    try:
        return tuple(check_metrics_url(value) for value in values)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from exc


@click.command(context_settings={**CONTEXT_SETTINGS, "show_default": True})
@click.option("--host", default="127.0.0.1", help="Address to listen on (anyone who reaches it can peek).")
@click.option("--port", type=click.IntRange(0, 65535), default=8700, help="Port to listen on (0: any free port).")
@aws_options
@click.option("--prefix", help="Show only queues and topics whose names start with this.")
@click.option(
    "--metrics",
    "metrics_urls",
    multiple=True,
    metavar="URL",
    callback=_metrics_urls,
    help="A daemon's Prometheus endpoint (e.g. http://127.0.0.1:9464/metrics); repeatable.",
)
@click.option("--refresh", "refresh_s", type=click.FloatRange(0.5, 3600), default=2.0, help="Seconds between updates.")
def dashboard(
    host: str,
    port: int,
    settings: AWSSettings,
    prefix: str | None,
    metrics_urls: tuple[str, ...],
    refresh_s: float,
) -> None:
    """Serve a live page of topics, subscriptions, queue depths and dead letters, handled counts by media type
    (with --metrics), and a queue's messages on request (peeked, not consumed), until Ctrl-C or SIGTERM."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # short timeouts: a page waiting on a slow endpoint says so instead of hanging
    settings = dataclasses.replace(settings, connect_timeout_s=3.0, read_timeout_s=10.0, max_attempts=2)
    source = LiveSource(
        sqs=settings.client("sqs"),
        sns=settings.client("sns"),
        endpoint=settings.endpoint_url or f"AWS {settings.region_name}",
        prefix=prefix,
    )
    try:
        server = DashboardServer(
            Dashboard(source=source, metrics_urls=metrics_urls, refresh_s=refresh_s), host=host, port=port
        )
    except OSError as exc:
        raise click.UsageError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port"
        ) from exc
    if server.allowed_hosts is None:
        click.echo(f"microbus dashboard: listening on {host}: anyone who can reach it can peek at messages", err=True)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with server.running():
        click.echo(f"microbus dashboard: {server.url} (Ctrl-C to stop)")
        while not stop.wait(1.0):
            pass
    click.echo("microbus dashboard: stopped", err=True)
