"""Flask and FastAPI apps on the emulator: a request's messages are published after a successful response,
not when the view raises or answers 4xx/5xx, and a Worker handles them."""

from __future__ import annotations

import pytest
from microbus.reference.schemas import OrderPlaced
from microcosm.api import create_object_graph, load_from_dict

from microbus import Outcome, Worker
from microbus.consume.dispatch import SQSMessageDispatcher
from microbus.consume.handlers import HandlerRegistry
from microbus.testing import wait_for

pytestmark = pytest.mark.integration


class Bus:
    """A graph on a fresh queue, a Worker recording the orders it handled, and the SNS calls made."""

    def __init__(self, queue):
        self.queue = queue
        self.graph = create_object_graph("web", testing=True, loader=load_from_dict(queue.graph_config()))
        self.graph.use("microbus_sns_producer", "microbus_sqs_consumer")
        self.sns_calls: list[str] = []
        for operation in ("Publish", "PublishBatch"):
            self.graph.sns_client.meta.events.register(
                f"before-call.sns.{operation}", lambda model, **_: self.sns_calls.append(model.name)
            )
        self.handled: list[str] = []
        dispatcher = SQSMessageDispatcher(
            handler_registry=HandlerRegistry({OrderPlaced.MEDIA_TYPE: lambda c: self.handled.append(c["order_id"])})
        )
        self.worker = Worker(consumer=self.graph.microbus_sqs_consumer, dispatcher=dispatcher)

    def produce(self, order_id):
        self.graph.microbus_sns_producer.produce(OrderPlaced.MEDIA_TYPE, order_id=order_id)

    def wait_handled(self, count):
        wait_for(lambda: self.worker.stats.outcomes[Outcome.SUCCEEDED.label] >= count, what=f"{count} handled")


@pytest.fixture
def bus(microbus_queue):
    bus = Bus(microbus_queue)
    bus.worker.start()
    yield bus
    bus.worker.stop()
    bus.worker.join()


def flask_app(bus):
    from flask import Flask, abort

    from microbus.web.flask import MicrobusFlask

    app = Flask("orders")
    MicrobusFlask(app)

    @app.post("/orders")
    def place_from_body():
        from flask import request

        bus.produce("from-body")  # before the body is read: a malformed body still publishes nothing
        return {"order_id": request.get_json()["order_id"]}

    @app.post("/orders/<order_id>")
    def place(order_id):
        bus.produce(order_id)
        bus.produce(f"{order_id}-audit")
        assert bus.sns_calls == []  # nothing is sent while the view runs
        if order_id.startswith("raise"):
            raise RuntimeError("the view failed")
        if order_id.startswith("conflict"):
            abort(409)
        if order_id.startswith("error"):
            return "no", 500
        return {"order_id": order_id}

    return app


def fastapi_app(bus):
    from fastapi import FastAPI, HTTPException, Response
    from pydantic import BaseModel

    from microbus.web import DeferredPublishMiddleware

    app = FastAPI()
    app.add_middleware(DeferredPublishMiddleware)

    @app.post("/orders/{order_id}")
    def place(order_id: str):  # a def endpoint runs on a thread, with the request's context
        bus.produce(order_id)
        bus.produce(f"{order_id}-audit")
        assert bus.sns_calls == []
        if order_id.startswith("raise"):
            raise RuntimeError("the view failed")
        if order_id.startswith("conflict"):
            raise HTTPException(409)
        if order_id.startswith("error"):
            return Response("no", status_code=500)
        return {"order_id": order_id}

    class Order(BaseModel):
        order_id: str

    @app.post("/orders")
    def place_from_body(order: Order):
        bus.produce(order.order_id)
        return {"order_id": order.order_id}

    @app.post("/async/{order_id}")
    async def place_async(order_id: str):
        bus.produce(order_id)
        assert bus.sns_calls == []
        return {"order_id": order_id}

    return app


def flask_client(app):
    app.config["PROPAGATE_EXCEPTIONS"] = False  # a view that raises answers 500, as in production
    return app.test_client()


def fastapi_client(app):
    from fastapi.testclient import TestClient

    return TestClient(app, raise_server_exceptions=False)


FRAMEWORKS = {"flask": (flask_app, flask_client), "fastapi": (fastapi_app, fastapi_client)}


@pytest.mark.parametrize("framework", sorted(FRAMEWORKS))
def test_messages_are_published_after_a_200_and_handled_by_the_daemon(bus, framework):
    make_app, make_client = FRAMEWORKS[framework]
    client = make_client(make_app(bus))
    # When a request succeeds
    response = client.post("/orders/o-1")
    # Then its two messages went out in one PublishBatch, after the view, and the daemon handled them
    assert response.status_code == 200
    assert bus.sns_calls == ["PublishBatch"]
    bus.wait_handled(2)
    assert sorted(bus.handled) == ["o-1", "o-1-audit"]


@pytest.mark.parametrize("failure", ["raise", "conflict", "error"])
@pytest.mark.parametrize("framework", sorted(FRAMEWORKS))
def test_nothing_is_published_when_the_view_raises_or_answers_4xx_or_5xx(bus, framework, failure):
    make_app, make_client = FRAMEWORKS[framework]
    client = make_client(make_app(bus))
    # When a request fails
    response = client.post(f"/orders/{failure}-1")
    assert response.status_code == {"raise": 500, "conflict": 409, "error": 500}[failure]
    # Then nothing was sent
    assert bus.sns_calls == []
    # And the next good request publishes only its own messages
    assert client.post("/orders/ok").status_code == 200
    bus.wait_handled(2)
    assert sorted(bus.handled) == ["ok", "ok-audit"]
    wait_for(lambda: bus.queue.depth() == 0, what="the queue drained")


def test_an_async_fastapi_endpoint_is_deferred_too(bus):
    client = fastapi_client(fastapi_app(bus))
    assert client.post("/async/a-1").status_code == 200
    bus.wait_handled(1)
    assert bus.handled == ["a-1"]


@pytest.mark.parametrize("framework", sorted(FRAMEWORKS))
def test_publish_if_can_ask_for_4xx_responses_too(bus, framework):
    from microbus.web import DeferredPublishMiddleware

    if framework == "flask":
        app = flask_app(bus)
        app.extensions["microbus"].publish_if = lambda status: status < 500
        client = flask_client(app)
    else:
        app = fastapi_app(bus)
        app.user_middleware.clear()
        app.add_middleware(DeferredPublishMiddleware, publish_if=lambda status: status < 500)
        client = fastapi_client(app)
    assert client.post("/orders/conflict-1").status_code == 409
    bus.wait_handled(2)
    assert sorted(bus.handled) == ["conflict-1", "conflict-1-audit"]


@pytest.mark.parametrize("framework", sorted(FRAMEWORKS))
def test_a_failed_publish_turns_the_response_into_a_500(bus, framework, monkeypatch):
    from microbus.errors import TransportError

    make_app, make_client = FRAMEWORKS[framework]
    client = make_client(make_app(bus))

    def refuse(*args, **kwargs):
        raise TransportError("SNS refused")

    monkeypatch.setattr(bus.graph.microbus_sns_producer.transport, "publish_batch", refuse)
    # When SNS refuses the request's messages, the client is not told it succeeded
    assert client.post("/orders/o-9").status_code == 500
    assert bus.handled == []


@pytest.mark.parametrize("framework", sorted(FRAMEWORKS))
def test_a_malformed_request_body_publishes_nothing(bus, framework):
    make_app, make_client = FRAMEWORKS[framework]
    client = make_client(make_app(bus))
    body = {"flask": "data", "fastapi": "content"}[framework]  # the test clients name the raw body differently
    response = client.post("/orders", headers={"Content-Type": "application/json"}, **{body: b'{"order_id": '})
    assert response.status_code in (400, 422)
    assert bus.sns_calls == []
