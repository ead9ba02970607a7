"""The media type → schema registry (``@schema``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

from microbus.errors import ConfigurationError, UnknownMediaTypeError
from microbus.wire.codecs import PubSubMessageCodec, PubSubMessageSchema
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


def media_type_of(target: str | type[PubSubMessageSchema]) -> str:
    """Return the media type named by a media type string or a schema class."""
    if isinstance(target, str):
        return target
    return target.MEDIA_TYPE


class SchemaRegistry:
    """Finds the codec for a media type among the registered schemas."""

    def __init__(self, schemas: dict[str, type[PubSubMessageSchema]] | None = None) -> None:
        self._schemas = _schemas if schemas is None else schemas
        self._codecs: dict[str, PubSubMessageCodec] = {}

    def find(self, media_type: str) -> PubSubMessageCodec:
        """Return the codec of a media type.

        Raises:
            UnknownMediaTypeError: no schema is registered for it.
        """
        codec = self._codecs.get(media_type)
        if codec is None:
            try:
                cls = self._schemas[media_type]
            except KeyError:
                raise UnknownMediaTypeError(f"No schema is registered for media type {log_repr(media_type)}") from None
            codec = self._codecs[media_type] = PubSubMessageCodec(cls())
        return codec

    def __contains__(self, media_type: object) -> bool:
        return media_type in self._schemas

    @property
    def media_types(self) -> list[str]:
        """All registered media types."""
        return sorted(self._schemas)


def configure_schema_registry(graph: ObjectGraph) -> SchemaRegistry:
    """microcosm factory: ``graph.microbus_pubsub_message_schema_registry``."""
    return SchemaRegistry()
