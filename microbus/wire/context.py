"""The context of the message being handled: what travels from it to the messages its handler produces.

microcosm-pubsub keeps the inbound message's ``opaqueData`` in ``graph.opaque`` while a handler runs (its
``SQSMessageContext``) and merges it into every message published from there. microbus does the same with
one context variable, set by the dispatcher around every handler, sync or async, and read by the producer:

- the correlation id (``x-microbus-cid``): the inbound one, else the message's most stable id, so a
  message and everything produced from it share one cid (:func:`current_cid`);
- ``x-request-id`` and every other ``opaqueData`` entry the peer forwards, keys lower-cased as the peer
  sends them; microbus's own per-message keys (``x-microbus-…`` except the cid) and the publish time are
  not forwarded: they describe one message, not the flow;
- ``x-request-ttl``: the hops left, decremented once per hop (see :func:`parse_ttl`).

Context variables follow ``asyncio`` tasks and ``asyncio.run``; a thread a handler starts itself gets its
own empty context (pass ``contextvars.copy_context().run`` to it to keep the message's).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import Any

from microbus.wire.codecs import PUBLISHED_KEY, REQUEST_ID_KEY
from microbus.wire.frozen import frozen_value
from microbus.wire.sanitize import log_repr

CID_KEY = "x-microbus-cid"
TTL_KEY = "x-request-ttl"
MICROBUS_PREFIX = "x-microbus-"
DEFAULT_INITIAL_TTL = 32
"""microcosm-pubsub's ``sqs_message_context.initial_ttl``: the hops a message without a TTL starts with."""
MAX_FORWARDED_KEY_CHARS = 256
MAX_FORWARDED_VALUE_CHARS = 8192
MAX_FORWARDED_CHARS = 16_384
"""Longer opaqueData entries, and those beyond this total, are not forwarded: a message must not carry its
ancestors' bulk (or a hostile producer's) to SNS's 256 KiB limit."""
MAX_CID_CHARS = 256
"""A longer inbound cid is not taken: the message's own id is its cid instead."""
_TTL_TEXT = re.compile(r"\s*[+-]?\d{1,18}\s*")
_NOT_FORWARDED = frozenset((PUBLISHED_KEY, TTL_KEY))
_ABSENT = object()

_cid: ContextVar[str | None] = ContextVar("microbus_cid", default=None)
_message: ContextVar[MessageContext | None] = ContextVar("microbus_message_context", default=None)


class OpaqueData(dict[str, Any]):
    """``opaqueData`` with its keys lower-cased, as microcosm-pubsub sends them; lookups ignore case.

    Of two keys that differ only in case, the one already in lower case wins.
    """

    def __init__(self, data: Mapping[Any, Any] | None = None) -> None:
        if not data:  # no opaqueData: nothing to fold
            return
        super().__init__({key.casefold() if key.__class__ is str else key: value for key, value in data.items()})
        if len(self) < len(data):  # keys that differ only in case: the lower-case one wins
            for key, value in data.items():
                if key == _fold(key):
                    super().__setitem__(key, value)

    def __getitem__(self, key: Any) -> Any:
        return super().__getitem__(_fold(key))

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(_fold(key), value)

    def __delitem__(self, key: Any) -> None:
        super().__delitem__(_fold(key))

    def __contains__(self, key: object) -> bool:
        return super().__contains__(_fold(key))

    def get(self, key: Any, default: Any = None) -> Any:
        """The value of ``key`` in any case, else ``default``."""
        return super().get(_fold(key), default)

    def pop(self, key: Any, *default: Any) -> Any:
        """Remove ``key`` (in any case) and return its value."""
        return super().pop(_fold(key), *default)

    def copy(self) -> OpaqueData:
        """A shallow copy, keys already folded (not folded again)."""
        new = OpaqueData.__new__(OpaqueData)
        dict.update(new, self)
        return new


def _fold(key: Any) -> Any:
    return key.casefold() if isinstance(key, str) else key


@dataclass(frozen=True)
class MessageContext:
    """What the message being handled passes on to the messages produced while it is handled."""

    cid: str
    forwarded: dict[str, str] = field(default_factory=dict)
    """``opaqueData`` entries for produced messages (lower-case keys): the cid, request id, TTL and the rest."""
    ttl: int | None = None
    """Hops left for produced messages (None: TTL disabled); at 0 or below, the message itself has expired."""
    skipped: tuple[str, ...] = ()
    """Inbound keys not forwarded because their value is not a string or is too long."""
    malformed_ttl: str | None = None
    """The inbound ``x-request-ttl`` when it was not an integer (bounded for a log line); it counted as absent."""

    @property
    def request_id(self) -> str | None:
        """The inbound ``x-request-id``, if any."""
        return self.forwarded.get(REQUEST_ID_KEY)


def parse_ttl(value: Any) -> int | None:
    """An ``x-request-ttl`` value as an int; None when it is not one (a string of at most 18 digits, or an int).

    microcosm-pubsub fails the whole batch on a TTL ``int()`` cannot read; microbus treats it as absent.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if abs(value) < 10**18 else None
    if isinstance(value, str) and (value.isdecimal() and len(value) <= 18 or _TTL_TEXT.fullmatch(value)):
        return int(value)  # isdecimal: the characters \d matches, as the pattern without the sign and the spaces
    return None


def build_context(
    opaque_data: Mapping[str, Any], *, fallback_cid: str, initial_ttl: int | None = DEFAULT_INITIAL_TTL
) -> MessageContext:
    """The context of a message with this ``opaqueData``.

    ``initial_ttl`` None disables the TTL (nothing is decremented, nothing expires). The cid is the inbound
    ``x-microbus-cid`` when it is a non-empty string, else ``fallback_cid``.
    """
    opaque = opaque_data if isinstance(opaque_data, OpaqueData) else OpaqueData(opaque_data)
    forwarded: dict[str, str] = {}
    skipped = []
    room = MAX_FORWARDED_CHARS
    for key, value in opaque.items():
        if not isinstance(key, str) or key in _NOT_FORWARDED or (key.startswith(MICROBUS_PREFIX) and key != CID_KEY):
            continue
        if isinstance(value, str):
            size = len(key) + len(value)
            if (
                size
                and size <= room
                and len(key) <= MAX_FORWARDED_KEY_CHARS
                and len(value) <= MAX_FORWARDED_VALUE_CHARS
            ):
                forwarded[key] = value
                room -= size
                continue
        skipped.append(key)
    cid = forwarded.get(CID_KEY)
    if not cid or len(cid) > MAX_CID_CHARS:
        cid = fallback_cid
    forwarded[CID_KEY] = cid
    malformed: str | None = None
    ttl: int | None = None
    if initial_ttl is not None:
        raw_ttl = dict.get(opaque, TTL_KEY, _ABSENT)  # the keys are folded already
        inbound = initial_ttl if raw_ttl is _ABSENT else parse_ttl(raw_ttl)
        if inbound is None:
            malformed, inbound = log_repr(raw_ttl), initial_ttl
        ttl = inbound - 1
        forwarded[TTL_KEY] = str(ttl)
    return frozen_value(
        MessageContext, cid=cid, forwarded=forwarded, ttl=ttl, skipped=tuple(skipped), malformed_ttl=malformed
    )


class message_context:  # noqa: N801 - a context manager used as a function, as it was one
    """Make ``context`` (and its cid) current for the block: ``with message_context(context): ...``.

    A class rather than a generator: it is entered once per message, and this costs a fifth of a generator's.
    """

    __slots__ = ("_cid_token", "_context", "_message_token")

    def __init__(self, context: MessageContext) -> None:
        self._context = context

    def __enter__(self) -> MessageContext:
        self._message_token = _message.set(self._context)
        self._cid_token = _cid.set(self._context.cid)
        return self._context

    def __exit__(self, *exc_info: object) -> None:
        _cid.reset(self._cid_token)
        _message.reset(self._message_token)


def current_message_context() -> MessageContext | None:
    """The context of the message being handled here, else None."""
    return _message.get()


def current_cid() -> str | None:
    """The correlation id of the message, target or callback being handled in this context, else None."""
    return _cid.get()


def bind_cid(cid: str | None) -> Token[str | None]:
    """Make ``cid`` the current cid; pass the token to :func:`unbind_cid` when done."""
    return _cid.set(cid)


def unbind_cid(token: Token[str | None]) -> None:
    """Restore the cid that was current before :func:`bind_cid`."""
    _cid.reset(token)


def forwarded_opaque_data() -> dict[str, str]:
    """The ``opaqueData`` entries a message produced here inherits: the message context's, with the current
    cid (a callback's, say); empty outside any handler."""
    context = _message.get()
    forwarded = dict(context.forwarded) if context is not None else {}
    cid = _cid.get()
    if cid:
        forwarded[CID_KEY] = cid
    else:
        forwarded.pop(CID_KEY, None)
    return forwarded
