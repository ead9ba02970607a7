"""``microcosm_pubsub.codecs``: the message schema base and the codec.

:class:`PubSubMessageSchema` here drops fields it does not declare when producing, as microcosm-pubsub's does
(its registry builds every schema with ``unknown=EXCLUDE``); :class:`microbus.PubSubMessageSchema` refuses them.
"""

from marshmallow import EXCLUDE

from microbus.wire.codecs import DEFAULT_MEDIA_TYPE, PubSubMessageCodec
from microbus.wire.codecs import PubSubMessageSchema as _StrictSchema


class PubSubMessageSchema(_StrictSchema):
    """Base schema of a message: ``MEDIA_TYPE`` and the fields; undeclared fields are dropped on produce."""

    class Meta:
        unknown = EXCLUDE


__all__ = ["DEFAULT_MEDIA_TYPE", "PubSubMessageCodec", "PubSubMessageSchema"]
