"""The settler on the stub queue: batches, concurrency, scheduled retries, dead-letter order, give-ups."""

from __future__ import annotations

import threading
import time

import pytest

from microbus import EventKind
from microbus.consume.lifecycle import Observers, Tracked
from microbus.consume.settle import Settler
from microbus.consume.supervision import Supervisor
from microbus.errors import EndpointUnreachableError
from microbus.testing import StubQueue, wait_for
from microbus.wire.transport import EntryFailure, OutgoingMessage


def held(queue: StubQueue, n: int) -> list[Tracked]:
    for i in range(n):
        queue.put({"mediaType": "x", "n": i})
    return [Tracked(m) for m in queue.consumer().consume(limit=n)]


class Outcomes:
    def __init__(self):
        self.done: dict[str, tuple[EventKind, str | None]] = {}
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self, ended):
        with self._lock:
            for tracked, kind, detail in ended:
                self.calls += 1
                self.done[tracked.message.message_id] = (kind, detail)


def settler(queue: StubQueue, outcomes: Outcomes, **options) -> tuple[Settler, Supervisor]:
    supervisor = Supervisor(queue_url=queue.queue_url, observers=Observers())
    options.setdefault("retry_base_s", 0.05)
    return Settler(transport=queue, dead_letters=queue, done=outcomes, supervisor=supervisor, **options), supervisor


@pytest.mark.timeout(30)
def test_a_transient_batch_failure_is_retried_while_other_batches_go_on():
    # Given a queue whose first delete call fails transiently
    class Flaky(StubQueue):
        failures = 1

        def delete_batch(self, handles):
            if self.failures:
                self.failures -= 1
                raise EndpointUnreachableError("down")
            return super().delete_batch(handles)

    queue, outcomes = Flaky(), Outcomes()
    messages = held(queue, 20)
    s, supervisor = settler(queue, outcomes)
    # When 20 deletes are asked for
    for tracked in messages:
        s.delete(tracked)
    # Then all are deleted, each reported once as settled, none given up
    wait_for(lambda: len(outcomes.done) == 20, timeout_s=10, what="every delete to settle")
    assert queue.depth == 0 and outcomes.calls == 20
    assert {kind for kind, _ in outcomes.done.values()} == {EventKind.SETTLED}
    assert s.close(1.0) == 0
    supervisor.stop()


@pytest.mark.timeout(30)
def test_a_stale_receipt_is_given_up_at_once_and_reported():
    queue, outcomes = StubQueue(), Outcomes()
    (tracked,) = held(queue, 1)
    queue.delete_batch([tracked.message.receipt_handle])  # deleted elsewhere: the receipt is stale
    s, supervisor = settler(queue, outcomes)
    s.delete(tracked)
    wait_for(lambda: outcomes.done, timeout_s=5)
    kind, detail = outcomes.done[tracked.message.message_id]
    assert kind is EventKind.SETTLE_FAILED and "ReceiptHandleIsInvalid" in detail
    s.close(1.0)
    supervisor.stop()


@pytest.mark.timeout(30)
def test_a_dead_letter_copy_is_sent_before_the_original_is_deleted_and_a_failed_send_is_retried():
    # Given a DLQ whose first send fails transiently
    class FlakyDlq(StubQueue):
        failures = 1

        def send_entries(self, messages):
            if self.failures:
                self.failures -= 1
                raise EndpointUnreachableError("down")
            assert self.depth == 1, "the original was deleted before its copy was sent"
            return super().send_entries(messages)

    queue, outcomes = FlakyDlq(), Outcomes()
    (tracked,) = held(queue, 1)
    s, supervisor = settler(queue, outcomes)
    # When the message is dead-lettered
    s.dead_letter(tracked, OutgoingMessage(key="k", body=tracked.message.body, attributes={}))
    # Then its copy is sent once, then the original deleted, and it is reported dead-lettered
    wait_for(lambda: outcomes.done, timeout_s=5)
    assert outcomes.done[tracked.message.message_id][0] is EventKind.DEAD_LETTERED
    assert len(queue.dead_letters) == 1 and queue.depth == 0
    s.close(1.0)
    supervisor.stop()


@pytest.mark.timeout(30)
def test_when_the_original_cannot_be_deleted_after_its_copy_the_failure_says_so():
    class Undeletable(StubQueue):
        def delete_batch(self, handles):
            return list(handles)

    queue, outcomes = Undeletable(), Outcomes()
    (tracked,) = held(queue, 1)
    s, supervisor = settler(queue, outcomes)
    s.dead_letter(tracked, OutgoingMessage(key="k", body=tracked.message.body, attributes={}))
    wait_for(lambda: outcomes.done, timeout_s=5)
    kind, detail = outcomes.done[tracked.message.message_id]
    assert kind is EventKind.SETTLE_FAILED and "copy sent, original not deleted" in detail
    s.close(1.0)
    supervisor.stop()


@pytest.mark.timeout(30)
def test_close_gives_up_on_what_cannot_be_settled_by_the_deadline():
    class Down(StubQueue):
        def delete_batch(self, handles):
            raise EndpointUnreachableError("down")

    queue, outcomes = Down(), Outcomes()
    messages = held(queue, 3)
    s, supervisor = settler(queue, outcomes, retry_base_s=0.2)
    for tracked in messages:
        s.delete(tracked)
    assert s.close(0.5) == 3
    wait_for(lambda: len(outcomes.done) == 3, timeout_s=5)
    assert {kind for kind, _ in outcomes.done.values()} == {EventKind.SETTLE_FAILED}
    supervisor.stop()


@pytest.mark.timeout(30)
def test_a_dead_letter_copy_refused_by_sqs_is_sent_again_with_the_reason_only():
    # Given a DLQ that refuses copies with many attributes (as SQS refuses a copy over its size limit)
    class Strict(StubQueue):
        def send_entries(self, messages):
            refused = {
                m.key: EntryFailure("InvalidParameterValue", "too long", True)
                for m in messages
                if len(m.attributes) > 3
            }
            super().send_entries([m for m in messages if m.key not in refused])
            return refused

    queue, outcomes = Strict(), Outcomes()
    (tracked,) = held(queue, 1)
    s, supervisor = settler(queue, outcomes)
    attributes = {
        f"microbus.{name}": {"DataType": "String", "StringValue": "x"} for name in ("reason", "daemon", "a", "b")
    }
    s.dead_letter(tracked, OutgoingMessage(key="k", body=tracked.message.body, attributes=attributes))
    # Then the copy lands once, with the reason, and the original is deleted
    wait_for(lambda: outcomes.done, timeout_s=5)
    assert outcomes.done[tracked.message.message_id][0] is EventKind.DEAD_LETTERED
    ((_, sent),) = queue.dead_letters
    assert set(sent) == {"microbus.reason", "microbus.trimmed"}
    assert queue.depth == 0
    s.close(1.0)
    supervisor.stop()


@pytest.mark.timeout(30)
def test_a_call_still_out_at_the_deadline_is_given_up_and_its_late_answer_ignored():
    # Given a delete call that hangs past the shutdown deadline
    class Hanging(StubQueue):
        def __post_init__(self):
            super().__post_init__()
            self.entered, self.answer = threading.Event(), threading.Event()

        def delete_batch(self, handles):
            self.entered.set()
            self.answer.wait(10)
            return super().delete_batch(handles)

    queue, outcomes = Hanging(), Outcomes()
    (tracked,) = held(queue, 1)
    s, supervisor = settler(queue, outcomes)
    s.delete(tracked)
    assert queue.entered.wait(5)
    # When the settler closes, Then the message is reported given up at once, exactly once
    assert s.close(0.2) == 1
    assert outcomes.done[tracked.message.message_id][0] is EventKind.SETTLE_FAILED
    queue.answer.set()
    wait_for(lambda: queue.depth == 0, timeout_s=5, what="the late delete")
    assert outcomes.calls == 1
    supervisor.stop()


@pytest.mark.timeout(60)
def test_deletes_from_many_threads_with_slow_calls_all_settle_once_and_lone_ones_are_not_left_waiting():
    # Given a queue whose delete calls take 20 ms, and a settler with 2 calls in flight at most
    class Slow(StubQueue):
        def delete_batch(self, handles):
            threading.Event().wait(0.02)
            return super().delete_batch(handles)

    queue, outcomes = Slow(), Outcomes()
    messages = held(queue, 400)
    s, supervisor = settler(queue, outcomes, max_in_flight=2, max_delay_s=0.05)
    # When 4 threads ask for the deletes at once, in bursts (full batches wait for a slot) ...
    chunks = [messages[i::4] for i in range(4)]

    def add(chunk):
        for tracked in chunk:
            s.delete(tracked)

    threads = [threading.Thread(target=add, args=(chunk,)) for chunk in chunks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Then every message is deleted and reported exactly once
    wait_for(lambda: len(outcomes.done) == 400, timeout_s=20, what="400 deletes")
    assert outcomes.calls == 400 and queue.depth == 0
    # And lone deletes asked for one by one, each while the flusher sleeps its idle second, go out within their
    # delay (plus the call), not at the flusher's next idle wake-up
    for tracked in held(queue, 3):
        wait_for(lambda: s._wake_at > time.monotonic() + 0.5, timeout_s=5, what="the flusher asleep, idle")
        asked = time.monotonic()
        s.delete(tracked)
        wait_for(lambda m=tracked.message.message_id: m in outcomes.done, timeout_s=2, what="a lone delete")
        assert time.monotonic() - asked < 0.5
    assert s.close(1.0) == 0 and outcomes.calls == 403
    supervisor.stop()


@pytest.mark.timeout(30)
def test_a_delete_that_races_the_close_still_ends():
    # Given a settler whose lock a delete waits for while the settling closes and its flusher stops
    class Announcing:
        """The settler's condition, telling when the deleting thread is about to take it."""

        def __init__(self, cond):
            self.cond, self.entering = cond, threading.Event()

        def __enter__(self):
            if threading.current_thread().name == "deleting":
                self.entering.set()
            return self.cond.__enter__()

        def __exit__(self, *exc):
            return self.cond.__exit__(*exc)

        def __getattr__(self, name):
            return getattr(self.cond, name)

    queue, outcomes = StubQueue(), Outcomes()
    (tracked,) = held(queue, 1)
    s, supervisor = settler(queue, outcomes)
    supervisor.stop()  # the flusher is gone too, as after a worker's join: nothing else would end a late entry
    s._cond = announcing = Announcing(s._cond)
    with announcing.cond:
        deleting = threading.Thread(target=s.delete, args=(tracked,), name="deleting", daemon=True)
        deleting.start()
        assert announcing.entering.wait(5)
        # When the settling closes before the delete gets the lock
        s.close(0.1)
    deleting.join(5)
    # Then the delete ends anyway, as given up (not left live for ever, never reported)
    wait_for(lambda: outcomes.done, timeout_s=2, what="the delete to end")
    ended = outcomes.done[tracked.message.message_id]
    assert ended == (EventKind.SETTLE_FAILED, "finished after the shutdown deadline")
