"""Least-privilege IAM policies derived from the topology."""

from __future__ import annotations

from microbus.reference.daemons.orders import TOPOLOGY
from microbus.reference.schemas import OrderPlaced, PaymentCaptured

from microbus.topology import Daemon, Producer, Queue, Table, Topic, Topology
from microbus.topology.policy import ArnBuilder, iam_policies, iam_policy

ARNS = ArnBuilder(account_id="111122223333", region="eu-west-1")


def statements(document):
    return {s["Sid"]: (s["Action"], s["Resource"]) for s in document["Statement"]}


def test_the_orders_daemon_may_consume_its_queue_and_dead_letter_to_its_dlq_only():
    by_sid = statements(iam_policy(TOPOLOGY, "orders", arns=ARNS))
    assert by_sid == {
        "Consume": (
            [
                "sqs:ChangeMessageVisibility",
                "sqs:DeleteMessage",
                "sqs:GetQueueAttributes",
                "sqs:GetQueueUrl",
                "sqs:ReceiveMessage",
            ],
            ["arn:aws:sqs:eu-west-1:111122223333:orders"],
        ),
        "DeadLetter": (
            ["sqs:GetQueueUrl", "sqs:SendMessage"],
            ["arn:aws:sqs:eu-west-1:111122223333:orders-dlq"],
        ),
    }


def test_a_producer_may_publish_to_the_topics_of_its_media_types_only():
    topology = Topology(
        topics=(Topic(name="orders", media_types=(OrderPlaced,)), Topic(name="payments"), Topic(name="other")),
        default_topic="payments",
        producers=(Producer(name="api", produces=(OrderPlaced, PaymentCaptured)),),
    )
    assert statements(iam_policy(topology, "api", arns=ARNS)) == {
        "Publish": (
            ["sns:Publish"],
            ["arn:aws:sns:eu-west-1:111122223333:orders", "arn:aws:sns:eu-west-1:111122223333:payments"],
        )
    }


def test_callback_queue_fan_in_table_and_kms_keys_are_covered():
    topology = Topology(
        queues=(Queue(name="work", kms_master_key_id="alias/bus"), Queue(name="callbacks")),
        tables=(Table(name="fanin"),),
        daemons=(Daemon(name="worker", queue="work", sends_to=("callbacks",), tables=("fanin",)),),
    )
    by_sid = statements(iam_policy(topology, "worker", arns=ARNS))
    assert by_sid["Send"][1] == ["arn:aws:sqs:eu-west-1:111122223333:callbacks"]
    assert by_sid["Tables"] == (
        ["dynamodb:DeleteItem", "dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"],
        ["arn:aws:dynamodb:eu-west-1:111122223333:table/fanin"],
    )
    assert by_sid["KmsAliasBus"] == (
        ["kms:Decrypt", "kms:GenerateDataKey"],
        ["arn:aws:kms:eu-west-1:111122223333:alias/bus"],
    )


def test_every_principal_gets_a_document_and_unknown_accounts_are_wildcards():
    documents = iam_policies(TOPOLOGY, arns=ArnBuilder())
    assert sorted(documents) == ["orders", "orders-api"]
    assert documents["orders-api"]["Statement"][0]["Resource"] == ["arn:aws:sns:*:*:orders"]
