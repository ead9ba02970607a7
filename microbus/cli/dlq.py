"""`microbus dlq list|redrive|purge QUEUE`: dead letters with their reasons, back to their queue, or gone."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from microbus.cli.common import CONTEXT_SETTINGS, FAILURE_EXIT, age_text, aws_options, duration, json_option, table
from microbus.cli.queues import print_messages
from microbus.ops import deadletters, inspect
from microbus.ops.deadletters import RedriveFilter, RedriveResult
from microbus.wire.sanitize import log_text
from microbus.wire.transport import AWSSettings

QUEUE_HELP = "QUEUE is the source queue (name or URL; its dead-letter queue is found by its redrive policy) or the DLQ."


@click.group(context_settings=CONTEXT_SETTINGS, help=f"Dead letters: list, redrive, purge. {QUEUE_HELP}")
def dlq() -> None:
    """Dead letters: list, redrive, purge."""


@dlq.command(name="list")
@click.argument("queue")
@click.option("-n", "count", type=click.IntRange(1, 100), default=10, show_default=True, help="Dead letters to show.")
@click.option("--body", is_flag=True, help="Show the bodies too.")
@json_option
@aws_options
def list_(queue: str, count: int, body: bool, as_json: bool, settings: AWSSettings) -> None:
    """List up to N dead letters of QUEUE with microbus's reasons, without consuming them."""
    sqs = settings.client("sqs")
    found = deadletters.dead_letter_queue(sqs, queue)
    messages = deadletters.list_dead_letters(sqs, found.url, max_messages=count)
    if as_json or body:
        print_messages(messages, body=body, as_json=as_json)
        return
    rows = [
        [
            log_text(m.message_id, 40),
            log_text(m.media_type or "-", 60),
            log_text(m.dead_letter.get("reason", "sqs: maxReceiveCount"), 40),
            log_text(m.dead_letter.get("error_class", "-"), 40),
            int(m.dead_letter.get("receive_count") or m.receive_count),
            age_text(deadletters.dead_lettered_age_s(m, now=_now())),
        ]
        for m in messages
    ]
    click.echo("\n".join(table(["MESSAGE ID", "MEDIA TYPE", "REASON", "ERROR", "RECEIVES", "AGE"], rows)))
    click.echo(
        f"{len(messages)} dead letter(s) shown of {found.name} (about {_depth(sqs, found.url)} in all).", err=True
    )


def _now() -> float:
    return time.time()


def _depth(sqs: Any, url: str) -> int:
    return inspect.queue_stats(sqs, url).visible


@dlq.command()
@click.argument("queue")
@click.option("--media-type", "media_types", multiple=True, help="Only this media type (repeatable).")
@click.option("--reason", "reasons", multiple=True, help="Only this microbus.reason (repeatable).")
@click.option("--older-than", "min_age_s", callback=duration, help="Only dead-lettered longer ago (90s, 10m, 2h, 1d).")
@click.option("--newer-than", "max_age_s", callback=duration, help="Only dead-lettered more recently.")
@click.option("--to", "to", help="Source queue to redrive to (name or URL), where the DLQ has several.")
@click.option("--max", "max_messages", type=click.IntRange(min=1), help="Redrive at most this many.")
@click.option("--copy", "copy_only", is_flag=True, help="Copy-and-delete even where StartMessageMoveTask exists.")
@json_option
@aws_options
def redrive(
    queue: str,
    media_types: tuple[str, ...],
    reasons: tuple[str, ...],
    min_age_s: float | None,
    max_age_s: float | None,
    to: str | None,
    max_messages: int | None,
    copy_only: bool,
    as_json: bool,
    settings: AWSSettings,
) -> None:
    """Move dead letters of QUEUE (all, or those the filters pick) back to their source queue.

    Without filters, SQS's StartMessageMoveTask moves them where the endpoint has it (AWS, LocalStack); else
    each is copied to the source queue and deleted from the DLQ only once SQS confirmed the copy.
    Exit status 1 when some could not be moved.
    """
    sqs = settings.client("sqs")
    only = RedriveFilter(media_types=media_types, reasons=reasons, min_age_s=min_age_s, max_age_s=max_age_s)
    progress = _Progress(enabled=not as_json and sys.stderr.isatty())
    try:
        result = deadletters.redrive(
            sqs,
            queue,
            to=to,
            only=only,
            max_messages=max_messages,
            use_move_task=not copy_only,
            on_progress=progress,
        )
    finally:
        progress.close()
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        click.echo(summary(result))
        for error in result.errors[:5]:
            click.echo(f"  refused: {log_text(error)}", err=True)
    if result.failed or result.not_deleted:
        sys.exit(FAILURE_EXIT)


def summary(result: RedriveResult) -> str:
    """One sentence on what a redrive did."""
    how = result.path
    if result.fallback_reason:
        how += f" ({result.fallback_reason})"
    text = (
        f"Redrove {result.moved} dead letter(s) from {inspect.queue_name(result.dead_letter_queue_url)} to "
        f"{inspect.queue_name(result.source_url)} by {how}"
    )
    if result.path == deadletters.COPY_AND_DELETE:
        text += f"; {result.skipped} left by the filters; {result.failed} refused by the source queue (left in the DLQ)"
        if result.not_deleted:
            text += f"; {result.not_deleted} copied but not deleted (now in both queues)"
    elif result.move_task_status != "COMPLETED":
        text += f"; the move task ended {result.move_task_status}"
    return text + "."


class _Progress:
    """A progress bar on stderr, made once the total is known (a terminal only; else nothing)."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self._bar: Any = None
        self._shown = 0

    def __call__(self, done: int, total: int | None) -> None:
        if not self.enabled:
            return
        if self._bar is None:
            self._bar = click.progressbar(length=max(total or 0, done, 1), label="Redriving", file=sys.stderr)
            self._bar.__enter__()
        self._bar.update(max(0, done - self._shown))
        self._shown = max(done, self._shown)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)


@dlq.command()
@click.argument("queue")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@aws_options
def purge(queue: str, yes: bool, settings: AWSSettings) -> None:
    """Delete every dead letter of QUEUE (asks first; SQS allows one purge per queue per minute)."""
    sqs = settings.client("sqs")
    found = deadletters.dead_letter_queue(sqs, queue)
    if not yes:
        click.confirm(
            f"Purge about {_depth(sqs, found.url)} dead letter(s) of {found.name}? This cannot be undone",
            abort=True,
            err=True,
        )
    _, depth = deadletters.purge(sqs, found.url)
    click.echo(f"Purged {found.name} (about {depth} message(s)).")
