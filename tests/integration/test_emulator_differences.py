"""Where moto and LocalStack disagree with each other or with AWS, and how microbus copes with both.

Each test states what each emulator does (``microbus_endpoint.kind``), so a change in either shows up here.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from microbus.errors import TopologyError
from microbus.topology import Queue, Subscription, Topic, Topology, apply_topology
from microbus.wire.transport import SQSTransport

pytestmark = pytest.mark.integration
ACCOUNT_IDS = {"moto": "123456789012", "localstack": "000000000000"}


@pytest.fixture
def name():
    return f"em-{uuid.uuid4().hex[:10]}"


def account_of(arn: str) -> str:
    return arn.split(":")[4]


def test_each_emulator_has_its_own_account_id_and_microbus_reads_it_from_live_arns(microbus_endpoint, name):
    # Given a topology applied on the emulator
    applied = apply_topology(Topology(topics=(name,), queues=(Queue(name=name),)), **_sns_sqs(microbus_endpoint))
    account = account_of(applied.topic_arns[name])
    # Then moto answers 123456789012 and LocalStack 000000000000, and every ARN microbus built agrees
    assert account == ACCOUNT_IDS.get(microbus_endpoint.kind, account)
    assert {account_of(arn) for arn in applied.queue_arns.values()} == {account}
    # And the DLQ is found from the queue's redrive policy, whatever the account
    transport = SQSTransport(client=microbus_endpoint.settings().client("sqs"), queue_url=applied.queue_urls[name])
    dlq_arn = json.loads(transport.get_attributes()["RedrivePolicy"])["deadLetterTargetArn"]
    assert transport.queue_url_of_arn(dlq_arn) == applied.queue_urls[f"{name}-dlq"]


def test_only_localstack_stamps_the_source_queue_on_a_redriven_message(microbus_endpoint, name):
    # Given a queue that dead-letters after one receive
    clients = _sns_sqs(microbus_endpoint)
    topology = Topology(queues=(Queue(name=name, visibility_timeout_s=1, max_receive_count=1),))
    applied = apply_topology(topology, **clients)
    sqs, url, dlq_url = clients["sqs"], applied.queue_urls[name], applied.queue_urls[f"{name}-dlq"]
    sqs.send_message(QueueUrl=url, MessageBody="poison")
    # When it is received and never deleted, until SQS moves it
    assert sqs.receive_message(QueueUrl=url, WaitTimeSeconds=2).get("Messages")
    moved = []
    deadline = time.monotonic() + 15
    while not moved and time.monotonic() < deadline:
        sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1)
        moved = sqs.receive_message(QueueUrl=dlq_url, MessageSystemAttributeNames=["All"]).get("Messages", [])
    # Then it is in the DLQ; LocalStack (like AWS) says where it came from, moto does not
    assert moved, "the message was not moved to the DLQ"
    source = moved[0]["Attributes"].get("DeadLetterQueueSourceArn")
    expected = {"moto": None, "localstack": applied.queue_arns[name]}
    assert source == expected.get(microbus_endpoint.kind, source)
    # microbus never relies on it: the DLQ of a queue comes from the queue's redrive policy


def test_emulators_accept_settings_aws_rejects_so_microbus_validates_them_itself(microbus_endpoint, name):
    sqs = microbus_endpoint.settings().client("sqs")
    # Given both emulators accept a visibility timeout over 12 h and a retention under 60 s (AWS rejects both)
    url = sqs.create_queue(QueueName=name, Attributes={"VisibilityTimeout": "43201", "MessageRetentionPeriod": "30"})
    assert url["QueueUrl"]
    # Then microbus refuses them before any call
    with pytest.raises(TopologyError, match="visibility_timeout_s must be 0..43200; .*message_retention_s must be 60"):
        apply_topology(
            Topology(queues=(Queue(name=name, visibility_timeout_s=43_201, message_retention_s=30),)),
            **_sns_sqs(microbus_endpoint),
        )


def test_emulators_deliver_without_a_queue_policy_but_microbus_always_sets_one(microbus_endpoint, name):
    clients = _sns_sqs(microbus_endpoint)
    sns, sqs = clients["sns"], clients["sqs"]
    # Given a queue subscribed by hand, without the access policy AWS needs for SNS to send to it
    topic_arn = sns.create_topic(Name=name)["TopicArn"]
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn)
    # Then both emulators deliver anyway (AWS would drop the message)
    sns.publish(TopicArn=topic_arn, Message="hello")
    assert _receive(sqs, url)
    # And apply adds the policy that lets exactly this topic send
    topology = Topology(topics=(name,), queues=(Queue(name=name, subscriptions=(Subscription(topic=name),)),))
    applied = apply_topology(topology, **clients)
    assert any(c.kind == "queue policy" and c.action.name == "CREATE" for c in applied.plan.changes)
    policy = json.loads(sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["Policy"])["Attributes"]["Policy"])
    assert policy["Statement"][0]["Condition"] == {"ArnEquals": {"aws:SourceArn": topic_arn}}


def test_the_policy_command_asks_sts_for_the_account_and_falls_back_to_a_wildcard(microbus_endpoint):
    # moto serves STS; LocalStack in host mode only serves the SERVICES it was started with (no sts here)
    result = subprocess.run(
        [str(Path(sys.executable).parent / "microbus"), "topology", "policy", "orders"],
        env={**_environ(microbus_endpoint)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    resource = json.loads(result.stdout)["Statement"][0]["Resource"][0]
    account = resource.split(":")[4]
    if microbus_endpoint.kind == "moto":
        assert account == ACCOUNT_IDS["moto"]
    if account == "*":
        assert "pass --account-id" in result.stderr


def test_moto_wants_a_deduplication_id_that_a_content_deduplicating_fifo_topic_should_supply(microbus_endpoint, name):
    # Given a FIFO topic with content-based deduplication and a FIFO queue without it
    topology = Topology(
        topics=(Topic(name=f"{name}.fifo", fifo=True, content_based_deduplication=True),),
        queues=(Queue(name=f"{name}-q.fifo", fifo=True, subscriptions=(Subscription(topic=f"{name}.fifo"),)),),
    )
    applied = apply_topology(topology, **_sns_sqs(microbus_endpoint))
    sns, sqs = _sns_sqs(microbus_endpoint).values()

    def publish():
        sns.publish(TopicArn=applied.topic_arns[f"{name}.fifo"], Message="x", MessageGroupId="g")

    # Then moto rejects a publish without MessageDeduplicationId; LocalStack (like AWS) delivers it
    if microbus_endpoint.kind == "moto":
        with pytest.raises(ClientError, match="ContentBasedDeduplication"):
            publish()
    else:
        publish()
        assert _receive(sqs, applied.queue_urls[f"{name}-q.fifo"])


def _environ(endpoint):
    import os

    return {**os.environ, **endpoint.environ()}


def _sns_sqs(endpoint):
    clients = endpoint.clients()
    return {"sns": clients["sns"], "sqs": clients["sqs"]}


def _receive(sqs, url, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        messages = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1).get("Messages", [])
        if messages:
            return messages
    return []


@pytest.mark.timeout(60)
def test_concurrent_receives_never_return_one_message_twice(microbus_endpoint, name):
    # moto picks visible messages without a lock, so two receives at once could both return one message;
    # SQS and LocalStack never do, and the embedded emulator serialises each queue's receives to match.
    import collections
    import threading

    sqs = microbus_endpoint.settings().client("sqs")
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    for batch in range(10):  # moto's receive costs O(messages) per message: a few, received at once
        entries = [{"Id": str(i), "MessageBody": f"{batch}-{i}"} for i in range(10)]
        sqs.send_message_batch(QueueUrl=url, Entries=entries)
    seen: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()

    def receive() -> None:
        client = microbus_endpoint.settings().client("sqs")
        for _ in range(4):
            response = client.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=60)
            with lock:
                seen.update(message["MessageId"] for message in response.get("Messages", []))

    threads = [threading.Thread(target=receive) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(50)
    assert max(seen.values()) == 1, [mid for mid, count in seen.items() if count > 1]
