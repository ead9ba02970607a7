"""The deferral policy: hide while the receive count leaves room, re-send for the last leg and near the limit."""

from __future__ import annotations

import pytest

from microbus.consume.deferral import MAX_DELAY_S, MAX_VISIBILITY_S, Deferral, plan_deferral


def plan(remaining_s, receive_count=1, receive_limit=5, fifo=False):
    return plan_deferral(remaining_s=remaining_s, receive_count=receive_count, receive_limit=receive_limit, fifo=fifo)


def test_a_long_wait_is_hidden_for_12_hours_then_until_15_minutes_before_it_is_due():
    assert plan(3 * 86_400) == Deferral(resend=False, seconds=MAX_VISIBILITY_S)
    assert plan(3_600.2) == Deferral(resend=False, seconds=2_701)


@pytest.mark.parametrize("remaining_s, delay_s", [(900, 900), (899.5, 900), (2.1, 3), (0.001, 1)])
def test_the_last_15_minutes_are_a_re_sent_copy_delayed_until_due(remaining_s, delay_s):
    assert plan(remaining_s, receive_count=3) == Deferral(resend=True, seconds=delay_s)


def test_near_the_receive_limit_the_message_is_re_sent_at_once_instead_of_hidden():
    # the next receive (4) would leave none before the limit (5): a fresh copy, received at once and hidden
    assert plan(86_400, receive_count=3).resend is False
    assert plan(86_400, receive_count=4) == Deferral(resend=True, seconds=0)
    assert plan(86_400, receive_count=9) == Deferral(resend=True, seconds=0)


def test_with_no_room_at_all_a_fresh_message_waits_in_15_minute_copies_not_in_a_loop():
    assert plan(86_400, receive_count=1, receive_limit=1) == Deferral(resend=True, seconds=MAX_DELAY_S)


def test_on_a_fifo_queue_the_message_is_hidden_until_due_and_re_sent_only_near_the_limit():
    assert plan(30, fifo=True) == Deferral(resend=False, seconds=30)
    assert plan(3 * 86_400, fifo=True) == Deferral(resend=False, seconds=MAX_VISIBILITY_S)
    assert plan(30, receive_count=4, fifo=True) == Deferral(resend=True, seconds=0)
    # a fresh copy is hidden even without room: re-sending it again would loop
    assert plan(30, receive_count=1, receive_limit=1, fifo=True) == Deferral(resend=False, seconds=30)
