"""The Lambda adapter on the emulator: events built from messages received from a real queue, in Lambda's
record shape; partial batch responses, dead letters, the time budget, FIFO groups, malformed records."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import timedelta

import pytest
from marshmallow import fields
from microcosm.api import create_object_graph, load_from_dict

from microbus import AccessDeniedError, LambdaBatchFailedError, PubSubMessageSchema, handles, make_lambda_handler
from microbus.testing import wait_for
from microbus.testing.aws_lambda import LambdaContext, lambda_sqs_event

pytestmark = pytest.mark.integration

SUFFIX = uuid.uuid4().hex


class Job(PubSubMessageSchema):
    """A job: ``action`` is ok, fail, fatal, or ``tick:N`` (the test clock moves N seconds)."""

    MEDIA_TYPE = f"application/vnd.microbus.test.lambda-job.{SUFFIX}"

    action = fields.String(required=True)
    key = fields.String(required=True)


class AsyncJob(PubSubMessageSchema):
    """The same, for an ``async def`` handler."""

    MEDIA_TYPE = f"application/vnd.microbus.test.lambda-async-job.{SUFFIX}"

    action = fields.String(required=True)
    key = fields.String(required=True)


CALLS: list[str] = []
CLOCK = [0.0]


def act(content):
    CALLS.append(content["key"])
    action = content["action"]
    if action == "fail":
        raise RuntimeError("downstream is down")
    if action == "fatal":
        raise AccessDeniedError("The IAM policy refuses sqs:SendMessage")
    if action.startswith("tick:"):
        CLOCK[0] += float(action.split(":")[1])


@handles(Job)
def handle_job(content):
    act(content)


@handles(AsyncJob)
async def handle_async_job(content):
    await asyncio.sleep(0)
    act(content)


@pytest.fixture(autouse=True)
def clean():
    CALLS.clear()
    CLOCK[0] = 0.0


def graph_factory(queue):
    config = queue.graph_config(
        microbus_sqs_message_handler_registry={"media_types": [Job.MEDIA_TYPE, AsyncJob.MEDIA_TYPE]},
        microbus_sqs_message_dispatcher={"backoff_base_s": 60, "backoff_max_s": 60},
    )

    def create():
        return create_object_graph("lambda-test", testing=True, loader=load_from_dict(config))

    return create


def body(action, key, media_type=Job.MEDIA_TYPE):
    return json.dumps({"mediaType": media_type, "action": action, "key": key})


def send(queue, bodies, url=None, groups=None):
    for index, text in enumerate(bodies):
        extra = {"MessageGroupId": groups[index], "MessageDeduplicationId": uuid.uuid4().hex} if groups else {}
        queue.sqs.send_message(
            QueueUrl=url or queue.queue_url,
            MessageBody=text,
            MessageAttributes={"trace": {"DataType": "String", "StringValue": f"t-{index}"}},
            **extra,
        )


def receive(queue, count, url=None):
    """Receive ``count`` messages as Lambda's poller does (all system and message attributes)."""
    got = []

    def more():
        got.extend(
            queue.sqs.receive_message(
                QueueUrl=url or queue.queue_url,
                MaxNumberOfMessages=min(10, count - len(got)),
                WaitTimeSeconds=1,
                MessageSystemAttributeNames=["All"],
                MessageAttributeNames=["All"],
            ).get("Messages", [])
        )
        return len(got) >= count

    wait_for(more, what=f"{count} messages")
    return got


def arn_of(queue, url=None):
    attributes = queue.sqs.get_queue_attributes(QueueUrl=url or queue.queue_url, AttributeNames=["QueueArn"])
    return attributes["Attributes"]["QueueArn"]


def event_of(queue, raws, url=None):
    return lambda_sqs_event(raws, queue_arn=arn_of(queue, url), region="us-east-1")


def failures(response):
    return [item["itemIdentifier"] for item in response["batchItemFailures"]]


def visible(queue, url=None):
    return int(
        queue.sqs.get_queue_attributes(QueueUrl=url or queue.queue_url, AttributeNames=["ApproximateNumberOfMessages"])[
            "Attributes"
        ]["ApproximateNumberOfMessages"]
    )


def test_the_record_shape_is_lambdas(microbus_queue):
    # Given a message received from the queue
    send(microbus_queue, [body("ok", "a")])
    record = event_of(microbus_queue, receive(microbus_queue, 1))["Records"][0]
    # Then its record has exactly the fields Lambda sends, in Lambda's spelling
    assert set(record) == {
        "messageId", "receiptHandle", "body", "attributes", "messageAttributes", "md5OfMessageAttributes",
        "md5OfBody", "eventSource", "eventSourceARN", "awsRegion",
    }  # fmt: skip
    assert record["attributes"]["ApproximateReceiveCount"] == "1"
    assert record["messageAttributes"]["trace"] == {
        "stringValue": "t-0",
        "stringListValues": [],
        "binaryListValues": [],
        "dataType": "String",
    }
    assert record["eventSource"] == "aws:sqs"


def test_only_the_failed_messages_are_reported_and_poison_goes_to_the_dlq(microbus_queue):
    # Given a batch with successes (sync and async), a failure and a poison message
    queue = microbus_queue
    send(queue, [body("ok", "a"), body("fail", "b"), body("ok", "c", AsyncJob.MEDIA_TYPE), "not json"])
    raws = receive(queue, 4)
    by_key = {json.loads(r["Body"])["key"] if r["Body"] != "not json" else "poison": r["MessageId"] for r in raws}
    handler = make_lambda_handler(graph_factory(queue))
    changes = []
    handler.graph.sqs_client.meta.events.register(
        "provide-client-params.sqs.ChangeMessageVisibilityBatch", lambda params, **kw: changes.extend(params["Entries"])
    )
    # When Lambda invokes the handler
    response = handler(event_of(queue, raws), LambdaContext())
    # Then only the failed message is reported, and every handler ran once
    assert failures(response) == [by_key["b"]]
    assert sorted(CALLS) == ["a", "b", "c"]
    # And the poison message's copy is in the DLQ with its reason (Lambda deletes the original)
    dead = queue.drain_dlq()
    assert [m["Body"] for m in dead] == ["not json"]
    assert dead[0]["MessageAttributes"]["microbus.reason"]["StringValue"] == "malformed-body"
    # And the failed one got the backoff (1..60 s with full jitter here), as in the daemon
    failed = next(r for r in raws if r["MessageId"] == by_key["b"])
    assert [(c["ReceiptHandle"], 1 <= c["VisibilityTimeout"] <= 60) for c in changes] == [
        (failed["ReceiptHandle"], True)
    ]


def test_a_message_past_its_attempts_is_dead_lettered_and_not_reported(make_queue):
    # Given a queue that redrives after 2 receives, and a failing message received for the second time
    queue = make_queue(max_receive_count=2)
    send(queue, [body("fail", "x")])
    first = receive(queue, 1)[0]
    queue.sqs.change_message_visibility(
        QueueUrl=queue.queue_url, ReceiptHandle=first["ReceiptHandle"], VisibilityTimeout=0
    )
    second = receive(queue, 1)
    assert second[0]["Attributes"]["ApproximateReceiveCount"] == "2"
    # When the handler fails on it
    response = make_lambda_handler(graph_factory(queue))(event_of(queue, second), LambdaContext())
    # Then it is EXPIRED: copied to the DLQ with the reason, and left for Lambda to delete
    assert failures(response) == []
    dead = queue.drain_dlq()
    assert dead[0]["MessageAttributes"]["microbus.reason"]["StringValue"] == "max-attempts"
    assert dead[0]["MessageAttributes"]["microbus.receive_count"]["StringValue"] == "2"


def test_messages_that_would_exceed_the_remaining_time_are_left_unstarted(microbus_queue):
    # Given three messages whose handlers take 2 s each (on the test's clock) and 5 s left
    queue = microbus_queue
    send(queue, [body("tick:2", "a"), body("tick:2", "b"), body("tick:2", "c")])
    raws = receive(queue, 3)
    ids = [r["MessageId"] for r in raws]
    handler = make_lambda_handler(graph_factory(queue), reserve_ms=500)
    # When the first run teaches the handler how long a Job takes
    response = handler(event_of(queue, raws), LambdaContext(5_000, clock=lambda: CLOCK[0]))
    # Then the third one (1 s left, 2.5 s needed) is not started: reported, and visible again at once
    assert len(CALLS) == 2
    assert failures(response) == [ids[2]]
    again = receive(queue, 1)
    assert again[0]["MessageId"] == ids[2]
    assert again[0]["Attributes"]["ApproximateReceiveCount"] == "2"


def test_a_declared_handler_timeout_leaves_the_batch_unstarted_when_time_is_short(microbus_queue):
    # Given handlers declared to take up to 10 s and 3 s left
    queue = microbus_queue
    send(queue, [body("ok", "a"), body("ok", "b")])
    raws = receive(queue, 2)
    handler = make_lambda_handler(graph_factory(queue), handler_timeout_s=10)
    # When Lambda invokes the handler
    response = handler(event_of(queue, raws), LambdaContext(3_000))
    # Then nothing runs and every message comes back at once, in order
    assert CALLS == []
    assert failures(response) == [r["MessageId"] for r in raws]
    assert wait_for(lambda: visible(queue) == 2, what="both visible again")


def test_a_fifo_batch_stops_a_group_at_its_first_failure(microbus_queue):
    # Given a FIFO queue with group A (ok, fail, ok) and group B (ok, ok)
    queue = microbus_queue
    url = queue.sqs.create_queue(QueueName=f"t-{uuid.uuid4().hex[:12]}.fifo", Attributes={"FifoQueue": "true"})[
        "QueueUrl"
    ]
    bodies = [body("ok", "a1"), body("fail", "a2"), body("ok", "a3"), body("ok", "b1"), body("ok", "b2")]
    send(queue, bodies, url=url, groups=["A", "A", "A", "B", "B"])
    raws = receive(queue, 5, url=url)
    key = {r["MessageId"]: json.loads(r["Body"])["key"] for r in raws}
    # When Lambda invokes the handler with the batch
    response = make_lambda_handler(graph_factory(queue))(event_of(queue, raws, url), LambdaContext())
    # Then the failed message and the later one of its group are reported, in order; a3 never ran
    assert [key[i] for i in failures(response)] == ["a2", "a3"]
    assert sorted(CALLS) == ["a1", "a2", "b1", "b2"]


def test_malformed_records_are_reported_and_the_rest_is_handled(microbus_queue):
    # Given a batch where some records are not what Lambda sends
    queue = microbus_queue
    send(queue, [body("ok", k) for k in "abcdef"])
    event = event_of(queue, receive(queue, 6))
    records = event["Records"]
    records[0]["attributes"]["ApproximateReceiveCount"] = "many"
    records[1]["messageAttributes"] = {"x": {"dataType": "Binary", "binaryValue": "%%% not base64"}}
    records[2]["body"] = None
    records[3]["eventSourceARN"] = "arn:aws:kinesis:us-east-1:123456789012:stream/orders"
    records[4]["eventSource"] = "aws:kinesis"
    # When Lambda invokes the handler
    response = make_lambda_handler(graph_factory(queue))(event, LambdaContext())
    # Then each malformed record is reported as failed (it stays in the queue), and the good one is handled
    assert failures(response) == [r["messageId"] for r in records[:5]]
    assert len(CALLS) == 1


def test_a_fifo_batch_with_a_garbled_source_arn_is_stopped_not_crashed(microbus_queue):
    # Given a FIFO batch whose second record lost its group and whose third has an ARN that is no queue's
    queue = microbus_queue
    url = queue.sqs.create_queue(QueueName=f"t-{uuid.uuid4().hex[:12]}.fifo", Attributes={"FifoQueue": "true"})[
        "QueueUrl"
    ]
    send(queue, [body("ok", "a1"), body("ok", "a2"), body("ok", "a3")], url=url, groups=["A", "A", "A"])
    event = event_of(queue, receive(queue, 3, url=url), url)
    records = event["Records"]
    del records[1]["attributes"]["MessageGroupId"]
    records[1]["body"] = 42
    records[2]["eventSourceARN"] = "x.fifo"
    # When Lambda invokes the handler
    response = make_lambda_handler(graph_factory(queue))(event, LambdaContext())
    # Then the first is handled; the malformed one without a group stops the batch, in order
    assert CALLS == ["a1"]
    assert failures(response) == [r["messageId"] for r in records[1:]]


def test_the_graph_is_built_once_per_container(microbus_queue):
    # Given a handler made at module level from a factory that counts its calls
    queue = microbus_queue
    create = graph_factory(queue)
    built = []

    def counted():
        built.append(1)
        return create()

    handler = make_lambda_handler(counted)
    # When it is invoked twice, and another handler uses the same factory
    for key in ("a", "b"):
        send(queue, [body("ok", key)])
        handler(event_of(queue, receive(queue, 1)), LambdaContext())
    make_lambda_handler(counted)({"Records": []}, LambdaContext())
    # Then the graph was built once
    assert built == [1]
    assert CALLS == ["a", "b"]


def test_without_partial_batch_responses_a_failure_fails_the_invocation(microbus_queue):
    # Given a mapping without ReportBatchItemFailures
    queue = microbus_queue
    send(queue, [body("ok", "a"), body("fail", "b")])
    handler = make_lambda_handler(graph_factory(queue), partial_batch_response=False)
    # Then a failed message raises, so Lambda retries the batch instead of deleting it
    with pytest.raises(LambdaBatchFailedError, match="1 of 2 messages failed"):
        handler(event_of(queue, receive(queue, 2)), LambdaContext())


def test_a_fatal_error_returns_the_rest_of_the_batch_unstarted(microbus_queue):
    # Given a batch whose second message hits a fatal error
    queue = microbus_queue
    send(queue, [body("ok", "a"), body("fatal", "b"), body("ok", "c")])
    raws = receive(queue, 3)
    # When Lambda invokes the handler
    response = make_lambda_handler(graph_factory(queue))(event_of(queue, raws), LambdaContext())
    # Then the fatal one and the rest are reported, visible again at once, and c never ran
    assert failures(response) == [r["MessageId"] for r in raws[1:]]
    assert CALLS == ["a", "b"]
    assert wait_for(lambda: visible(queue) == 2, what="both visible again")


def test_a_message_not_yet_due_is_hidden_until_due_and_its_handler_not_run(microbus_queue):
    # Given a message produced for an hour from now (through SNS: the consumer holds it back)
    queue = microbus_queue
    handler = make_lambda_handler(graph_factory(queue))
    producer = create_object_graph("lambda-producer", testing=True, loader=load_from_dict(queue.graph_config()))
    producer.microbus_sns_producer.produce(Job.MEDIA_TYPE, dict(action="ok", key="later"), delay=timedelta(hours=1))
    raws = receive(queue, 1)
    changes = []
    handler.graph.sqs_client.meta.events.register(
        "provide-client-params.sqs.ChangeMessageVisibilityBatch", lambda params, **kw: changes.extend(params["Entries"])
    )
    # When Lambda invokes the handler
    response = handler(event_of(queue, raws), LambdaContext())
    # Then the handler did not run; the message is reported (kept) and hidden until it is due
    assert CALLS == []
    assert failures(response) == [raws[0]["MessageId"]]
    assert [c["ReceiptHandle"] for c in changes] == [raws[0]["ReceiptHandle"]]
    # (its last 15 minutes are a re-sent copy's DelaySeconds: see the next test)
    assert 2690 <= changes[0]["VisibilityTimeout"] <= 2700


def test_a_message_due_within_15_minutes_is_re_sent_as_a_fresh_copy_and_not_reported(make_queue):
    # Given a message produced for 2 s from now, received once and made visible again (its receive count is 2)
    queue = make_queue(raw=True)
    handler = make_lambda_handler(graph_factory(queue))
    producer = create_object_graph("lambda-producer", testing=True, loader=load_from_dict(queue.graph_config()))
    producer.microbus_sns_producer.produce(Job.MEDIA_TYPE, dict(action="ok", key="soon"), delay=timedelta(seconds=2))
    first = receive(queue, 1)
    queue.sqs.change_message_visibility(
        QueueUrl=queue.queue_url, ReceiptHandle=first[0]["ReceiptHandle"], VisibilityTimeout=0
    )
    raws = receive(queue, 1)
    assert raws[0]["Attributes"]["ApproximateReceiveCount"] == "2"
    # When Lambda invokes the handler before it is due
    response = handler(event_of(queue, raws), LambdaContext())
    # Then the handler did not run and nothing is reported: the original is gone, a fresh copy is on its way
    assert CALLS == [] and failures(response) == []
    (copy,) = receive(queue, 1)
    assert copy["MessageId"] != raws[0]["MessageId"] and copy["Body"] == raws[0]["Body"]
    assert copy["Attributes"]["ApproximateReceiveCount"] == "1"
    # And once due, the copy is handled as its first attempt
    response = handler(event_of(queue, [copy]), LambdaContext())
    assert CALLS == ["soon"] and failures(response) == []
