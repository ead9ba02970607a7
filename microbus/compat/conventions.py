"""``microcosm_pubsub.conventions``: convention media types (``created("order")``) and their schemas.

A service that handles or produces convention media types without declaring schemas for them needs the
registry's ``auto_register`` (``microbus_pubsub_message_schema_registry.auto_register``, on in microcosm-pubsub, off in
microbus); :class:`microbus.compat.daemon.ConsumerDaemon` turns it on.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from marshmallow import EXCLUDE

from microbus.wire import conventions as _conventions
from microbus.wire.conventions import LifecycleChange, make_media_type, name_for


class URIMessageSchema(_conventions.URIMessageSchema):
    """A message that points to (the URI of) a resource that changed; undeclared fields are dropped on produce."""

    class Meta:
        unknown = EXCLUDE


class ChangedURIMessageSchema(_conventions.ChangedURIMessageSchema):
    """A ``changed`` message: URI, changed field and its new value."""

    class Meta:
        unknown = EXCLUDE


class IdentityMessageSchema(_conventions.IdentityMessageSchema):
    """A message that names (the id of) a resource that changed."""

    class Meta:
        unknown = EXCLUDE


def media_type(lifecycle_change: str) -> Callable[..., str]:
    """``make_media_type`` for one lifecycle change: ``media_type("created")("order")``."""
    return partial(make_media_type, lifecycle_change=lifecycle_change)


def created(resource: Any, **kwargs: Any) -> str:
    """The media type announcing that ``resource`` was created (``application/vnd.globality.pubsub._.created.…``)."""
    return make_media_type(resource, lifecycle_change=LifecycleChange.Created, **kwargs)


def changed(resource: Any, **kwargs: Any) -> str:
    """The media type announcing that ``resource`` changed."""
    return make_media_type(resource, lifecycle_change=LifecycleChange.Changed, **kwargs)


def deleted(resource: Any, **kwargs: Any) -> str:
    """The media type announcing that ``resource`` was deleted."""
    return make_media_type(resource, lifecycle_change=LifecycleChange.Deleted, **kwargs)


__all__ = [
    "ChangedURIMessageSchema",
    "IdentityMessageSchema",
    "LifecycleChange",
    "URIMessageSchema",
    "changed",
    "created",
    "deleted",
    "make_media_type",
    "media_type",
    "name_for",
]
