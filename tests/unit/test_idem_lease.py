"""The idempotency lease is never renewed, so a daemon whose handlers may outlast it is refused at start."""

from __future__ import annotations

import logging

import pytest

from microbus import ConsumerDaemon
from microbus.consume import handlers as registrations
from microbus.consume.handlers import handles
from microbus.errors import ConfigurationError
from microbus.patterns.idempotency import IdempotencyGuard, MemoryIdempotencyStore

MEDIA_TYPE = "application/vnd.test.idem.lease"


@pytest.fixture
def idempotent_handler():
    """An idempotent ``@handles`` registration, forgotten after the test."""
    saved, saved_idempotent = dict(registrations._handlers), set(registrations._idempotent)
    handles(MEDIA_TYPE, idempotent=True)(print)
    yield
    registrations._handlers.clear()
    registrations._handlers.update(saved)
    registrations._idempotent.clear()
    registrations._idempotent.update(saved_idempotent)


def daemon(handler_timeout: float | None, lease_s: float) -> ConsumerDaemon:
    class SlowDaemon(ConsumerDaemon):
        name = "slow"
        media_types = (MEDIA_TYPE,)
        handler_timeout_s = handler_timeout

    return SlowDaemon(
        testing=True,
        microbus_sqs_consumer={"sqs_queue_url": "http://127.0.0.1:1/123456789012/slow", "wait_seconds": 0},
        aws={
            "endpoint_url": "http://127.0.0.1:1",
            "access_key_id": "test",
            "secret_access_key": "test",
            "max_attempts": 1,
            "connect_timeout_s": 0.2,
        },
        idempotency_guard={"lease_s": lease_s},
    )


def test_a_lease_shorter_than_the_handler_timeout_is_refused_at_start(idempotent_handler):
    # Given a daemon whose handlers may take 600 s, and a 300 s idempotency lease
    slow = daemon(handler_timeout=600.0, lease_s=300)
    # When its worker is created, Then it is refused with one sentence saying what to fix
    with pytest.raises(ConfigurationError) as caught:
        slow.create_worker()
    text = str(caught.value)
    assert "\n" not in text
    assert "300" in text and "600" in text and "idempotency_guard.lease_s" in text


def test_a_lease_at_least_the_handler_timeout_starts(idempotent_handler):
    # The queue and the table are unreachable here: their checks wait for the worker's start, as before.
    worker = daemon(handler_timeout=300.0, lease_s=300).create_worker()
    assert worker.dispatcher.handler_registry.idempotent


def test_the_guard_accepts_a_lease_at_least_the_handler_timeout_and_warns_without_one(caplog):
    guard = IdempotencyGuard(store=MemoryIdempotencyStore(), lease_s=300)
    guard.check_handler_timeout(300.0, daemon="d")
    with pytest.raises(ConfigurationError, match="lease"):
        guard.check_handler_timeout(301.0, daemon="d")
    with caplog.at_level(logging.WARNING, logger="microbus.patterns.idempotency"):
        guard.check_handler_timeout(None, daemon="d")
    assert "no handler timeout" in caplog.text and "300" in caplog.text
