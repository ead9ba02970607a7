"""`microbus produce`, `stats` and `peek` against the real emulator, as a user runs them."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from microbus.reference.schemas import OrderPlaced

from microbus.cli import main
from microbus.ops import inspect
from microbus.testing import wait_for

pytestmark = pytest.mark.integration
MICROBUS = str(Path(sys.executable).parent / "microbus")
ORDER = OrderPlaced.MEDIA_TYPE


def cli(queue, *args, input=None, expect=0):
    result = CliRunner().invoke(main, [*args, "--endpoint-url", queue.endpoint.endpoint_url], input=input)
    assert result.exit_code == expect, result.output
    assert "Traceback" not in result.output
    return result


def one_sentence_error(result, *fragments):
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr


def test_produce_validates_publishes_and_prints_the_id_peek_finds(microbus_queue):
    topic = inspect.topic_name(microbus_queue.topic_arn)
    result = cli(microbus_queue, "produce", ORDER, '{"order_id": "o-1", "total_cents": 250}', "--topic", topic)
    message_id = result.stdout.strip()
    wait_for(lambda: microbus_queue.depth() == 1, timeout_s=10)
    # peek shows the SNS id the producer printed, and the body; the message stays
    peeked = json.loads(cli(microbus_queue, "peek", microbus_queue.queue_url, "--json").stdout)
    assert [m["sns_message_id"] for m in peeked] == [message_id]
    assert peeked[0]["media_type"] == ORDER and peeked[0]["body"]["total_cents"] == 250
    text = cli(microbus_queue, "peek", inspect.queue_name(microbus_queue.queue_url)).stdout
    assert f"sns {message_id}" in text and f"media type: {ORDER}" in text and '"order_id": "o-1"' in text
    assert '"order_id"' not in cli(microbus_queue, "peek", microbus_queue.queue_url, "--no-body").stdout
    assert microbus_queue.depth() == 1


def test_produce_reads_stdin_and_files_of_json_lines(microbus_queue, tmp_path):
    topic = microbus_queue.topic_arn
    cli(microbus_queue, "produce", ORDER, "-", "--topic", topic, input='{\n  "order_id": "o-stdin"\n}\n')
    lines = tmp_path / "orders.jsonl"
    lines.write_text('{"order_id": "o-a"}\n\n{"order_id": "o-b"}\n')
    ids = cli(microbus_queue, "produce", ORDER, "--file", str(lines), "--topic", topic).stdout.split()
    assert len(ids) == 2
    wait_for(lambda: microbus_queue.depth() == 3, timeout_s=10)
    bodies = {m.body["order_id"] for m in inspect.peek(microbus_queue.sqs, microbus_queue.queue_url)}
    assert bodies == {"o-stdin", "o-a", "o-b"}


def test_produce_routes_by_the_topology_by_default(microbus_endpoint):
    # the reference topology routes orders to the "orders" topic
    CliRunner().invoke(main, ["topology", "--endpoint-url", microbus_endpoint.endpoint_url, "apply"])
    result = CliRunner().invoke(
        main, ["produce", ORDER, '{"order_id": "o-ref"}', "--endpoint-url", microbus_endpoint.endpoint_url]
    )
    assert result.exit_code == 0, result.output
    assert len(result.stdout.strip()) >= 8


@pytest.mark.parametrize(
    ("args", "input", "fragments"),
    [
        ([ORDER, "{not json"], None, ["is not JSON"]),
        ([ORDER, "[1, 2]"], None, ["JSON list, not an object"]),
        ([ORDER, "-"], "", ["Standard input is empty"]),
        ([ORDER, '{"order_id": 7}'], None, ["not valid", "order_id", "nothing was published"]),
        (["application/vnd.nobody", "{}"], None, ["No schema is registered", "--schemas"]),
        ([ORDER, "{}", "--schemas", "no_such_module_here"], None, ["Cannot import the schemas module"]),
        ([ORDER], None, ["give the message"]),
        ([ORDER, '{"order_id": "x"}', "--topic", "no-such-topic-here"], None, ["does not exist"]),
    ],
    ids=["bad-json", "not-an-object", "empty-stdin", "schema", "unknown-media-type", "schemas-module", "no-content"]
    + ["missing-topic"],
)
def test_produce_refuses_bad_input_in_one_sentence_and_publishes_nothing(microbus_queue, args, input, fragments):
    extra = [] if "--topic" in args else ["--topic", microbus_queue.topic_arn]
    result = cli(microbus_queue, "produce", *args, *extra, input=input, expect=2)
    one_sentence_error(result, *fragments)
    assert microbus_queue.depth() == 0


def test_a_bad_line_in_a_file_names_the_line_and_publishes_none_of_the_file(microbus_queue, tmp_path):
    lines = tmp_path / "orders.jsonl"
    lines.write_text('{"order_id": "o-a"}\n{"order_id": 5}\n')
    result = cli(microbus_queue, "produce", ORDER, "--file", str(lines), "--topic", microbus_queue.topic_arn, expect=2)
    one_sentence_error(result, f"line 2 of {lines}", "nothing was published")
    assert microbus_queue.depth() == 0


def test_stats_show_depths_of_named_queues_as_a_table_and_as_json(make_queue):
    queue = make_queue()
    for i in range(2):
        queue.sqs.send_message(QueueUrl=queue.queue_url, MessageBody=json.dumps({"i": i}))
    queue.sqs.send_message(QueueUrl=queue.dlq_url, MessageBody="{}")
    name = inspect.queue_name(queue.queue_url)
    text = cli(queue, "stats", name).stdout
    assert text.splitlines()[0].split() == ["QUEUE", "VISIBLE", "IN", "FLIGHT", "DELAYED", "DLQ"]
    assert text.splitlines()[1].split() == [name, "2", "0", "0", "1"]
    assert "approximate" in text and "oldest" in text
    [row] = json.loads(cli(queue, "stats", queue.queue_url, "--json").stdout)
    assert (row["name"], row["visible"], row["dlq_visible"], row["oldest_age_s"]) == (name, 2, 1, None)
    listed = json.loads(cli(queue, "stats", "--prefix", name, "--json").stdout)
    assert [r["name"] for r in listed] == [name, f"{name}-dlq"]


def test_stats_and_peek_of_a_missing_queue_are_one_sentence_with_status_2(microbus_queue):
    for command in (["stats", "no-such-queue-here"], ["peek", "no-such-queue-here"]):
        one_sentence_error(cli(microbus_queue, *command, expect=2), "no-such-queue-here", "does not exist")


def test_an_unreachable_endpoint_is_one_sentence_with_status_1():
    result = CliRunner().invoke(main, ["stats", "--endpoint-url", "http://127.0.0.1:9"])
    assert result.exit_code == 1
    one_sentence_error(result, "Cannot reach")


def test_stats_watch_refreshes_until_interrupted(microbus_queue):
    name = inspect.queue_name(microbus_queue.queue_url)
    process = subprocess.Popen(
        [MICROBUS, "stats", name, "--watch", "--interval", "0.3", "--json"],
        env=microbus_queue.endpoint.environ() | {"PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = json.loads(process.stdout.readline())
        assert first["queues"][0]["visible"] == 0
        microbus_queue.sqs.send_message(QueueUrl=microbus_queue.queue_url, MessageBody="{}")
        wait_for(lambda: json.loads(process.stdout.readline())["queues"][0]["visible"] == 1, timeout_s=20)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
        assert "Traceback" not in process.stderr.read()
    finally:
        process.kill()
        process.wait()
        process.stdout.close()
        process.stderr.close()


def test_peek_warns_when_a_message_reached_max_receive_count(make_queue):
    queue = make_queue(max_receive_count=2)
    queue.sqs.send_message(QueueUrl=queue.queue_url, MessageBody="{}")
    assert "maxReceiveCount" not in cli(queue, "peek", queue.queue_url).stderr
    warned = cli(queue, "peek", queue.queue_url).stderr
    assert "1 message(s) reached the queue's maxReceiveCount (2)" in warned
