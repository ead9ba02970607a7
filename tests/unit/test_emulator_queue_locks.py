"""The embedded emulator's SQS queues: moto rebuilds a queue's message list on each delete without a lock, so
deletes (and sends) at once lose updates: a deleted message comes back in flight, later visible again and
delivered twice (on a FIFO queue after the rest of its group). The emulator locks each queue's list.

In-process against moto's backend (the emulator's server runs the same code), with a tiny thread switch interval
so that the threads interleave inside moto's loops.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator

import pytest
from moto.sqs.models import Queue, SQSBackend

from microbus.testing.emulator import _cheap_sqs_retention_check, _serialize_sqs_queues

ACCOUNT = "123456789012"


@pytest.fixture
def switch_often() -> Iterator[None]:
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


@pytest.fixture
def locked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Queue, "delete_message", Queue.delete_message)
    monkeypatch.setattr(SQSBackend, "receive_message", SQSBackend.receive_message)
    _serialize_sqs_queues()


def in_flight(backend: SQSBackend, count: int) -> list[str]:
    backend.create_queue("q")
    for index in range(count):
        backend.send_message("q", f"m-{index}")
    handles: list[str] = []
    while len(handles) < count:
        received = backend.receive_message("q", 10, 0, 60)
        handles.extend(message.receipt_handle for message in received)  # type: ignore[misc]
    return handles


def delete_concurrently(backend: SQSBackend, handles: list[str], threads: int = 4) -> None:
    def delete(mine: list[str]) -> None:
        for handle in mine:
            backend.delete_message("q", handle)

    workers = [threading.Thread(target=delete, args=(handles[i::threads],)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)


@pytest.mark.timeout(120)
def test_deletes_at_once_delete_every_message(locked, switch_often):
    backend = SQSBackend(region_name="us-east-1", account_id=ACCOUNT)
    handles = in_flight(backend, 300)
    delete_concurrently(backend, handles)
    assert len(backend.get_queue("q")._messages) == 0


@pytest.mark.timeout(120)
def test_a_message_sent_while_others_are_deleted_stays(locked, switch_often):
    backend = SQSBackend(region_name="us-east-1", account_id=ACCOUNT)
    handles = in_flight(backend, 300)
    sender = threading.Thread(target=lambda: [backend.send_message("q", f"new-{i}") for i in range(100)])
    sender.start()
    delete_concurrently(backend, handles)
    sender.join(60)
    assert sorted(m.body for m in backend.get_queue("q")._messages) == sorted(f"new-{i}" for i in range(100))


@pytest.fixture
def cheap_retention(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        SQSBackend, "is_message_valid_based_on_retention_period", SQSBackend.is_message_valid_based_on_retention_period
    )
    _cheap_sqs_retention_check()


def test_the_retention_check_still_drops_a_message_past_its_retention_period(cheap_retention):
    backend = SQSBackend(region_name="us-east-1", account_id=ACCOUNT)
    backend.create_queue("q", MessageRetentionPeriod="60")
    backend.send_message("q", "old")
    backend.send_message("q", "new")
    old = next(m for m in backend.get_queue("q")._messages if m.body == "old")
    old.sent_timestamp -= 61_000  # sent 61 s before the others: past the 60 s retention
    received = [m.body for _ in range(3) for m in backend.receive_message("q", 10, 0, 30)]  # moto: one per call
    assert received == ["new"]
