"""AccessDenied from the idempotency table is a configuration error, not a transient outage: refused at start
by a probe, and at run time a long Nack with one ERROR sentence (not an endless backoff loop)."""

from __future__ import annotations

import logging

import boto3
import pytest
from botocore.stub import ANY, Stubber

from microbus.errors import AccessDeniedError, ConfigurationError, Nack
from microbus.patterns.idempotency import DynamoDBIdempotencyStore, IdempotencyGuard


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
def test_access_denied_on_claim_is_a_long_nack_with_one_error_sentence(client, code, caplog):
    # Given a table the role may not write
    stubber = Stubber(client)
    stubber.add_client_error("put_item", service_error_code=code, http_status_code=400, service_message="no")
    guard = IdempotencyGuard(store=DynamoDBIdempotencyStore(client=client, table_name="idem"), lease_s=60)
    calls = []
    # When a message is claimed
    with stubber, caplog.at_level(logging.ERROR), pytest.raises(Nack) as caught:
        guard.run("k", lambda: calls.append(1))
    # Then the handler did not run; the retry waits long (not the backoff); one ERROR says what to grant
    assert calls == []
    assert caught.value.visibility_timeout_seconds == guard.access_denied_retry_s >= 600
    assert "access denied" in str(caught.value).lower()
    (record,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "dynamodb:PutItem" in record.getMessage() and "idem" in record.getMessage()
    assert "\n" not in record.getMessage()


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
