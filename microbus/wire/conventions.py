"""microcosm-pubsub's convention-based media types: messages that announce a lifecycle change of a resource.

``application/vnd.globality.pubsub._.created.order`` (see :func:`make_media_type`) carries the URI of the
resource (:class:`URIMessageSchema`); ``deleted`` ones its id (:class:`IdentityMessageSchema`), ``changed`` ones
the URI and the changed field (:class:`ChangedURIMessageSchema`). With ``auto_register``, the schema registry
gives such media types these schemas when none is registered, as microcosm-pubsub's does by default.
"""

from __future__ import annotations

import re
from typing import Any

from marshmallow import fields

from microbus.wire.codecs import PubSubMessageSchema


class LifecycleChange:
    """The lifecycle changes a convention media type announces."""

    Changed = "changed"
    Created = "created"
    Deleted = "deleted"

    ALL = (Changed, Created, Deleted)

    @classmethod
    def matches(cls, media_type: str) -> bool:
        """Whether one of the media type's dot-separated parts is a lifecycle change."""
        return any(part in cls.ALL for part in media_type.split("."))


class URIMessageSchema(PubSubMessageSchema):
    """A message that points to (the URI of) a resource that changed; consumers fetch the resource from it."""

    uri = fields.String(required=True)


class ChangedURIMessageSchema(URIMessageSchema):
    """A ``changed`` message: the URI of the resource, and the field that changed with its new value."""

    field_name = fields.String()
    new_value = fields.String()


class IdentityMessageSchema(PubSubMessageSchema):
    """A message that names (the id of) a resource that changed, for when there is no URI (a deletion)."""

    id = fields.String(required=True)


def convention_schema(media_type: str) -> type[PubSubMessageSchema] | None:
    """The schema microcosm-pubsub gives a convention media type without a schema of its own, else None."""
    if not LifecycleChange.matches(media_type):
        return None
    parts = media_type.split(".")
    if LifecycleChange.Deleted in parts:
        return IdentityMessageSchema
    if LifecycleChange.Changed in parts:
        return ChangedURIMessageSchema
    return URIMessageSchema


def underscore(word: str) -> str:
    """``CamelCase`` → ``camel_case`` (inflection's ``underscore``, which microcosm-pubsub uses for names)."""
    word = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", word)
    word = re.sub(r"([a-z\d])([A-Z])", r"\1_\2", word)
    return word.replace("-", "_").lower()


def name_for(obj: Any) -> str:
    """The resource name of a string, a class or an instance (a class's ``__alias__`` wins over its name)."""
    if isinstance(obj, str):
        return underscore(obj)
    cls = obj if isinstance(obj, type) else type(obj)
    return underscore(getattr(cls, "__alias__", cls.__name__))


def make_media_type(
    resource: Any, lifecycle_change: str | None = None, organization: str | None = None, public: bool = False
) -> str:
    """The media type announcing ``lifecycle_change`` (default ``created``) of ``resource``:
    ``application/vnd.<organization>.pubsub[._].<change>.<resource name>`` (organization ``globality``)."""
    return "application/vnd.{}.{}.{}.{}".format(
        organization or "globality",
        "pubsub" if public else "pubsub._",
        lifecycle_change or LifecycleChange.Created,
        name_for(resource),
    )
