"""AccessDenied from the idempotency table is a configuration error, not a transient outage: refused at start
by a probe, and at run time a fatal error that stops the worker (not an endless backoff loop)."""

from __future__ import annotations

import logging

import boto3
import pytest
from botocore.stub import ANY, Stubber
from microbus.reference.schemas import OrderPlaced

from microbus import HandlerRegistry, SQSMessageDispatcher, Worker
from microbus.errors import AccessDeniedError, ConfigurationError, FatalError
from microbus.patterns.idempotency import DynamoDBIdempotencyStore, IdempotencyGuard, MemoryIdempotencyStore
from microbus.testing import StubQueue


@pytest.fixture
def client():
    # A real client that never leaves the process: the stubber answers every call.
    return boto3.client(
        "dynamodb",
        region_name="eu-west-1",
        endpoint_url="http://127.0.0.1:1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


@pytest.mark.parametrize("code", ["AccessDeniedException", "AccessDenied", "UnauthorizedOperation"])
def test_access_denied_on_claim_is_a_fatal_error_and_the_handler_does_not_run(client, code):
    # Given a table the role may not write
    stubber = Stubber(client)
    stubber.add_client_error("put_item", service_error_code=code, http_status_code=400, service_message="no")
    guard = IdempotencyGuard(store=DynamoDBIdempotencyStore(client=client, table_name="idem"), lease_s=60)
    calls = []
    # When a message is claimed
    with stubber, pytest.raises(AccessDeniedError) as caught:
        guard.run("k", lambda: calls.append(1))
    # Then the handler did not run, and the error is fatal, in one sentence that says what to grant
    assert calls == []
    assert isinstance(caught.value, FatalError)
    assert "dynamodb:PutItem" in str(caught.value) and "idem" in str(caught.value) and "\n" not in str(caught.value)


def test_a_fatal_error_while_handling_stops_the_worker_and_returns_the_message():
    # Given a worker whose idempotency store refuses every claim
    class Denied(MemoryIdempotencyStore):
        def claim(self, key, **kwargs):
            raise AccessDeniedError("DynamoDB table idem refused dynamodb:PutItem: grant it")

    queue = StubQueue()
    for i in range(3):
        queue.put({"mediaType": OrderPlaced.MEDIA_TYPE, "order_id": f"o-{i}"})
    handled = []
    registry = HandlerRegistry({OrderPlaced.MEDIA_TYPE: handled.append}, idempotent=[OrderPlaced.MEDIA_TYPE])
    dispatcher = SQSMessageDispatcher(handler_registry=registry, middleware=[IdempotencyGuard(store=Denied())])
    worker = Worker(consumer=queue.consumer(), dispatcher=dispatcher, grace_period_s=1)
    # When it runs, Then it stops by itself and run() raises the error
    with pytest.raises(AccessDeniedError, match="grant it"):
        worker.run()
    # And no handler ran, and every message is back in the queue, visible
    assert handled == []
    assert queue.depth == 3
    assert len(queue.receive(max_messages=10, wait_time_seconds=0)) == 3


def test_the_store_error_is_a_configuration_error(client):
    stubber = Stubber(client)
    stubber.add_client_error("delete_item", service_error_code="AccessDeniedException", http_status_code=400)
    store = DynamoDBIdempotencyStore(client=client, table_name="idem")
    with stubber, pytest.raises(AccessDeniedError) as caught:
        store.release("k", token="t")
    assert isinstance(caught.value, ConfigurationError)
    assert "dynamodb:DeleteItem" in str(caught.value)


def test_a_probe_at_start_refuses_a_table_the_role_may_not_use(client):
    # Given a role that may read the table but not delete from it
    stubber = Stubber(client)
    stubber.add_response("get_item", {}, {"TableName": "idem", "Key": ANY, "ConsistentRead": True})
    stubber.add_client_error("put_item", service_error_code="ConditionalCheckFailedException", http_status_code=400)
    stubber.add_client_error("delete_item", service_error_code="AccessDeniedException", http_status_code=400)
    guard = IdempotencyGuard(store=DynamoDBIdempotencyStore(client=client, table_name="idem"), lease_s=60)
    # When the daemon checks the store at start, Then it is refused with one sentence
    with stubber, pytest.raises(AccessDeniedError, match="dynamodb:DeleteItem"):
        guard.check_store()


def test_the_probe_passes_when_every_call_is_allowed(client):
    stubber = Stubber(client)
    stubber.add_response("get_item", {}, {"TableName": "idem", "Key": ANY, "ConsistentRead": True})
    stubber.add_client_error("put_item", service_error_code="ConditionalCheckFailedException", http_status_code=400)
    stubber.add_client_error("delete_item", service_error_code="ConditionalCheckFailedException", http_status_code=400)
    guard = IdempotencyGuard(store=DynamoDBIdempotencyStore(client=client, table_name="idem"), lease_s=60)
    with stubber:
        guard.check_store()
        stubber.assert_no_pending_responses()


def test_a_denied_complete_is_logged_as_an_error_and_does_not_fail_the_handled_message(client, caplog):
    stubber = Stubber(client)
    stubber.add_response("put_item", {})  # the claim
    stubber.add_client_error("put_item", service_error_code="AccessDeniedException", http_status_code=400)
    guard = IdempotencyGuard(store=DynamoDBIdempotencyStore(client=client, table_name="idem"), lease_s=60)
    with stubber, caplog.at_level(logging.ERROR):
        assert guard.run("k", lambda: "done") == "done"
    assert any("dynamodb:PutItem" in r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)
