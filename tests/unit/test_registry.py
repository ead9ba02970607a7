"""@handles on functions and on microcosm @binding classes."""

from __future__ import annotations

import functools
import uuid

import pytest
from marshmallow import fields
from microcosm.api import binding, create_object_graph, load_from_dict

from microbus import ConfigurationError, PubSubMessageSchema, handles
from microbus.consume.handlers import HandlerRegistry

BOUND = "application/vnd.microbus.test.bound"
PLAIN = "application/vnd.microbus.test.plain"


class BoundSchema(PubSubMessageSchema):
    MEDIA_TYPE = BOUND
    name = fields.String(required=True)


@binding("test_greeting")
def configure_greeting(graph):
    return "hello"


@binding("test_bound_handler")
@handles(BoundSchema)
class BoundHandler:
    def __init__(self, graph):
        self.greeting = graph.test_greeting

    def __call__(self, content):
        return f"{self.greeting} {content['name']}"


@handles(PLAIN)
def plain_handler(content):
    return content


def test_a_binding_class_handler_is_taken_from_the_graph_with_its_collaborators():
    graph = create_object_graph("registry-test", testing=True, loader=load_from_dict({}))
    registry = HandlerRegistry.from_registered(graph, [BOUND, PLAIN])
    handler = registry.find(BOUND)
    assert handler is graph.test_bound_handler
    assert handler({"name": "world"}) == "hello world"
    assert registry.find(PLAIN) is plain_handler


def test_a_daemon_restricted_to_unknown_media_types_fails_clearly():
    with pytest.raises(ConfigurationError, match="No @handles handler is registered for application/vnd.none"):
        HandlerRegistry.from_registered(None, ["application/vnd.none"])


def test_a_class_handler_without_a_graph_fails_clearly():
    with pytest.raises(ConfigurationError, match="needs an object graph"):
        HandlerRegistry.from_registered(None, [BOUND])


# --- a media type has one handler


@pytest.fixture
def isolated_registrations():
    """Registrations made by a test are forgotten after it."""
    from microbus.consume import handlers as module

    saved, saved_idempotent = dict(module._handlers), set(module._idempotent)
    yield
    module._handlers.clear()
    module._handlers.update(saved)
    module._idempotent.clear()
    module._idempotent.update(saved_idempotent)


def unique_media_type():
    return f"application/vnd.microbus.test.{uuid.uuid4().hex[:8]}"


def test_a_second_handler_for_a_media_type_is_refused_naming_both(isolated_registrations):
    media_type = unique_media_type()

    @handles(media_type)
    def first(content):
        return True

    def second(content):
        return False

    with pytest.raises(ConfigurationError) as caught:
        handles(media_type)(second)
    message = str(caught.value)
    assert media_type in message
    assert f"{__name__}.{first.__qualname__}" in message
    assert f"{__name__}.{second.__qualname__}" in message
    assert "replace=True" in message
    assert HandlerRegistry.from_registered(None, [media_type]).find(media_type) is first


def test_replace_true_replaces_the_handler(isolated_registrations):
    media_type = unique_media_type()
    handles(media_type, idempotent=True)(print)

    @handles(media_type, replace=True)
    def newer(content):
        return True

    registry = HandlerRegistry.from_registered(None, [media_type])
    assert registry.find(media_type) is newer
    assert media_type not in registry.idempotent


def test_registering_the_same_handler_again_is_fine(isolated_registrations):
    media_type = unique_media_type()
    handles(media_type)(plain_handler)
    handles(media_type)(plain_handler)
    assert HandlerRegistry.from_registered(None, [media_type]).find(media_type) is plain_handler


def test_a_reloaded_module_registers_its_new_function_object_without_complaint(isolated_registrations):
    media_type = unique_media_type()

    def module_body():  # what importlib.reload does: a new function object, same module and qualified name
        @handles(media_type)
        def handler(content):
            return True

        return handler

    module_body()
    reloaded = module_body()
    assert HandlerRegistry.from_registered(None, [media_type]).find(media_type) is reloaded


# --- async handlers are known when the registry is built


async def async_handler(content):
    return True


def sync_handler(content):
    return True


class AsyncCallable:
    async def __call__(self, content):
        return True


class SyncCallable:
    def __call__(self, content):
        return True


def decorated(handler):
    @functools.wraps(handler)
    def wrapper(content):
        return handler(content)

    return wrapper


@pytest.mark.parametrize(
    ("handler", "expected"),
    [
        (async_handler, True),
        (sync_handler, False),
        (AsyncCallable(), True),
        (SyncCallable(), False),
        (functools.partial(async_handler), True),
        (functools.partial(functools.partial(async_handler)), True),
        (functools.partial(sync_handler), False),
        (decorated(async_handler), True),
        (AsyncCallable().__call__, True),
        (print, False),
    ],
    ids=[
        "async-def",
        "def",
        "async-callable-instance",
        "callable-instance",
        "partial-of-async",
        "partial-of-partial-of-async",
        "partial-of-def",
        "wraps-decorated-async",
        "bound-async-method",
        "builtin",
    ],
)
def test_the_registry_knows_which_handlers_are_coroutine_functions(handler, expected):
    registry = HandlerRegistry({PLAIN: handler})
    assert registry.is_async(PLAIN) is expected


def test_an_unknown_media_type_is_not_async():
    assert HandlerRegistry({}).is_async("application/vnd.none") is False


def test_registered_async_functions_and_async_class_handlers_are_detected(isolated_registrations):
    function_type, class_type = unique_media_type(), unique_media_type()
    handles(function_type)(async_handler)

    @handles(class_type)
    class Handler:
        def __init__(self, graph):
            self.graph = graph

        async def __call__(self, content):
            return True

    graph = create_object_graph("registry-test", testing=True, loader=load_from_dict({}))
    registry = HandlerRegistry.from_registered(graph, [function_type, class_type, PLAIN])
    assert registry.is_async(function_type) and registry.is_async(class_type)
    assert not registry.is_async(PLAIN)
