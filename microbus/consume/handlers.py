"""The media type → handler registry (``@handles``)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from microcosm.api import defaults

from microbus.errors import ConfigurationError
from microbus.wire.codecs import PubSubMessageSchema
from microbus.wire.schemas import match_media_type, media_type_of, schema

if TYPE_CHECKING:
    from microcosm.object_graph import ObjectGraph

Handler = Callable[[dict[str, Any]], Any]
HandlerT = TypeVar("HandlerT")

_handlers: dict[str, Any] = {}
_idempotent: set[str] = set()
_MAX_UNWRAP = 32


def handles(
    target: str | type[PubSubMessageSchema], *, idempotent: bool = False, replace: bool = False
) -> Callable[[HandlerT], HandlerT]:
    """Register a function, or a class built from the graph, as the handler of a media type.

    A class handler is constructed with the graph (``cls(graph)``) or, when it is a microcosm
    ``@binding``, taken from the graph under its binding key. With ``idempotent=True`` the dispatcher
    records each message in the idempotency store and skips messages already handled
    (see :mod:`microbus.patterns.idempotency` for the exact guarantee).

    A media type has one handler. Registering the same handler again is fine (also after a module was
    reloaded: handlers are compared by module and qualified name); another handler needs ``replace=True``.

    Raises:
        ConfigurationError: the media type already has another handler and ``replace`` is not set.
    """
    media_type = media_type_of(target)
    if not isinstance(target, str):
        schema(target)

    def decorator(handler: HandlerT) -> HandlerT:
        known = _handlers.get(media_type)
        if known is not None and not replace and not _same_handler(known, handler):
            raise ConfigurationError(
                f"Media type {media_type!r} is already handled by {qualified_name(known)}, so "
                f"{qualified_name(handler)} cannot also handle it: give it another media type, or pass "
                f"@handles(..., replace=True) to replace the first handler."
            )
        _handlers[media_type] = handler
        if idempotent:
            _idempotent.add(media_type)
        else:
            _idempotent.discard(media_type)
        return handler

    return decorator


def qualified_name(handler: Any) -> str:
    """``module.QualifiedName`` of a handler function or class (of the class, for other callables)."""
    if isinstance(handler, functools.partial):
        return f"functools.partial({qualified_name(handler.func)})"
    if inspect.isfunction(handler) or inspect.isclass(handler) or inspect.ismethod(handler):
        return f"{handler.__module__}.{handler.__qualname__}"
    kind = type(handler)
    return f"{kind.__module__}.{kind.__qualname__} instance"


def _same_handler(known: Any, handler: Any) -> bool:
    """The very same handler, or its new copy from a module imported again (same module and qualified name)."""
    if known is handler:
        return True
    if inspect.ismethod(known) and inspect.ismethod(handler):
        return bool(known == handler)
    named = (inspect.isfunction(known) and inspect.isfunction(handler)) or (
        inspect.isclass(known) and inspect.isclass(handler)
    )
    return named and qualified_name(known) == qualified_name(handler)


def is_coroutine_handler(handler: Any) -> bool:
    """Whether calling the handler returns a coroutine: an ``async def`` function or method, a class (or
    instance) whose ``__call__`` is one, a ``functools.partial`` of one, or a function decorated with
    ``functools.wraps`` around one."""
    target = handler
    for _ in range(_MAX_UNWRAP):
        if isinstance(target, functools.partial):
            target = target.func
        elif inspect.iscoroutinefunction(target):
            return True
        elif inspect.ismethod(target):
            target = target.__func__
        elif inspect.isfunction(target):
            wrapped = getattr(target, "__wrapped__", None)
            if wrapped is None:
                return False
            target = wrapped
        elif inspect.isroutine(target):  # builtins, method descriptors
            return False
        elif inspect.isclass(target):
            target = target.__call__  # its instances' (type.__call__ when it defines none: not a coroutine)
        elif callable(target):
            target = type(target).__call__
        else:
            return False
    return False


def registered_handler_media_types() -> list[str]:
    """Every media type that has a ``@handles`` handler."""
    return sorted(_handlers)


class HandlerRegistry:
    """Maps media types to ready-to-call handlers (class handlers instantiated once).

    ``idempotent`` lists the media types whose handlers run at most once per message id; which handlers
    are coroutine functions is decided here, once (:meth:`is_async`).
    """

    def __init__(self, handlers: dict[str, Handler], *, idempotent: Iterable[str] = ()) -> None:
        self._handlers = handlers
        self.idempotent = frozenset(idempotent)
        self._async = frozenset(media_type for media_type, handler in handlers.items() if is_coroutine_handler(handler))

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

    def match(self, media_type: str) -> str | None:
        """The registered media type whose handler handles ``media_type``: itself, else its wildcard
        (``prefix.*``, see :func:`~microbus.wire.schemas.wildcard_of`); None when there is none."""
        return match_media_type(media_type, self._handlers)

    def find(self, media_type: str) -> Handler | None:
        """Return the handler of a media type (or of its wildcard), or None."""
        registered = self.match(media_type)
        return None if registered is None else self._handlers[registered]

    def is_async(self, media_type: str) -> bool:
        """Whether the handler of a media type is a coroutine function (False for an unknown media type)."""
        return self.match(media_type) in self._async

    def is_idempotent(self, media_type: str) -> bool:
        """Whether the handler of a media type was registered with ``idempotent=True``."""
        return self.match(media_type) in self.idempotent

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
    """microcosm factory: ``graph.microbus_sqs_message_handler_registry`` (all handlers, or ``media_types``)."""
    return HandlerRegistry.from_registered(graph, graph.config.microbus_sqs_message_handler_registry.media_types)
