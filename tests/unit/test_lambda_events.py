"""Malformed Lambda events fail the invocation with a clear error before any handler runs (the batch is retried)."""

from __future__ import annotations

import json
import socket
import uuid

import pytest
from microcosm.api import create_object_graph, load_from_dict

from microbus import LambdaEventError, PubSubMessageSchema, handles, make_lambda_handler, schema


def never_built():
    raise AssertionError("the graph must not be built for a malformed event")


@pytest.mark.parametrize(
    "event",
    [None, "Records", {}, {"Records": "x"}, {"Records": [42]}, {"Records": [{"messageId": ""}]}],
    ids=["none", "string", "no-records", "records-not-a-list", "record-not-a-map", "empty-message-id"],
)
def test_an_event_whose_records_cannot_be_told_apart_fails_the_invocation(event):
    # Given a handler
    handler = make_lambda_handler(never_built)
    # When the event is not an SQS event with a messageId on every record
    # Then the invocation fails with one sentence, and nothing was handled
    with pytest.raises(LambdaEventError, match="retried"):
        handler(event, None)


def test_a_record_without_an_id_fails_the_whole_event_before_its_neighbours_run():
    handler = make_lambda_handler(never_built)
    event = {"Records": [{"messageId": "m-1", "body": "{}"}, {"body": "{}"}]}
    with pytest.raises(LambdaEventError, match="Record 1 of the SQS event has no messageId"):
        handler(event, None)


def test_a_failing_graph_factory_fails_the_invocation_and_the_next_one_builds_it():
    # Given a factory that fails once (e.g. a configuration service timed out at cold start)
    attempts = []

    def flaky():
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("configuration unavailable")
        only_ping = {"microbus_sqs_message_handler_registry": {"media_types": [Ping.MEDIA_TYPE]}}
        return create_object_graph("lambda-unit", testing=True, loader=load_from_dict(only_ping))

    handler = make_lambda_handler(flaky)
    # When it fails, the invocation fails (the batch is retried)
    with pytest.raises(RuntimeError, match="configuration unavailable"):
        handler({"Records": []}, None)
    # Then the next invocation builds the graph, and later ones reuse it
    assert handler({"Records": []}, None) == {"batchItemFailures": []}
    assert handler({"Records": []}, None) == {"batchItemFailures": []}
    assert len(attempts) == 2


@schema
class Ping(PubSubMessageSchema):
    MEDIA_TYPE = f"application/vnd.microbus.test.lambda-ping.{uuid.uuid4().hex}"


@handles(Ping)
def handle_ping(content):
    PINGS.append(content)


PINGS: list[dict] = []


def record(message_id, body):
    return {
        "messageId": message_id,
        "receiptHandle": f"rh-{message_id}",
        "body": body,
        "attributes": {"ApproximateReceiveCount": "1"},
        "messageAttributes": {},
        "md5OfBody": "-",
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:orders",
        "awsRegion": "us-east-1",
    }


def test_with_sqs_unreachable_handlers_still_run_and_poison_is_kept_not_deleted():
    # Given SQS unreachable (nothing listens on the port), so the queue's DLQ is unknown
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = {
        "aws": {
            "endpoint_url": f"http://127.0.0.1:{port}",
            "region_name": "us-east-1",
            "access_key_id": "dummy",
            "secret_access_key": "dummy",
        },
        "microbus_sqs_message_handler_registry": {"media_types": [Ping.MEDIA_TYPE]},
        "microbus_sqs_message_dispatcher": {"delete_undeliverable": True},
    }
    handler = make_lambda_handler(
        lambda: create_object_graph("lambda-down", testing=True, loader=load_from_dict(config))
    )
    event = {"Records": [record("good", json.dumps({"mediaType": Ping.MEDIA_TYPE})), record("poison", "not json")]}
    # When Lambda invokes the handler
    response = handler(event, None)
    # Then the good message was handled, and the poison one is reported (kept), not deleted as undeliverable
    assert len(PINGS) == 1
    assert response == {"batchItemFailures": [{"itemIdentifier": "poison"}]}
