"""``@schema`` and ``@handles``, importable from where microcosm-pubsub users look for them."""

from microbus.consume.handlers import handles
from microbus.wire.schemas import schema

__all__ = ["handles", "schema"]
