"""The media type → schema registry (``@schema``)."""

from __future__ import annotations

from collections.abc import Container
from typing import TYPE_CHECKING, TypeVar

from microcosm.api import defaults

from microbus.errors import ConfigurationError, UnknownMediaTypeError
from microbus.wire.codecs import PubSubMessageCodec, PubSubMessageSchema
from microbus.wire.conventions import convention_schema
from microbus.wire.sanitize import log_repr

if TYPE_CHECKING:
    from microcosm.object_graph import ObjectGraph

SchemaT = TypeVar("SchemaT", bound=type[PubSubMessageSchema])

_schemas: dict[str, type[PubSubMessageSchema]] = {}


def schema(cls: SchemaT) -> SchemaT:
    """Register a schema class under its ``MEDIA_TYPE``.

    Raises:
        ConfigurationError: another schema class already claims that media type.
    """
    media_type = cls.MEDIA_TYPE
    known = _schemas.get(media_type)
    if known is not None and known.__qualname__ != cls.__qualname__:
        raise ConfigurationError(
            f"Media type {media_type!r} is declared by both {known.__qualname__} and {cls.__qualname__}: "
            "give one of them another MEDIA_TYPE."
        )
    _schemas[media_type] = cls
    return cls


def wildcard_of(media_type: str) -> str | None:
    """The wildcard media type that would match ``media_type``: its last dot-separated part replaced by ``*``
    (``application/vnd.globality.pubsub._.created.foo.*`` matches ``…created.foo.bar``, not ``…foo.bar.baz``),
    as microcosm-pubsub matches them; None for a media type without a dot, or one that is a wildcard itself."""
    prefix, dot, last = media_type.rpartition(".")
    if not dot or not prefix or last == "*":
        return None
    return f"{prefix}.*"


def match_media_type(media_type: str, known: Container[str]) -> str | None:
    """The registered media type that ``media_type`` matches: itself, else its wildcard (:func:`wildcard_of`)."""
    if media_type in known:
        return media_type
    wildcard = wildcard_of(media_type)
    return wildcard if wildcard is not None and wildcard in known else None


def media_type_of(target: str | type[PubSubMessageSchema]) -> str:
    """Return the media type named by a media type string or a schema class."""
    if isinstance(target, str):
        return target
    return target.MEDIA_TYPE


class SchemaRegistry:
    """Finds the codec for a media type among the registered schemas.

    With ``auto_register``, a convention media type (one with a ``created``, ``changed`` or ``deleted`` part, see
    :mod:`microbus.wire.conventions`) without a schema of its own gets its convention schema, as in
    microcosm-pubsub (where it is on by default).
    """

    def __init__(
        self, schemas: dict[str, type[PubSubMessageSchema]] | None = None, *, auto_register: bool = False
    ) -> None:
        self._schemas = _schemas if schemas is None else schemas
        self._codecs: dict[str, PubSubMessageCodec] = {}
        self.auto_register = auto_register

    def find(self, media_type: str) -> PubSubMessageCodec:
        """Return the codec of a media type: its own schema's, else the schema of its wildcard media type
        (``prefix.*``, see :func:`wildcard_of`).

        Raises:
            UnknownMediaTypeError: no schema is registered for it.
        """
        codec = self._codecs.get(media_type)
        if codec is None:
            registered = match_media_type(media_type, self._schemas)
            cls = self._schemas.get(registered) if registered is not None else None
            if cls is None and self.auto_register:
                cls = convention_schema(media_type)
            if cls is None:
                raise UnknownMediaTypeError(f"No schema is registered for media type {log_repr(media_type)}")
            key = registered or f"convention:{cls.__name__}"  # one codec per schema, however many media types
            codec = self._codecs.get(key) or PubSubMessageCodec(cls())
            self._codecs[key] = codec
        return codec

    def __contains__(self, media_type: object) -> bool:
        if not isinstance(media_type, str):
            return False
        known = match_media_type(media_type, self._schemas) is not None
        return known or (self.auto_register and convention_schema(media_type) is not None)

    @property
    def media_types(self) -> list[str]:
        """All registered media types."""
        return sorted(self._schemas)


@defaults(auto_register=False)
def configure_schema_registry(graph: ObjectGraph) -> SchemaRegistry:
    """microcosm factory: ``graph.microbus_pubsub_message_schema_registry``; ``auto_register`` gives convention
    media types their convention schemas (microcosm-pubsub's default)."""
    auto_register = graph.config.microbus_pubsub_message_schema_registry.auto_register
    if isinstance(auto_register, str):
        auto_register = auto_register.strip().lower() in ("1", "true", "yes", "on")
    return SchemaRegistry(auto_register=bool(auto_register))
