"""`microbus dlq list|redrive|purge` against the real emulator, with dead letters a real worker wrote."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from microbus.cli import main
from microbus.ops import inspect
from microbus.testing import wait_for
from tests.integration.deadletter_helpers import POISON, fill_dead_letters

pytestmark = pytest.mark.integration


def dlq(queue, *args, input=None, expect=0):
    result = CliRunner().invoke(main, ["dlq", *args, "--endpoint-url", queue.endpoint.endpoint_url], input=input)
    assert result.exit_code == expect, result.output
    assert "Traceback" not in result.output
    return result


def test_list_shows_each_dead_letter_with_its_reason_as_a_table_and_json(make_queue):
    queue = make_queue()
    fill_dead_letters(queue)
    name = inspect.queue_name(queue.queue_url)
    text = dlq(queue, "list", name).stdout
    assert text.splitlines()[0].split()[:4] == ["MESSAGE", "ID", "MEDIA", "TYPE"]
    for reason in POISON:
        assert reason in text
    assert "application/vnd.nobody" in text
    listed = json.loads(dlq(queue, "list", queue.dlq_url, "--json").stdout)
    assert {m["dead_letter"]["reason"] for m in listed} == set(POISON)
    assert all("body" not in m for m in listed)
    with_bodies = json.loads(dlq(queue, "list", name, "--json", "--body").stdout)
    assert {m["raw_body"] or json.dumps(m["body"]) for m in with_bodies} >= {POISON["malformed-body"]}
    assert queue.depth(queue.dlq_url) == 3  # nothing consumed


def test_redrive_with_filters_reports_the_path_and_counts(make_queue):
    queue = make_queue()
    fill_dead_letters(queue)
    result = dlq(queue, "redrive", queue.queue_url, "--reason", "schema-violation")
    assert "Redrove 1 dead letter(s)" in result.stdout
    assert "by copy-and-delete" in result.stdout and "2 left by the filters; 0 refused" in result.stdout
    assert queue.depth() == 1 and queue.depth(queue.dlq_url) == 2
    as_json = json.loads(
        dlq(queue, "redrive", queue.queue_url, "--media-type", "application/vnd.nobody", "--json").stdout
    )
    assert (as_json["path"], as_json["moved"], as_json["skipped"]) == ("copy-and-delete", 1, 1)


def test_redrive_everything_says_which_path_it_used(make_queue, microbus_endpoint):
    queue = make_queue()
    fill_dead_letters(queue)
    result = dlq(queue, "redrive", inspect.queue_name(queue.queue_url))
    assert "Redrove 3 dead letter(s)" in result.stdout
    path = "StartMessageMoveTask" if microbus_endpoint.kind == "localstack" else "copy-and-delete"
    assert f"by {path}" in result.stdout
    wait_for(lambda: queue.depth() == 3 and queue.depth(queue.dlq_url) == 0, timeout_s=30, what="the move")


def test_purge_asks_first_and_yes_skips_the_question(make_queue):
    queue = make_queue()
    fill_dead_letters(queue)
    refused = dlq(queue, "purge", queue.queue_url, input="n\n", expect=1)
    assert "Purge about 3 dead letter(s)" in refused.stderr and "aborted" in refused.stderr
    assert queue.depth(queue.dlq_url) == 3
    purged = dlq(queue, "purge", queue.queue_url, "--yes")
    assert "Purged" in purged.stdout
    wait_for(lambda: queue.depth(queue.dlq_url) == 0, timeout_s=70, what="the purge")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["list", "no-such-queue-here"], "does not exist"),
        (["redrive", "no-such-queue-here"], "does not exist"),
        (["purge", "no-such-queue-here", "--yes"], "does not exist"),
        (["redrive", "QUEUE", "--older-than", "soon"], "is not a duration"),
        (["list", "PLAIN"], "has no dead-letter queue"),
    ],
)
def test_bad_arguments_are_one_sentence_with_status_2(make_queue, args, fragment):
    queue = make_queue()
    plain = make_queue(max_receive_count=None)
    args = [{"QUEUE": queue.queue_url, "PLAIN": plain.queue_url}.get(arg, arg) for arg in args]
    result = dlq(queue, *args, expect=2)
    assert result.stdout == "" and result.stderr.count("\n") == 1, result.stderr
    assert fragment in result.stderr
