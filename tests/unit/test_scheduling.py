"""The scheduler alone: concurrency, order of receipt, FIFO groups, release after a failure, close."""

from __future__ import annotations

from microbus.consume.lifecycle import MessageState, Tracked
from microbus.consume.message import SQSMessage
from microbus.consume.scheduling import Scheduler


def msg(name: str, group: str | None = None) -> Tracked:
    return Tracked(SQSMessage(None, name, f"rh-{name}", "{}", message_group_id=group))


def names(batch: list[Tracked]) -> list[str]:
    return [t.message.message_id for t in batch]


def test_at_most_concurrency_run_in_order_of_receipt():
    scheduler = Scheduler(2)
    a, b, c = msg("a"), msg("b"), msg("c")
    started, refused = scheduler.add([a, b, c])
    assert names(started) == ["a", "b"] and refused == []
    assert c.state is MessageState.WAITING and a.state is MessageState.RUNNING
    started, released = scheduler.finished(a, retried=False)
    assert names(started) == ["c"] and released == []


def test_one_message_of_a_group_at_a_time_and_other_groups_go_ahead():
    scheduler = Scheduler(4)
    a1, a2, b1, a3 = msg("a1", "A"), msg("a2", "A"), msg("b1", "B"), msg("a3", "A")
    started, _ = scheduler.add([a1, a2, b1, a3])
    assert names(started) == ["a1", "b1"]
    started, _ = scheduler.finished(a1, retried=False)
    assert names(started) == ["a2"]
    started, _ = scheduler.finished(a2, retried=False)
    assert names(started) == ["a3"]


def test_a_retried_message_takes_its_groups_later_messages_out_and_leaves_other_groups():
    scheduler = Scheduler(1)
    a1, a2, b1, a3 = msg("a1", "A"), msg("a2", "A"), msg("b1", "B"), msg("a3", "A")
    scheduler.add([a1, a2, b1, a3])
    started, released = scheduler.finished(a1, retried=True)
    assert names(released) == ["a2", "a3"]
    assert names(started) == ["b1"]
    assert scheduler.waiting == 0


def test_close_returns_the_waiting_and_refuses_new_ones():
    scheduler = Scheduler(1)
    a, b = msg("a"), msg("b")
    scheduler.add([a, b])
    assert names(scheduler.close()) == ["b"]
    started, refused = scheduler.add([msg("c")])
    assert started == [] and names(refused) == ["c"]
    started, _ = scheduler.finished(a, retried=False)
    assert started == []
    assert scheduler.wait_idle(0.1) == 0
