"""``microcosm_pubsub.matchers``: PyHamcrest matchers on what a producer published (install PyHamcrest:
``pip install 'microbus[compat]'``).

``published_messages_for(producer)`` reads the calls of a mocked producer (``produce`` of a ``Mock``) or of a
producer whose SNS client is a ``Mock`` (``publish`` and ``publish_batch``); :func:`mock_sns_client` puts such a
client into a real producer, where microcosm-pubsub's ``testing=True`` graph had one already.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from unittest.mock import MagicMock, Mock

from hamcrest import not_none
from hamcrest.core.helpers.wrap_matcher import wrap_matcher
from hamcrest.core.matcher import Matcher
from hamcrest.library.collection.issequence_containinginanyorder import IsSequenceContainingInAnyOrder
from hamcrest.library.collection.issequence_containinginorder import IsSequenceContainingInOrder
from hamcrest.library.object.hasproperty import IsObjectWithProperty


@dataclass
class PublishedMessage:
    """A published message: its topic (None for a mocked producer) and its wire JSON as a dict."""

    topic_arn: str | None
    message: Mapping[str, Any]

    @property
    def media_type(self) -> str | None:
        """The message's ``mediaType``."""
        return self.message.get("mediaType")

    @property
    def uri(self) -> str | None:
        """The message's ``uri``."""
        return self.message.get("uri")

    @classmethod
    def from_call(cls, call: Any) -> list[PublishedMessage]:
        """The messages of one mock call: ``publish``, ``publish_batch``, or a mocked producer's ``produce``."""
        name, args, kwargs = call
        if "TopicArn" in kwargs and "Message" in kwargs:
            return [cls(kwargs["TopicArn"], json.loads(kwargs["Message"]))]
        if "TopicArn" in kwargs and "PublishBatchRequestEntries" in kwargs:
            entries = kwargs["PublishBatchRequestEntries"]
            return [cls(kwargs["TopicArn"], json.loads(entry["Message"])) for entry in entries]
        if args and isinstance(args[0], str) and name in ("", "produce"):
            content = dict(args[1]) if len(args) > 1 and isinstance(args[1], Mapping) else {}
            content.update(kwargs)
            return [cls(None, {**content, "mediaType": args[0]})]
        return []


def mock_sns_client(producer: Any) -> MagicMock:
    """Give a microbus producer a ``MagicMock`` SNS client that accepts every publish; return the mock."""
    client = MagicMock(name="sns_client")
    client.publish.return_value = {"MessageId": "mock-message-id"}

    def publish_batch(**kwargs: Any) -> dict[str, Any]:
        entries = kwargs["PublishBatchRequestEntries"]
        return {"Successful": [{"Id": e["Id"], "MessageId": f"mock-{e['Id']}"} for e in entries], "Failed": []}

    client.publish_batch.side_effect = publish_batch
    client.get_topic_attributes.return_value = {"Attributes": {}}
    producer.transport.client = client
    return client


def published_messages_for(sns_producer: Any) -> list[PublishedMessage]:
    """The messages published through a mocked producer, or a producer with a mocked SNS client, in order.

    Raises:
        TypeError: the producer's client is real (use :func:`mock_sns_client` first).
    """
    if isinstance(sns_producer, Mock):
        calls: Iterable[Any] = sns_producer.produce.mock_calls
    else:
        client = getattr(getattr(sns_producer, "transport", None), "client", None)
        if not isinstance(client, Mock):
            raise TypeError("published_messages_for needs a Mock producer or client: call mock_sns_client(producer)")
        calls = [call for call in client.mock_calls if call[0] in ("publish", "publish_batch")]
    return [message for call in calls for message in PublishedMessage.from_call(call)]


class PublishedMessageMatcher(IsObjectWithProperty):
    """Matches one property of a published message."""

    def describe_to(self, description: Any) -> None:
        description.append_text(f"a message with a {self.property_name} matching ").append_description_of(
            self.value_matcher
        )


def has_media_type(match: Any = None) -> PublishedMessageMatcher:
    """A message with this media type (any, when None)."""
    return PublishedMessageMatcher("media_type", wrap_matcher(not_none() if match is None else match))


def has_uri(match: Any = None) -> PublishedMessageMatcher:
    """A message with this URI (any, when None)."""
    return PublishedMessageMatcher("uri", wrap_matcher(not_none() if match is None else match))


class _InOrder(IsSequenceContainingInOrder[Any]):
    def matches(self, item: Any, mismatch_description: Any = None) -> bool:
        return bool(super().matches(published_messages_for(item), mismatch_description))


class _InAnyOrder(IsSequenceContainingInAnyOrder[Any]):
    def matches(self, item: Any, mismatch_description: Any = None) -> bool:
        return bool(super().matches(published_messages_for(item), mismatch_description))


def published(*matchers: Any, strict: bool = True) -> Matcher[Any]:
    """The producer published exactly messages matching ``matchers``, in this order."""
    return _InOrder([wrap_matcher(m) for m in matchers])


def published_inanyorder(*matchers: Any, strict: bool = True) -> Matcher[Any]:
    """The producer published exactly messages matching ``matchers``, in any order."""
    return _InAnyOrder([wrap_matcher(m) for m in matchers])


def published_nothing(*matchers: Any) -> Matcher[Any]:
    """The producer published nothing."""
    return _InOrder([])


__all__ = [
    "PublishedMessage",
    "PublishedMessageMatcher",
    "has_media_type",
    "has_uri",
    "mock_sns_client",
    "published",
    "published_inanyorder",
    "published_messages_for",
    "published_nothing",
]
