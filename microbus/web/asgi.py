"""ASGI middleware (FastAPI, Starlette): messages produced while handling a request are published once its
response succeeded. Pure ASGI, no dependency; the ``fastapi`` extra installs FastAPI for the examples."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from microbus.web.deferred import begin_deferral
from microbus.web.policy import succeeded

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class DeferredPublishMiddleware:
    """Defers every ``produce`` of an HTTP request to its response: ``app.add_middleware(DeferredPublishMiddleware)``.

    When the response starts with a status that ``publish_if`` accepts (default: below 400), the request's
    messages are published with PublishBatch (on a thread) before the status goes out, so a failed publish
    becomes a 500 instead of a success for a message that was not sent. A request whose endpoint raises, or
    that answers 4xx/5xx, publishes nothing. Messages produced after the response started (a streamed body,
    background tasks) are published when the application returns. WebSocket and lifespan scopes pass through.

    Parameters:
        app: the ASGI application.
        publish_if: whether to publish for a response status.
    """

    def __init__(self, app: ASGIApp, *, publish_if: Callable[[int], bool] = succeeded) -> None:
        self.app = app
        self.publish_if = publish_if

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deferral, end = begin_deferral()
        published = False

        async def send_after_publishing(message: Message) -> None:
            nonlocal published
            if message["type"] == "http.response.start":
                status = int(message["status"])
                if self.publish_if(status):
                    published = True
                    await asyncio.to_thread(deferral.publish)
                elif deferral.messages:
                    logger.info("Not publishing %d message(s) of a request answered %d", len(deferral.messages), status)
                    deferral.discard()
            await send(message)

        try:
            await self.app(scope, receive, send_after_publishing)
            if published and deferral.messages:
                await asyncio.to_thread(deferral.publish)
        finally:
            end()
