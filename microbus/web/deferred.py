"""Deferred publish: messages produced in a block are published in batches when it exits without raising.

Inside :func:`deferred_publish` every publish of an :class:`~microbus.produce.producer.SNSProducer` in the same
context (thread or asyncio task) is validated at once and kept; the outermost block publishes them with
PublishBatch when it ends normally, and drops them when it raises. A nested block joins the outer one, like a
savepoint: its messages are published by the outermost block, and dropped alone when it raises.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from types import TracebackType
from typing import Any, TypeVar, cast

from microbus.produce.producer import (
    MessageCapture,
    OutgoingMessage,
    SNSProducer,
    _capture,
    capturing,
    current_capture,
)

logger = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])
_Block = tuple["Deferral", int, Any]
"""An open block: the deferral it adds to, how many messages it held at the start, the token to undo (outermost)."""
_blocks: ContextVar[tuple[_Block, ...]] = ContextVar("microbus_deferred_blocks", default=())
"""The open blocks of this context, innermost last: one instance may be entered in several threads or tasks."""


class Deferral:
    """The messages kept by the outermost deferred block of a context, in the order produced.

    Parameters:
        outer: the capture around the block (an outbox transaction, an outer deferral), which takes the messages
            when they are published; None: SNS.
    """

    def __init__(self, outer: MessageCapture | None = None) -> None:
        self.outer = outer
        self.messages: list[tuple[SNSProducer, OutgoingMessage]] = []

    def capture(self, producer: SNSProducer, messages: Sequence[OutgoingMessage]) -> None:
        """Keep messages until :meth:`publish`."""
        self.messages.extend((producer, message) for message in messages)

    def discard(self, keep: int = 0) -> None:
        """Drop the messages kept after the first ``keep``."""
        del self.messages[keep:]

    def publish(self) -> list[str]:
        """Publish what was kept (each producer's run of messages with PublishBatch, in order); return SNS ids.

        Raises:
            PublishError: some messages were not published after retries (the others were).
        """
        messages, self.messages = self.messages, []
        ids: list[str] = []
        start = 0
        with capturing(self.outer):
            while start < len(messages):
                producer = messages[start][0]
                end = start
                while end < len(messages) and messages[end][0] is producer:
                    end += 1
                ids += producer.publish_many([message for _, message in messages[start:end]])
                start = end
        if messages:
            logger.debug("Published %d deferred message(s)", len(messages))
        return ids


class deferred_publish:  # noqa: N801 - used as a function and a decorator, like contextlib's
    """Context manager and decorator: publish the messages produced inside when the block ends normally.

    ``with deferred_publish():`` or ``@deferred_publish()`` (on a ``def`` or an ``async def``). In an
    ``async def``, the final publish runs on a thread, so the event loop is not blocked. The block's exception,
    if any, propagates; a failed publish at the end raises :class:`~microbus.errors.PublishError` (some
    messages may be published: it says which were not).
    """

    @property
    def deferral(self) -> Deferral:
        """The deferral the innermost open block of this context adds to (the outermost block's)."""
        return _blocks.get()[-1][0]

    def __enter__(self) -> deferred_publish:
        self._begin()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        deferral, to_publish = self._end(exc_type is None)
        if to_publish:
            deferral.publish()

    async def __aenter__(self) -> deferred_publish:
        self._begin()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        deferral, to_publish = self._end(exc_type is None)
        if to_publish:
            await asyncio.to_thread(deferral.publish)

    def __call__(self, func: F) -> F:
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                async with deferred_publish():
                    return await func(*args, **kwargs)

            return cast(F, async_wrapper)

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with deferred_publish():
                return func(*args, **kwargs)

        return cast(F, wrapper)

    def _begin(self) -> None:
        outer = current_capture()
        if isinstance(outer, Deferral):
            block: _Block = (outer, len(outer.messages), None)
        else:
            deferral = Deferral(outer)
            block = (deferral, 0, _capture.set(deferral))
        _blocks.set((*_blocks.get(), block))

    def _end(self, succeeded: bool) -> tuple[Deferral, bool]:
        """Leave the block; return its deferral and whether to publish it now (the outermost block succeeded)."""
        *others, (deferral, mark, token) = _blocks.get()
        _blocks.set(tuple(others))
        if token is None:  # nested: the outer block publishes
            if not succeeded:
                deferral.discard(mark)
            return deferral, False
        _restore(token)
        if not succeeded:
            deferral.discard()
        return deferral, succeeded and bool(deferral.messages)


def _restore(token: Any) -> None:
    """Undo the capture set by a block; a block left in another context (rare) clears that context's instead."""
    try:
        _capture.reset(token)
    except ValueError:
        _capture.set(token.old_value if token.old_value is not token.MISSING else None)


def begin_deferral() -> tuple[Deferral, Callable[[], None]]:
    """Start deferring this context's publishes (a web request); return the deferral and how to stop.

    For framework integrations whose request has no single ``with`` block: call the returned function when the
    request ends (it restores the context and drops what was not published). ``Deferral.publish`` hands the
    messages to whatever capture was around (an enclosing deferred block, an outbox), else SNS.
    """
    deferral = Deferral(current_capture())
    token = _capture.set(deferral)

    def end() -> None:
        _restore(token)
        deferral.discard()

    return deferral, end


__all__ = ["Deferral", "MessageCapture", "begin_deferral", "capturing", "deferred_publish"]
