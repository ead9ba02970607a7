"""``microcosm_pubsub.errors``: the control-flow exceptions handlers raise, and the producer's error."""

from microbus.errors import IgnoreMessage, Nack, SkipMessage, TopicNotDefinedError

__all__ = ["IgnoreMessage", "Nack", "SkipMessage", "TopicNotDefinedError"]
