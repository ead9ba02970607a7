"""microbus.ops.deadletters against the real emulator: list, redrive (both paths), purge."""

from __future__ import annotations

import json
import uuid

import pytest

from microbus.errors import ConfigurationError, QueueNotFoundError
from microbus.ops import deadletters, inspect
from microbus.testing import wait_for
from tests.integration.deadletter_helpers import POISON, fill_dead_letters

pytestmark = pytest.mark.integration


def _bodies(queue, url):
    received = queue.sqs.receive_message(
        QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1, MessageAttributeNames=["All"]
    ).get("Messages", [])
    return received


def test_dead_letters_are_listed_with_microbus_reasons_from_the_source_queue_or_the_dlq(make_queue):
    queue = make_queue()
    fill_dead_letters(queue)
    listed = deadletters.list_dead_letters(queue.sqs, queue.queue_url)
    assert {m.dead_letter["reason"] for m in listed} == set(POISON)
    for message in listed:
        assert message.dead_letter["source_message_id"] and message.dead_letter["error_class"]
        assert message.dead_letter["dead_lettered_at"]
    [unknown] = [m for m in listed if m.dead_letter["reason"] == "unknown-media-type"]
    assert unknown.media_type == "application/vnd.nobody" and unknown.body == json.loads(POISON["unknown-media-type"])
    by_dlq = deadletters.list_dead_letters(queue.sqs, inspect.queue_name(queue.dlq_url))
    assert {m.message_id for m in by_dlq} == {m.message_id for m in listed}
    # listing consumed nothing
    assert queue.depth(queue.dlq_url) == 3


def test_redrive_with_a_reason_filter_copies_only_those_and_leaves_the_rest(make_queue):
    queue = make_queue()
    fill_dead_letters(queue)
    progress = []
    only = deadletters.RedriveFilter(reasons=("schema-violation", "malformed-body"))
    result = deadletters.redrive(queue.sqs, queue.queue_url, only=only, on_progress=lambda n, t: progress.append(n))
    assert result.path == deadletters.COPY_AND_DELETE
    assert (result.moved, result.skipped, result.failed, result.not_deleted) == (2, 1, 0, 0)
    assert progress[-1] == 3  # processed: moved, left or refused
    back = _bodies(queue, queue.queue_url)
    assert sorted(m["Body"] for m in back) == sorted([POISON["schema-violation"], POISON["malformed-body"]])
    assert not any(name.startswith("microbus.") for m in back for name in m.get("MessageAttributes", {}))
    # the one left is visible again at once
    [left] = deadletters.list_dead_letters(queue.sqs, queue.queue_url)
    assert left.dead_letter["reason"] == "unknown-media-type"


def test_redrive_everything_uses_the_move_task_where_the_endpoint_has_it(make_queue, microbus_endpoint):
    queue = make_queue()
    fill_dead_letters(queue)
    result = deadletters.redrive(queue.sqs, inspect.queue_name(queue.queue_url))
    if microbus_endpoint.kind == "localstack":
        assert result.path == deadletters.MOVE_TASK and result.move_task_status == "COMPLETED"
    else:  # moto has no StartMessageMoveTask
        assert result.path == deadletters.COPY_AND_DELETE
        assert "StartMessageMoveTask" in str(result.fallback_reason)
    assert result.moved == 3
    wait_for(lambda: queue.depth() == 3 and queue.depth(queue.dlq_url) == 0, timeout_s=30, what="the move")


def test_an_age_filter_leaves_recent_dead_letters_and_max_bounds_the_count(make_queue):
    queue = make_queue()
    fill_dead_letters(queue)
    old = deadletters.redrive(queue.sqs, queue.queue_url, only=deadletters.RedriveFilter(min_age_s=3600))
    assert (old.moved, old.skipped) == (0, 3)
    recent = deadletters.redrive(
        queue.sqs, queue.queue_url, only=deadletters.RedriveFilter(max_age_s=3600), max_messages=1
    )
    assert recent.moved == 1
    assert queue.depth() == 1 and queue.depth(queue.dlq_url) == 2


def test_a_copy_the_source_refuses_stays_in_the_dead_letter_queue(make_queue):
    # Given a dead letter too large for its source queue
    queue = make_queue()
    queue.sqs.set_queue_attributes(QueueUrl=queue.queue_url, Attributes={"MaximumMessageSize": "1024"})
    queue.sqs.send_message(QueueUrl=queue.dlq_url, MessageBody="x" * 2000)
    queue.sqs.send_message(QueueUrl=queue.dlq_url, MessageBody="small")
    # When redriving by copy
    result = deadletters.redrive(queue.sqs, queue.queue_url, use_move_task=False)
    # Then the refused one is still a dead letter, the other moved
    assert (result.moved, result.failed) == (1, 1) and result.errors
    assert [m.raw_body for m in deadletters.list_dead_letters(queue.sqs, queue.queue_url)] == ["x" * 2000]
    assert [m["Body"] for m in _bodies(queue, queue.queue_url)] == ["small"]


def test_purge_empties_the_dead_letter_queue_only(make_queue):
    queue = make_queue()
    fill_dead_letters(queue)
    queue.sqs.send_message(QueueUrl=queue.queue_url, MessageBody="{}")
    dlq, depth = deadletters.purge(queue.sqs, queue.queue_url)
    assert dlq.url == queue.dlq_url and depth == 3
    wait_for(lambda: queue.depth(queue.dlq_url) == 0, timeout_s=70, what="the purge")
    assert queue.depth() == 1


def test_a_queue_without_dead_letter_queue_or_missing_is_a_clear_error(make_queue):
    queue = make_queue(max_receive_count=None)
    with pytest.raises(ConfigurationError, match="has no dead-letter queue"):
        deadletters.list_dead_letters(queue.sqs, queue.queue_url)
    with pytest.raises(QueueNotFoundError):
        deadletters.redrive(queue.sqs, "no-such-queue-here")


def test_a_dead_letter_queue_shared_by_two_queues_needs_to_say_where_to(make_queue):
    # Given a second queue whose redrive policy names the first one's DLQ
    queue = make_queue()
    dlq_arn = queue.sqs.get_queue_attributes(QueueUrl=queue.dlq_url, AttributeNames=["QueueArn"])["Attributes"]
    policy = json.dumps({"deadLetterTargetArn": dlq_arn["QueueArn"], "maxReceiveCount": "5"})
    other = queue.sqs.create_queue(
        QueueName=f"{inspect.queue_name(queue.queue_url)}-other", Attributes={"RedrivePolicy": policy}
    )["QueueUrl"]
    queue.sqs.send_message(QueueUrl=queue.dlq_url, MessageBody="{}")
    # Then a redrive without a destination is refused, and moves nothing
    with pytest.raises(ConfigurationError, match="dead-letter queue of 2 queues"):
        deadletters.redrive(queue.sqs, queue.queue_url)
    assert queue.depth(queue.dlq_url) == 1
    # And with one, it goes there
    result = deadletters.redrive(queue.sqs, queue.dlq_url, to=inspect.queue_name(other), use_move_task=False)
    assert result.moved == 1 and result.source_url == other
    assert queue.depth(other) == 1 and queue.depth() == 0


def test_fifo_dead_letters_are_redriven_by_copy_with_their_message_group(microbus_endpoint):
    # Given a FIFO queue and its FIFO DLQ holding dead letters of two groups (no move task for FIFO queues)
    sqs = microbus_endpoint.settings().client("sqs")
    name = f"fifo-{uuid.uuid4().hex[:8]}"
    dlq = sqs.create_queue(QueueName=f"{name}-dlq.fifo", Attributes={"FifoQueue": "true"})["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    url = sqs.create_queue(
        QueueName=f"{name}.fifo",
        Attributes={
            "FifoQueue": "true",
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": arn, "maxReceiveCount": "3"}),
        },
    )["QueueUrl"]
    for group, body in (("g-1", "a"), ("g-2", "b")):
        sqs.send_message(QueueUrl=dlq, MessageBody=body, MessageGroupId=group, MessageDeduplicationId=body)
    # When redriving everything
    result = deadletters.redrive(sqs, url)
    # Then the copy path moved both, each in its group
    assert (result.path, result.moved) == (deadletters.COPY_AND_DELETE, 2)
    received = sqs.receive_message(
        QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1, MessageSystemAttributeNames=["MessageGroupId"]
    )["Messages"]
    assert {(m["Body"], m["Attributes"]["MessageGroupId"]) for m in received} == {("a", "g-1"), ("b", "g-2")}
