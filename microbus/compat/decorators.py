"""``microcosm_pubsub.decorators``: ``@handles`` and ``@schema``."""

from microbus.consume.handlers import handles
from microbus.wire.schemas import schema

__all__ = ["handles", "schema"]
