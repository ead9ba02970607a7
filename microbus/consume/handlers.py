"""The media type → handler registry (``@handles``)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from microcosm.api import defaults

from microbus.errors import ConfigurationError
from microbus.wire.codecs import PubSubMessageSchema
from microbus.wire.schemas import media_type_of, schema

if TYPE_CHECKING:
    from microcosm.object_graph import ObjectGraph

Handler = Callable[[dict[str, Any]], Any]
HandlerT = TypeVar("HandlerT")

_handlers: dict[str, Any] = {}
_idempotent: set[str] = set()


def handles(target: str | type[PubSubMessageSchema], *, idempotent: bool = False) -> Callable[[HandlerT], HandlerT]:
    """Register a function, or a class built from the graph, as the handler of a media type.

    A class handler is constructed with the graph (``cls(graph)``) or, when it is a microcosm
    ``@binding``, taken from the graph under its binding key. With ``idempotent=True`` the dispatcher
    records each message in the idempotency store and skips messages already handled
    (see :mod:`microbus.patterns.idempotency` for the exact guarantee).
    """
    media_type = media_type_of(target)
    if not isinstance(target, str):
        schema(target)

    def decorator(handler: HandlerT) -> HandlerT:
        _handlers[media_type] = handler
        if idempotent:
            _idempotent.add(media_type)
        else:
            _idempotent.discard(media_type)
        return handler

    return decorator


def registered_handler_media_types() -> list[str]:
    """Every media type that has a ``@handles`` handler."""
    return sorted(_handlers)


class HandlerRegistry:
    """Maps media types to ready-to-call handlers (class handlers instantiated once).

    ``idempotent`` lists the media types whose handlers run at most once per message id.
    """

    def __init__(self, handlers: dict[str, Handler], *, idempotent: Iterable[str] = ()) -> None:
        self._handlers = handlers
        self.idempotent = frozenset(idempotent)

    @classmethod
    def from_registered(
        cls, graph: ObjectGraph | None = None, media_types: Iterable[str] | None = None
    ) -> HandlerRegistry:
        """Build from the ``@handles`` registrations, optionally restricted to some media types.

        Raises:
            ConfigurationError: a requested media type has no handler, or a class handler needs a graph.
        """
        wanted = sorted(_handlers) if media_types is None else list(media_types)
        missing = [media_type for media_type in wanted if media_type not in _handlers]
        if missing:
            raise ConfigurationError(f"No @handles handler is registered for {', '.join(missing)}")
        return cls(
            {media_type: _instantiate(_handlers[media_type], graph) for media_type in wanted},
            idempotent=_idempotent.intersection(wanted),
        )

    def find(self, media_type: str) -> Handler | None:
        """Return the handler of a media type, or None."""
        return self._handlers.get(media_type)

    @property
    def media_types(self) -> list[str]:
        """The media types handled."""
        return sorted(self._handlers)


def _instantiate(handler: Any, graph: ObjectGraph | None) -> Handler:
    if not inspect.isclass(handler):
        return handler  # type: ignore[no-any-return]
    if graph is None:
        raise ConfigurationError(f"Handler class {handler.__qualname__} needs an object graph to be built")
    for key, factory in graph._registry.factories.items():
        if factory is handler:
            return getattr(graph, key)  # type: ignore[no-any-return]
    build: Any = handler
    return build(graph)  # type: ignore[no-any-return]


@defaults(media_types=None)
def configure_handler_registry(graph: ObjectGraph) -> HandlerRegistry:
    """microcosm factory: ``graph.sqs_message_handler_registry`` (all handlers, or ``media_types``)."""
    return HandlerRegistry.from_registered(graph, graph.config.sqs_message_handler_registry.media_types)
