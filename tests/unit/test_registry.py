"""@handles on functions and on microcosm @binding classes."""

from __future__ import annotations

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
