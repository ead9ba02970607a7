"""The declarative topology: topics, queues (with DLQs), subscriptions, tables, daemons and producers.

Pure data plus validation; nothing here talks to AWS. Constructors are keyword-only and accept lists
or schema classes where tuples of media types are expected.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from typing import Any

from microbus.consume.handlers import registered_handler_media_types
from microbus.errors import TopologyError
from microbus.wire.schemas import media_type_of

FIFO_SUFFIX = ".fifo"
DEFAULT_VISIBILITY_TIMEOUT_S = 30
DEFAULT_RETENTION_S = 4 * 86_400
MAX_RETENTION_S = 14 * 86_400
MAX_VISIBILITY_TIMEOUT_S = 12 * 3_600


def _media_types(value: Any) -> tuple[str, ...]:
    if isinstance(value, str | type):
        value = (value,)
    return tuple(sorted({media_type_of(item) for item in value}))


def _names(value: Any) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def _normalize(instance: Any, media_type_fields: Iterable[str] = (), name_fields: Iterable[str] = ()) -> None:
    for name in media_type_fields:
        value = getattr(instance, name)
        if value is not None:
            object.__setattr__(instance, name, _media_types(value))
    for name in name_fields:
        object.__setattr__(instance, name, _names(getattr(instance, name)))


@dataclass(frozen=True, kw_only=True)
class Topic:
    """An SNS topic; ``media_types`` are routed to it (producers publish them here)."""

    name: str
    fifo: bool = False
    content_based_deduplication: bool = False
    media_types: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _normalize(self, media_type_fields=("media_types",))


@dataclass(frozen=True, kw_only=True)
class Subscription:
    """A queue's subscription to a topic.

    ``media_types`` None: the media types the queue's daemons handle (no filter when it has none);
    ``raw`` chooses raw delivery (no SNS envelope).
    """

    topic: str
    media_types: tuple[str, ...] | None = None
    raw: bool = False

    def __post_init__(self) -> None:
        _normalize(self, media_type_fields=("media_types",))


@dataclass(frozen=True, kw_only=True)
class Queue:
    """An SQS queue; with ``max_receive_count``, a dead-letter queue (``<name>-dlq``) and a redrive policy.

    ``sse`` enables SQS-managed encryption, or KMS when ``kms_master_key_id`` is set.
    """

    name: str
    visibility_timeout_s: int = DEFAULT_VISIBILITY_TIMEOUT_S
    message_retention_s: int = DEFAULT_RETENTION_S
    fifo: bool = False
    content_based_deduplication: bool = False
    sse: bool = True
    kms_master_key_id: str | None = None
    max_receive_count: int | None = 5
    dead_letter_retention_s: int = MAX_RETENTION_S
    subscriptions: tuple[Subscription, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "subscriptions", tuple(self.subscriptions))

    @property
    def dead_letter_queue_name(self) -> str | None:
        """The DLQ's name, or None without a redrive policy."""
        if self.max_receive_count is None:
            return None
        if self.fifo:
            return f"{self.name.removesuffix(FIFO_SUFFIX)}-dlq{FIFO_SUFFIX}"
        return f"{self.name}-dlq"

    def dead_letter_queue(self) -> Queue | None:
        """The DLQ as a queue of its own (same FIFO-ness and encryption, longest retention)."""
        name = self.dead_letter_queue_name
        if name is None:
            return None
        return Queue(
            name=name,
            visibility_timeout_s=self.visibility_timeout_s,
            message_retention_s=self.dead_letter_retention_s,
            fifo=self.fifo,
            sse=self.sse,
            kms_master_key_id=self.kms_master_key_id,
            max_receive_count=None,
        )


@dataclass(frozen=True, kw_only=True)
class Table:
    """A DynamoDB table (e.g. the fan-in store) keyed by the string ``partition_key``, items expiring by TTL."""

    name: str
    partition_key: str = "pk"
    ttl_attribute: str | None = "expires_at"


@dataclass(frozen=True, kw_only=True)
class Producer:
    """Something that publishes ``produces`` media types, sends to queues directly and uses tables."""

    name: str
    produces: tuple[str, ...] = ()
    sends_to: tuple[str, ...] = ()
    tables: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _normalize(self, media_type_fields=("produces",), name_fields=("sends_to", "tables"))


@dataclass(frozen=True, kw_only=True)
class Daemon(Producer):
    """A consumer daemon: consumes ``queue``, handles ``handles``, may produce like a producer."""

    queue: str
    handles: tuple[str, ...] = ()
    handler_timeout_s: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _normalize(self, media_type_fields=("handles",))

    @classmethod
    def of(cls, daemon_class: Any, *, queue: str, **options: Any) -> Daemon:
        """Describe a :class:`~microbus.daemon.ConsumerDaemon` subclass: its name, handled media types and
        handler timeout come from the class."""
        options.setdefault("handles", handled_media_types(daemon_class))
        options.setdefault("handler_timeout_s", getattr(daemon_class, "handler_timeout_s", None))
        return cls(name=daemon_class.name, queue=queue, **options)


def handled_media_types(daemon_class: Any) -> tuple[str, ...]:
    """The media types a ConsumerDaemon class handles: its ``media_types``, else every ``@handles`` one."""
    media_types = getattr(daemon_class, "media_types", None)
    if media_types is None:
        return tuple(registered_handler_media_types())
    return _media_types(media_types)


@dataclass(frozen=True, kw_only=True)
class Topology:
    """An application's topics, queues, tables, and who uses them.

    ``default_topic`` receives the media types no topic routes. Topics may be given as plain names.
    """

    topics: tuple[Topic, ...] = ()
    queues: tuple[Queue, ...] = ()
    tables: tuple[Table, ...] = ()
    daemons: tuple[Daemon, ...] = ()
    producers: tuple[Producer, ...] = ()
    default_topic: str | None = None
    _index: dict[str, dict[str, Any]] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        topics = tuple(Topic(name=t) if isinstance(t, str) else t for t in self.topics)
        object.__setattr__(self, "topics", topics)
        for name in ("queues", "tables", "daemons", "producers"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        for kind in ("topics", "queues", "tables", "daemons", "producers"):
            self._index[kind] = {item.name: item for item in getattr(self, kind)}

    def merged(self, *others: Topology) -> Topology:
        """This topology and ``others`` as one: sections concatenated, the first default topic kept."""
        parts = (self, *others)
        sections = {
            kind: tuple(item for part in parts for item in getattr(part, kind))
            for kind in ("topics", "queues", "tables", "daemons", "producers")
        }
        default_topic = next((p.default_topic for p in parts if p.default_topic), None)
        return Topology(**sections, default_topic=default_topic)

    def topic(self, name: str) -> Topic:
        """The topic called ``name``. Raises: TopologyError."""
        return self._get("topics", name)  # type: ignore[no-any-return]

    def queue(self, name: str) -> Queue:
        """The queue called ``name``. Raises: TopologyError."""
        return self._get("queues", name)  # type: ignore[no-any-return]

    def daemon(self, name: str) -> Daemon:
        """The daemon called ``name``. Raises: TopologyError."""
        return self._get("daemons", name)  # type: ignore[no-any-return]

    def principal(self, name: str) -> Producer:
        """The daemon or producer called ``name``. Raises: TopologyError."""
        found = self._index["daemons"].get(name) or self._index["producers"].get(name)
        if found is None:
            known = sorted(self._index["daemons"]) + sorted(self._index["producers"])
            raise TopologyError(f"No daemon or producer {name!r} in the topology (known: {', '.join(known) or '-'})")
        return found  # type: ignore[no-any-return]

    def _get(self, kind: str, name: str) -> Any:
        try:
            return self._index[kind][name]
        except KeyError:
            known = ", ".join(sorted(self._index[kind])) or "none"
            raise TopologyError(f"No {kind[:-1]} {name!r} in the topology (known: {known})") from None

    def filter_media_types(self, queue: Queue, subscription: Subscription) -> tuple[str, ...] | None:
        """The media types a subscription lets through (None: everything)."""
        if subscription.media_types is not None:
            return subscription.media_types
        handled = {m for daemon in self.daemons if daemon.queue == queue.name for m in daemon.handles}
        return tuple(sorted(handled)) or None

    def routes(self) -> dict[str, str]:
        """Media type → topic name, from the topics' ``media_types``."""
        return {media_type: topic.name for topic in self.topics for media_type in topic.media_types}

    def topic_for(self, media_type: str) -> str | None:
        """The topic a media type is published to (its route, else the default topic)."""
        return self.routes().get(media_type, self.default_topic)

    def validate(self) -> list[str]:
        """Check references and AWS rules; return warnings.

        Raises:
            TopologyError: listing every problem found.
        """
        from microbus.topology.validation import check_topology

        errors, warnings = check_topology(self)
        if errors:
            raise TopologyError("Invalid topology: " + "; ".join(errors))
        return warnings


def field_names(cls: type) -> list[str]:
    """The constructor keywords of a model class."""
    return [f.name for f in fields(cls) if f.init]
