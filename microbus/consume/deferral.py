"""Deferral: how a message that is not due yet (``x-microbus-deliver-at``) waits without using up attempts.

Every receive raises SQS's ``ApproximateReceiveCount``, which drives both microbus's attempt limit and the
queue's redrive policy (a message received more than ``maxReceiveCount`` times is moved to the DLQ). Hiding an
early message again (ChangeMessageVisibility, up to 12 h) costs one receive per 12 h, so a message deferred
long enough would be dead-lettered unhandled, and its first real attempt would start with the deferrals counted.
So a deferral either:

- **hides** the message (ChangeMessageVisibility) while the receive count leaves room: the next receive is
  still two below the limit; or
- **re-sends** it: a new SQS message with the same body and message attributes (the SNS envelope, the S3
  pointer and the due time unchanged), then the original is deleted — only once SQS took the copy. The copy's
  receive count starts again at 1.

On a standard queue the last leg is always a re-send with ``DelaySeconds`` (≤ 15 min), so the first real
attempt is attempt 1: the hides stop 15 minutes before the due time. On a FIFO queue (no per-message delay)
the message is hidden until due, keeping its place at the head of its group (the group waits, as it waits for
any message in flight), and re-sent to the end of its group only when the receive count would otherwise reach
the limit; its first real attempt then counts the hides since the last re-send.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MAX_VISIBILITY_S = 43_200
"""SQS's longest visibility timeout (12 h)."""
MAX_DELAY_S = 900
"""SQS's longest per-message ``DelaySeconds`` (15 min): the length of a standard queue's last leg."""


@dataclass(frozen=True)
class Deferral:
    """How an early message waits: re-sent with ``seconds`` of delay, or hidden for ``seconds``."""

    resend: bool
    seconds: int


def plan_deferral(*, remaining_s: float, receive_count: int, receive_limit: int, fifo: bool) -> Deferral:
    """How a message due in ``remaining_s`` (> 0) waits, given its receive count and the queue's limit.

    ``receive_limit`` is the queue's redrive ``maxReceiveCount`` (else the dispatcher's attempt limit). A hide
    is allowed while the next receive stays below the limit (``receive_count + 2 <= receive_limit``). A
    message with a receive count of 1 is never re-sent without a delay: a copy would be no fresher, and
    re-sending it at once would loop.
    """
    wait = max(1, math.ceil(remaining_s))
    room = receive_count + 2 <= receive_limit
    if fifo:
        if room or receive_count <= 1:
            return Deferral(resend=False, seconds=min(MAX_VISIBILITY_S, wait))
        return Deferral(resend=True, seconds=0)
    if wait <= MAX_DELAY_S:
        return Deferral(resend=True, seconds=wait)
    if room:
        return Deferral(resend=False, seconds=min(MAX_VISIBILITY_S, max(1, math.ceil(remaining_s - MAX_DELAY_S))))
    return Deferral(resend=True, seconds=0 if receive_count > 1 else MAX_DELAY_S)
