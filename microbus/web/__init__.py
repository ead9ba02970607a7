"""Producing from web apps: deferred publish, a Flask extension and an ASGI (FastAPI/Starlette) middleware.

The framework integrations import their framework lazily: ``microbus.web.flask`` needs the ``flask`` extra.
"""

from microbus.web.asgi import DeferredPublishMiddleware
from microbus.web.deferred import Deferral, deferred_publish
from microbus.web.policy import succeeded

__all__ = ["Deferral", "DeferredPublishMiddleware", "deferred_publish", "succeeded"]
