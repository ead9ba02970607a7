"""``@schema`` and ``@handles``, importable from where microcosm-pubsub users look for them."""

from microbus.registry import handles, schema

__all__ = ["handles", "schema"]
