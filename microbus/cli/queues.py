"""`microbus stats` and `microbus peek`: queue depths and the messages in a queue, without consuming."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import click

from microbus.cli.common import CONTEXT_SETTINGS, age_text, aws_options, json_option, table
from microbus.errors import EndpointUnreachableError, TransientTransportError
from microbus.ops import inspect
from microbus.ops.inspect import PeekedMessage, QueueStats
from microbus.wire.sanitize import log_text
from microbus.wire.transport import AWSSettings

APPROXIMATE_NOTE = (
    "Counts are SQS's approximate figures (ApproximateNumberOfMessages…); SQS gives no age of the oldest "
    "message (CloudWatch's ApproximateAgeOfOldestMessage does)."
)
_CLEAR = "\x1b[H\x1b[2J"
BODY_LIMIT = 1_048_576
"""Characters of a body printed (SQS's largest message)."""


def stats_lines(rows: Iterable[QueueStats]) -> list[str]:
    """The stats table, and the note on approximate figures."""
    rows = list(rows)
    if not rows:
        return ["No queues."]
    with_age = any(row.oldest_age_s is not None for row in rows)
    headers = ["QUEUE", "VISIBLE", "IN FLIGHT", "DELAYED", "DLQ"] + (["OLDEST"] if with_age else [])
    cells = []
    for row in rows:
        dlq = "missing" if row.dlq_missing else "-" if row.dlq_visible is None else row.dlq_visible
        cells.append(
            [row.name, row.visible, row.in_flight, row.delayed, dlq]
            + ([age_text(row.oldest_age_s)] if with_age else [])
        )
    return [*table(headers, cells), "", APPROXIMATE_NOTE]


@click.command(context_settings=CONTEXT_SETTINGS)
@click.argument("queues", nargs=-1)
@click.option("--prefix", help="Only queues whose names start with this (without QUEUE arguments).")
@click.option("--watch", is_flag=True, help="Refresh in place until Ctrl-C.")
@click.option("--interval", "interval_s", type=click.FloatRange(min=0.2), default=2.0, show_default=True)
@json_option
@aws_options
def stats(
    queues: tuple[str, ...], prefix: str | None, watch: bool, interval_s: float, as_json: bool, settings: AWSSettings
) -> None:
    """Depth of each QUEUE (name or URL; default: every queue): visible, in flight, delayed, dead letters.

    With --json, a list of objects; with --watch too, one object per refresh and line.
    """
    sqs = settings.client("sqs")
    if not watch:
        rows = inspect.all_queue_stats(sqs, list(queues), prefix=prefix)
        if as_json:
            click.echo(json.dumps([row.to_dict() for row in rows], indent=2))
        else:
            click.echo("\n".join(stats_lines(rows)))
        return
    terminal = sys.stdout.isatty()
    try:
        while True:
            _show_once(sqs, list(queues), prefix, as_json=as_json, clear=terminal and not as_json)
            time.sleep(interval_s)
    except KeyboardInterrupt:
        return


def _show_once(sqs: Any, queues: list[str], prefix: str | None, *, as_json: bool, clear: bool) -> None:
    now = datetime.now(UTC).isoformat(timespec="seconds")
    try:
        rows = inspect.all_queue_stats(sqs, queues, prefix=prefix)
    except (EndpointUnreachableError, TransientTransportError) as exc:  # a watch outlives a blip
        if as_json:
            click.echo(json.dumps({"time": now, "error": str(exc)}))
        else:
            click.echo(f"{_CLEAR if clear else ''}{now}  {exc}; retrying")
        return
    if as_json:
        click.echo(json.dumps({"time": now, "queues": [row.to_dict() for row in rows]}))
    else:
        click.echo(("" if clear else "\n").join([_CLEAR if clear else "", f"{now}  (Ctrl-C to stop)"]))
        click.echo("\n".join(stats_lines(rows)))


def message_lines(message: PeekedMessage, *, body: bool, number: int, total: int) -> list[str]:
    """A peeked message for a terminal: every wire value escaped (no terminal control sequences from a body)."""
    lines = [
        f"[{number}/{total}] message {log_text(message.message_id)}  sns {log_text(message.sns_message_id or '-')}"
    ]
    lines.append(f"  media type: {log_text(message.media_type or '-')}")
    sent = datetime.fromtimestamp(message.sent_at, UTC).isoformat(timespec="seconds") if message.sent_at else "-"
    lines.append(
        f"  receive count: {message.receive_count}  size: {message.size} bytes  sent: {sent} "
        f"({age_text(message.age_s())} ago)"
    )
    if message.message_group_id:
        lines.append(f"  message group: {log_text(message.message_group_id)}")
    for name, value in sorted(message.dead_letter.items()):
        lines.append(f"  {name.replace('_', ' ')}: {log_text(value, 500)}")
    if message.body_error:
        lines.append(f"  body is not a microbus message: {log_text(message.body_error)}")
    if body:
        lines.append("  body:")
        text = json.dumps(message.body, indent=2, ensure_ascii=False) if message.body is not None else message.raw_body
        lines.extend(f"    {log_text(line, BODY_LIMIT)}" for line in str(text).splitlines())
    return lines


def print_messages(messages: list[PeekedMessage], *, body: bool, as_json: bool) -> None:
    """Print peeked messages (as JSON, or for a terminal)."""
    if as_json:
        click.echo(json.dumps([message.to_dict(body=body) for message in messages], indent=2))
        return
    for number, message in enumerate(messages, 1):
        click.echo("\n".join(message_lines(message, body=body, number=number, total=len(messages))))


@click.command(context_settings=CONTEXT_SETTINGS)
@click.argument("queue")
@click.option("-n", "count", type=click.IntRange(1, 100), default=10, show_default=True, help="Messages to show.")
@click.option("--no-body", is_flag=True, help="Hide the bodies.")
@json_option
@aws_options
def peek(queue: str, count: int, no_body: bool, as_json: bool, settings: AWSSettings) -> None:
    """Show up to N messages of QUEUE (name or URL) without consuming them.

    Each is received with a short visibility timeout and released at once; a peek counts as a receive
    (ApproximateReceiveCount), which the queue's redrive policy counts too.
    """
    sqs = settings.client("sqs")
    url = inspect.queue_url(sqs, queue)
    messages = inspect.peek(sqs, url, max_messages=count)
    print_messages(messages, body=not no_body, as_json=as_json)
    if not as_json:
        click.echo(f"{len(messages)} message(s) of {inspect.queue_name(url)}, released.", err=True)
    limit = inspect.queue_stats(sqs, url).max_receive_count
    near = sum(1 for message in messages if limit is not None and message.receive_count >= limit)
    if near:
        click.echo(
            f"Warning: {near} message(s) reached the queue's maxReceiveCount ({limit}): the next receive, "
            "a peek too, moves them to the dead-letter queue.",
            err=True,
        )
