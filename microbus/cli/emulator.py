"""`microbus emulator`: the embedded moto server, serving until Ctrl-C or SIGTERM, whatever its stdin and stdout.

It waits on signals, never on the terminal: output to a file or pipe, stdin not a terminal, and a start in the
background (``&``, where reading the terminal would stop the job) all leave it serving.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

import click

from microbus.cli.common import CONTEXT_SETTINGS, REFERENCE_TOPOLOGY, TOPOLOGY_HELP
from microbus.errors import MicrobusError
from microbus.topology import resolve_topology

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@click.command(context_settings=CONTEXT_SETTINGS)
@click.option("--topology", "reference", default=REFERENCE_TOPOLOGY, show_default=True, help=TOPOLOGY_HELP)
@click.option("--no-topology", is_flag=True, help="Start empty: create no topology.")
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True, help="Loopback port (0: free).")
@click.option("--pid-file", type=click.Path(dir_okay=False, path_type=Path), help="Write the process id here.")
@click.option(
    "--endpoint-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the endpoint URL here once ready (scripts wait for it).",
)
def emulator(reference: str, no_topology: bool, port: int, pid_file: Path | None, endpoint_file: Path | None) -> None:
    """Start the embedded moto server on 127.0.0.1, create the topology, print the endpoint, serve until stopped.

    Stops cleanly on Ctrl-C, SIGTERM or SIGHUP (and removes the pid and endpoint files).
    """
    from microbus.testing.emulator import EmbeddedEmulator

    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {signum: signal.signal(signum, request_stop) for signum in _STOP_SIGNALS}
    written: list[Path] = []
    try:
        with EmbeddedEmulator(port=port) as embedded:
            url = str(embedded.endpoint_url)
            _say(url)
            if not no_topology:
                applied = embedded.apply(resolve_topology(reference))
                _say(
                    json.dumps(
                        {"microbus_sns_topic_arns": applied.sns_topic_arns_config(), "queues": applied.queue_urls}
                    )
                )
                click.echo(f"topology {reference}: {applied.plan.summary()}", err=True)
            if pid_file is not None:
                written.append(_write(pid_file, str(os.getpid())))
            if endpoint_file is not None:
                written.append(_write(endpoint_file, url))
            click.echo(f"Serving on {url}; stop with Ctrl-C or SIGTERM (pid {os.getpid()}).", err=True)
            while not stop.wait(0.5):
                if not embedded.running:
                    raise MicrobusError("The embedded moto server exited unexpectedly")
    finally:
        for path in written:
            path.unlink(missing_ok=True)
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _say(line: str) -> None:
    """Print a line on stdout; a reader that went away (``microbus emulator | head -1``) does not stop serving."""
    try:
        click.echo(line)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the exit flush then has nowhere to fail
        os.close(devnull)


def _write(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` at once (a reader never sees half of it)."""
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        partial.write_text(text + "\n")
        partial.replace(path)
    except OSError as exc:
        raise click.FileError(str(path), hint=exc.strerror or str(exc)) from exc
    return path
