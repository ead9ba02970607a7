"""What every `microbus` command shares: the group (one-sentence errors, exit codes), AWS options, tables."""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import click

from microbus.errors import CodecError, ConfigurationError, MicrobusError
from microbus.wire.transport import AWSSettings

REFERENCE_TOPOLOGY = "microbus.reference.daemons.reference:TOPOLOGY"
TOPOLOGY_HELP = "Topology: a .yaml/.json file or module:ATTRIBUTE."
CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"]}
USAGE_EXIT = 2
"""Exit status of a usage error: a wrong option or argument, input that is not valid, a queue that does not exist."""
FAILURE_EXIT = 1
"""Exit status of a failure that is not the caller's input (an endpoint that cannot be reached …)."""
_INPUT_ERRORS = (ConfigurationError, CodecError)  # a missing queue or topic is a ConfigurationError too


class InputError(click.ClickException):
    """Input that is not valid (bad JSON, a file that cannot be read): exit status 2."""

    exit_code = USAGE_EXIT


class MicrobusGroup(click.Group):
    """A click group whose errors are one sentence on stderr: usage errors exit 2, failures 1.

    A :class:`~microbus.errors.MicrobusError` escaping a command is printed the same way, without a traceback.
    """

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """Run the command line; see :meth:`click.Command.main`."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            returned = super().main(args, prog_name, complete_var, False, **extra)
        except click.UsageError as exc:
            path = exc.ctx.command_path if exc.ctx is not None else "microbus"
            _fail(f"{path}: {_sentence(exc.format_message())} (see {path} -h)", USAGE_EXIT)
        except click.ClickException as exc:
            _fail(f"microbus: {_sentence(exc.format_message())}", exc.exit_code)
        except click.Abort:
            _fail("microbus: aborted", FAILURE_EXIT)
        except MicrobusError as exc:
            _fail(f"microbus: {_sentence(str(exc))}", USAGE_EXIT if isinstance(exc, _INPUT_ERRORS) else FAILURE_EXIT)
        sys.exit(returned if isinstance(returned, int) else 0)


def _sentence(text: str) -> str:
    """``text`` on one line, without a trailing full stop (the caller may add to it)."""
    return re.sub(r"\s+", " ", text).strip().rstrip(".")


def _fail(message: str, status: int) -> NoReturn:
    click.echo(message, err=True)
    sys.exit(status)


def aws_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """``--endpoint-url`` (``AWS_ENDPOINT_URL``) and ``--region`` (``AWS_DEFAULT_REGION``), given to the command
    as ``settings``, as the ``topology`` group takes them."""

    @functools.wraps(function)
    def command(*args: Any, endpoint_url: str | None, region: str, **kwargs: Any) -> Any:
        return function(*args, settings=AWSSettings(endpoint_url=endpoint_url, region_name=region), **kwargs)

    command = click.option("--region", envvar="AWS_DEFAULT_REGION", default="us-east-1", show_default=True)(command)
    return click.option("--endpoint-url", envvar="AWS_ENDPOINT_URL", help="AWS endpoint (emulators); default: AWS.")(
        command
    )


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """Lines of a text table: columns of numbers right-aligned, the others left-aligned."""
    numeric = [bool(rows) and all(isinstance(row[i], int) for row in rows) for i in range(len(headers))]
    cells = [list(headers)] + [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return [
        "  ".join(cell.rjust(widths[i]) if numeric[i] else cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip()
        for row in cells
    ]


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    """Click callback: seconds of a duration given as seconds or a number with s, m, h or d (``90``, ``10m``)."""
    if value is None:
        return None
    match = _DURATION.match(value)
    if match is None:
        raise click.BadParameter(f"{value!r} is not a duration (e.g. 90, 90s, 10m, 2h, 1d)", ctx, param)
    return float(match.group(1)) * _UNIT_S[match.group(2)]


def age_text(seconds: float | None) -> str:
    """``3s``, ``5m``, ``2h``, ``3d`` (``-`` for unknown)."""
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"
