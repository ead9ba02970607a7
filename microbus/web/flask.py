"""Flask extension: messages produced while handling a request are published once its response succeeded.

Needs the ``flask`` extra (``pip install 'microbus[flask]'``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from flask import g

from microbus.web.deferred import begin_deferral
from microbus.web.policy import succeeded

if TYPE_CHECKING:
    from flask import Flask, Response

logger = logging.getLogger(__name__)
_STATE = "_microbus_deferral"


class MicrobusFlask:
    """Defers every ``produce`` of a request (any :class:`~microbus.SNSProducer`) to the end of the request.

    When the view's response has a status that ``publish_if`` accepts (default: below 400), the messages are
    published with PublishBatch before the response is sent, so a failed publish becomes a 500 rather than a
    success for a message that was not sent. A view that raises, or answers 4xx/5xx, publishes nothing.
    Messages produced later (while a streamed body is generated) are published when the request ends.

    Parameters:
        app: the Flask app (or call :meth:`init_app` later).
        publish_if: whether to publish for a response status, e.g. ``lambda status: status < 500``.
    """

    def __init__(self, app: Flask | None = None, *, publish_if: Callable[[int], bool] = succeeded) -> None:
        self.publish_if = publish_if
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Register the request hooks (first among before-request hooks, so every view's messages are kept)."""
        app.before_request_funcs.setdefault(None, []).insert(0, self._begin)
        app.after_request(self._after)
        app.teardown_request(self._teardown)
        app.extensions["microbus"] = self

    def _begin(self) -> None:
        setattr(g, _STATE, [*begin_deferral(), False])

    def _after(self, response: Response) -> Response:
        state = getattr(g, _STATE, None)
        if state is None:
            return response
        deferral = state[0]
        if self.publish_if(response.status_code):
            state[2] = True
            deferral.publish()
        elif deferral.messages:
            logger.info(
                "Not publishing %d message(s) of a request answered %d", len(deferral.messages), response.status_code
            )
            deferral.discard()
        return response

    def _teardown(self, exc: BaseException | None) -> None:
        state = getattr(g, _STATE, None)
        if state is None:
            return
        delattr(g, _STATE)
        deferral, end, published = state
        try:
            if published and exc is None and deferral.messages:
                deferral.publish()
        except Exception:
            logger.exception("Messages produced after the response of a request could not be published")
        finally:
            end()
