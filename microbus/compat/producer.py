"""``microcosm_pubsub.producer``: the producer, deferred production, and the ``deferred`` decorators.

``deferred_batch`` publishes the block's messages with SNS PublishBatch (up to 10 a call), each an ordinary
message; microcosm-pubsub's packs them into one ``…created.batch_message`` message instead, which only its own
consumers unpack.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from microbus.produce.producer import DeferredProducer, SNSProducer

F = TypeVar("F", bound=Callable[..., Any])


def deferred(component: Any, key: str = "sns_producer") -> Callable[[F], F]:
    """Defer what the decorated function produces through ``component.<key>`` until it returns without raising.

    ``component`` has a ``graph`` (a microcosm component); while the function runs, ``component.<key>`` is a
    :class:`DeferredProducer` that validates each message at once and publishes them all at the end, in
    PublishBatch calls. Nothing is published when the function raises.
    """
    producer: SNSProducer = getattr(component.graph, key)

    def decorator(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                with producer.deferred() as deferred_producer:
                    setattr(component, key, deferred_producer)
                    return func(*args, **kwargs)
            finally:
                setattr(component, key, producer)

        return wrapper  # type: ignore[return-value]

    return decorator


deferred_batch = deferred
"""The same as :func:`deferred`: microbus always publishes deferred messages in batches."""

__all__ = ["DeferredProducer", "SNSProducer", "deferred", "deferred_batch"]
