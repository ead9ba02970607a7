"""Pure parts of plan/apply: desired attributes, comparisons, the rendered diff, the start-up check."""

from __future__ import annotations

import json

from microbus.consume.consumer import QueueInfo
from microbus.topology import Change, ChangeAction, Plan, Queue
from microbus.topology.check import queue_warnings
from microbus.topology.desired import (
    compare_queue_attributes,
    desired_queue_attributes,
    desired_subscription_attributes,
    queue_policy,
)
from microbus.topology.reconcile import AppliedTopology, _subscription_differences

DLQ_ARN = "arn:aws:sqs:us-east-1:111122223333:q-dlq"


def test_desired_queue_attributes_carry_every_declared_setting():
    queue = Queue(name="q.fifo", fifo=True, visibility_timeout_s=60, message_retention_s=600, max_receive_count=4)
    attributes = desired_queue_attributes(queue, dead_letter_queue_arn=DLQ_ARN)
    assert attributes == {
        "VisibilityTimeout": "60",
        "MessageRetentionPeriod": "600",
        "FifoQueue": "true",
        "ContentBasedDeduplication": "false",
        "SqsManagedSseEnabled": "true",
        "RedrivePolicy": json.dumps({"deadLetterTargetArn": DLQ_ARN, "maxReceiveCount": 4}),
    }


def test_a_kms_key_replaces_sqs_managed_encryption_and_a_missing_dlq_is_a_placeholder():
    attributes = desired_queue_attributes(Queue(name="q", kms_master_key_id="alias/x"), dead_letter_queue_arn=None)
    assert attributes["KmsMasterKeyId"] == "alias/x"
    assert "SqsManagedSseEnabled" not in attributes
    assert "<arn of queue q-dlq>" in attributes["RedrivePolicy"]


def test_live_values_are_compared_by_meaning_not_spelling():
    # Given live attributes as an emulator returns them (maxReceiveCount as a string, other key order)
    desired = desired_queue_attributes(Queue(name="q"), dead_letter_queue_arn=DLQ_ARN)
    live = {
        "VisibilityTimeout": "30",
        "MessageRetentionPeriod": "345600",
        "SqsManagedSseEnabled": "True",
        "RedrivePolicy": json.dumps({"maxReceiveCount": "5", "deadLetterTargetArn": DLQ_ARN}),
    }
    # Then nothing differs
    assert compare_queue_attributes(desired, live) == {}


def test_differences_name_the_live_and_the_desired_value():
    desired = desired_queue_attributes(Queue(name="q", visibility_timeout_s=60), dead_letter_queue_arn=DLQ_ARN)
    live = {"VisibilityTimeout": "30", "MessageRetentionPeriod": "345600"}
    differences = compare_queue_attributes(desired, live)
    assert differences["VisibilityTimeout"] == ("30", "60")
    assert differences["RedrivePolicy"][0] is None
    # An attribute an emulator does not report at all is not compared
    assert "SqsManagedSseEnabled" not in differences


def test_subscription_filter_and_raw_delivery():
    desired = desired_subscription_attributes(raw=True, media_types=("b", "a"))
    assert desired == {"RawMessageDelivery": "true", "FilterPolicy": '{"media_type": ["a", "b"]}'}
    live = {"RawMessageDelivery": "true", "FilterPolicy": '{"media_type": ["b", "a"]}'}
    assert _subscription_differences(desired, live) == {}
    # An emptied filter reads back as "{}" (LocalStack: absent, moto: "" after setting "") - all mean none
    no_filter = desired_subscription_attributes(raw=False, media_types=None)
    for emptied in ({"FilterPolicy": "{}"}, {"FilterPolicy": ""}, {}):
        assert _subscription_differences(no_filter, emptied) == {}
    assert set(_subscription_differences(no_filter, live)) == {"RawMessageDelivery", "FilterPolicy"}


def test_the_queue_policy_lets_only_the_subscribed_topics_send():
    policy = queue_policy("arn:q", ["arn:t1", "arn:t2"])
    (statement,) = policy["Statement"]
    assert statement["Principal"] == {"Service": "sns.amazonaws.com"}
    assert statement["Action"] == "sqs:SendMessage"
    assert statement["Resource"] == "arn:q"
    assert statement["Condition"] == {"ArnEquals": {"aws:SourceArn": ["arn:t1", "arn:t2"]}}


def test_the_plan_renders_as_a_diff_with_a_summary():
    plan = Plan(
        changes=[
            Change(action=ChangeAction.CREATE, kind="queue", name="q", details=("VisibilityTimeout=30",)),
            Change(action=ChangeAction.UPDATE, kind="queue", name="r", details=("VisibilityTimeout: 10 → 30",)),
            Change(action=ChangeAction.UNCHANGED, kind="topic", name="t"),
        ],
        warnings=["careful"],
    )
    assert plan.lines() == [
        "+ create queue q",
        "    VisibilityTimeout=30",
        "~ update queue r",
        "    VisibilityTimeout: 10 → 30",
        "! warning: careful",
    ]
    assert "= unchanged topic t" in plan.lines(verbose=True)
    assert plan.summary() == "1 to create, 1 to update, 1 unchanged"
    assert plan.has_changes
    assert not Plan(changes=[Change(action=ChangeAction.UNCHANGED, kind="topic", name="t")]).has_changes


def test_applied_topology_gives_producers_their_topic_mapping():
    applied = AppliedTopology(
        topic_arns={"orders": "arn:orders", "payments": "arn:payments"},
        routes={"application/vnd.x": "payments"},
        default_topic="orders",
    )
    assert applied.sns_topic_arns_config() == {
        "default": "arn:orders",
        "mappings": {"application/vnd.x": "arn:payments"},
    }


def test_the_start_check_warns_about_a_short_visibility_timeout_and_a_missing_redrive_policy():
    info = QueueInfo(visibility_timeout_seconds=5, dead_letter_queue_arn=None, max_receive_count=None)
    warnings = queue_warnings(info, queue_url="http://x/1/q", handler_timeout_s=10)
    assert len(warnings) == 2
    assert "visibility timeout of 5s, shorter than the handler timeout of 10s" in warnings[0]
    assert "has no redrive policy" in warnings[1]


def test_the_start_check_reports_drift_from_the_topology():
    info = QueueInfo(visibility_timeout_seconds=30, dead_letter_queue_arn=DLQ_ARN, max_receive_count=3)
    declared = Queue(name="q", visibility_timeout_s=60, max_receive_count=5)
    (warning,) = queue_warnings(info, queue_url="http://x/1/q", handler_timeout_s=10, declared=declared)
    assert "visibility timeout 30s (declared 60s), maxReceiveCount 3 (declared 5)" in warning
    assert queue_warnings(info, queue_url="http://x/1/q", declared=Queue(name="q", max_receive_count=3)) == []
