"""The dispatcher's middleware hooks: order, outcome changes, and a raising hook."""

from __future__ import annotations

from microbus.consume.dispatch import Middleware, Outcome, RetryPolicy, SQSMessageDispatcher
from microbus.consume.handlers import HandlerRegistry
from microbus.consume.message import SQSMessage

MEDIA_TYPE = "application/vnd.test.thing"


def make_message(receive_count: int = 1) -> SQSMessage:
    return SQSMessage(
        consumer=None,
        message_id="m-1",
        receipt_handle="r-1",
        body="{}",
        approximate_receive_count=receive_count,
        media_type=MEDIA_TYPE,
        content={"media_type": MEDIA_TYPE, "opaque_data": {}},
    )


class Recorder(Middleware):
    def __init__(self, name: str, calls: list) -> None:
        self.name = name
        self.calls = calls

    def before_handle(self, message):
        self.calls.append((self.name, "before", message.message_id))

    def after_handle(self, message, result):
        self.calls.append((self.name, "after", result.outcome))


def dispatcher(handler, *middleware, max_attempts=5) -> SQSMessageDispatcher:
    return SQSMessageDispatcher(
        handler_registry=HandlerRegistry({MEDIA_TYPE: handler}),
        retry_policy=RetryPolicy(jitter=False, max_attempts=max_attempts),
        middleware=middleware,
    )


def test_hooks_run_around_the_handler_in_order_and_see_the_final_outcome():
    # Given two middleware and a handler that raises on its last allowed attempt
    calls: list = []

    def handler(content):
        calls.append(("handler",))
        raise ValueError("boom")

    subject = dispatcher(handler, Recorder("a", calls), Recorder("b", calls), max_attempts=3)
    # When the message is handled
    result = subject.handle(make_message(receive_count=3))
    # Then before hooks run in order, after hooks in reverse, and they see EXPIRED, not FAILED
    assert calls == [
        ("a", "before", "m-1"),
        ("b", "before", "m-1"),
        ("handler",),
        ("b", "after", Outcome.EXPIRED),
        ("a", "after", Outcome.EXPIRED),
    ]
    assert result.outcome is Outcome.EXPIRED


def test_after_handle_may_turn_a_failure_into_an_ack():
    # Given a middleware that marks failures as handled elsewhere
    class Absorb(Middleware):
        def after_handle(self, message, result):
            if result.outcome is Outcome.FAILED:
                result.outcome, result.reason = Outcome.SKIPPED, "failure-reported"

    def handler(content):
        raise ValueError("boom")

    # When the handler fails
    result = dispatcher(handler, Absorb()).handle(make_message())
    # Then the outcome is an ack, the error is kept for the log
    assert result.outcome is Outcome.SKIPPED
    assert result.reason == "failure-reported"
    assert isinstance(result.error, ValueError)


def test_a_raising_after_hook_turns_success_into_a_retry_with_backoff():
    # Given a middleware whose after hook raises
    class Broken(Middleware):
        def after_handle(self, message, result):
            raise RuntimeError("hook bug")

    # When a handler succeeds
    result = dispatcher(lambda content: True, Broken()).handle(make_message())
    # Then the message is retried, not acked, and not lost
    assert result.outcome is Outcome.FAILED
    assert result.reason == "middleware-error"
    assert result.retry_after_s >= 1


def test_a_raising_after_hook_never_turns_a_dead_letter_into_a_retry():
    class Broken(Middleware):
        def after_handle(self, message, result):
            raise RuntimeError("hook bug")

    # Given a message that can never succeed (its handler is missing)
    poison = make_message()
    poison.media_type = "application/vnd.nobody"
    result = dispatcher(lambda content: True, Broken()).handle(poison)
    # Then it still goes to the dead-letter queue
    assert result.outcome is Outcome.REJECTED


def test_without_middleware_the_outcome_is_unchanged():
    assert dispatcher(lambda content: {"ok": 1}).handle(make_message()).response == {"ok": 1}
