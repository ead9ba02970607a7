"""Parallel execution: publish targets under one correlation id; report each outcome to a callback queue.

Patterns layer: sits above dispatch and runtime, which never import it.

Wire format (microcosm-pubsub compatible, ``opaqueData`` stays a string map). Each target message carries:

=========================  ==========================================================================
``x-microbus-cid``         the correlation id
``x-microbus-source``      name of the invoking service
``x-microbus-target``      the target's name as given to ``invoke`` (a media type or a registered name)
``x-microbus-req-ts``      when ``invoke`` was called (ISO 8601, UTC)
``x-microbus-reply-to``    URL of the callback queue
``x-microbus-on-target``   JSON list of on-target callback names
``x-microbus-on-final``    JSON list of on-final callback names (``fan_out`` only)
``x-microbus-expected``    number of targets (``fan_out`` only; absent means no fan-in)
=========================  ==========================================================================

The daemon that ran a target sends one *report* to the callback queue
(:class:`~microbus.reporter.ParallelReporter`); the callback daemon (:mod:`microbus.patterns.fanin`) turns it
into one message per callback name.

``fan_out`` first sends a :class:`FanInDeadline` to the callback queue (the fan-in's targets and start), so
that a fan-in which cannot complete (a target never published, or never reporting) still ends: at the
deadline the callback daemon runs the on-final callbacks with the missing targets marked.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

from marshmallow import fields
from microcosm.api import defaults

from microbus.consume.message import SQSMessage
from microbus.errors import ConfigurationError, DecodeError, PublishError
from microbus.produce.producer import OutgoingMessage, SNSProducer
from microbus.wire.codecs import PubSubMessageSchema
from microbus.wire.context import CID_KEY as CID_KEY  # re-exported
from microbus.wire.context import bind_cid as bind_cid  # re-exported: where the patterns found them first
from microbus.wire.context import current_cid as current_cid
from microbus.wire.context import unbind_cid as unbind_cid
from microbus.wire.envelope import unwrap_envelope
from microbus.wire.sanitize import log_text
from microbus.wire.schemas import media_type_of, schema
from microbus.wire.transport import SQSTransport

if TYPE_CHECKING:
    from microcosm.object_graph import ObjectGraph

logger = logging.getLogger(__name__)

SOURCE_KEY = "x-microbus-source"
TARGET_KEY = "x-microbus-target"
REQ_TS_KEY = "x-microbus-req-ts"
REPLY_TO_KEY = "x-microbus-reply-to"
ON_TARGET_KEY = "x-microbus-on-target"
ON_FINAL_KEY = "x-microbus-on-final"
EXPECTED_KEY = "x-microbus-expected"

ON_TARGET = "on-target"
ON_FINAL = "on-final"
PAYLOAD_FIELDS = ("source", "target", "response", "req_ts_utc", "resp_ts_utc", "ok", "exception", "cid", "phase")

Callback = Callable[[dict[str, Any]], Any]
_callbacks: dict[str, Callback] = {}
_targets: dict[str, str] = {}


@schema
class TargetReport(PubSubMessageSchema):
    """Sent to the callback queue when a target finished: the on-target payload plus routing."""

    MEDIA_TYPE = "application/vnd.microbus.parallel.report"

    report_id = fields.String(required=True)
    cid = fields.String(required=True)
    source = fields.String(required=True)
    target = fields.String(required=True)
    response = fields.Raw(allow_none=True)
    req_ts_utc = fields.String(required=True)
    resp_ts_utc = fields.String(required=True)
    ok = fields.Boolean(required=True)
    exception = fields.String(allow_none=True)
    phase = fields.String(required=True)
    on_target = fields.List(fields.String(), required=True)
    on_final = fields.List(fields.String(), required=True)
    expected = fields.Integer(allow_none=True)


@schema
class CallbackInvocation(PubSubMessageSchema):
    """One named callback to run; on-final invocations load their data from the fan-in store."""

    MEDIA_TYPE = "application/vnd.microbus.parallel.callback"

    callback = fields.String(required=True)
    cid = fields.String(required=True)
    phase = fields.String(required=True)
    payload = fields.Dict(allow_none=True)
    invocation_id = fields.String(allow_none=True)
    """Unique per send; its retries and dead-letter copies keep it (absent on invocations of ``invoke``)."""
    dedup_key = fields.String(allow_none=True)
    """The same for every send of one callback of one fan-in step: only one invocation id runs per key."""


@schema
class FanInDeadline(PubSubMessageSchema):
    """Sent by ``fan_out`` to the callback queue before the targets: the fan-in's targets and start.

    The callback daemon records the target names, and keeps the deadline going (re-sent with a delay)
    until on-final was sent; at the deadline it runs on-final with the targets that never reported.
    """

    MEDIA_TYPE = "application/vnd.microbus.parallel.deadline"

    cid = fields.String(required=True)
    source = fields.String(required=True)
    req_ts_utc = fields.String(required=True)
    targets = fields.List(fields.String(), required=True)
    on_target = fields.List(fields.String(), required=True)
    on_final = fields.List(fields.String(), required=True)
    expected = fields.Integer(required=True)


class FanOutPublishError(PublishError):
    """A fan-out was published only in part: retry it with its cid (or ``resume=``) to publish the rest.

    Attributes:
        cid: the fan-out's correlation id; its fan-in exists (and ends at its deadline if nobody resumes).
        req_ts_utc: the fan-out's start, kept by a resume.
        published: target names that were published (they run; a resume does not publish them again).
        unpublished: target names that were not.
        deadline_sent: whether the fan-in's deadline reached the callback queue.
    """

    def __init__(
        self,
        message: str,
        *,
        cause: PublishError,
        cid: str,
        req_ts_utc: str,
        published: tuple[str, ...],
        unpublished: tuple[str, ...],
        deadline_sent: bool,
    ) -> None:
        super().__init__(message, message_ids=cause.message_ids, failed=cause.failed)
        self.cid = cid
        self.req_ts_utc = req_ts_utc
        self.published = published
        self.unpublished = unpublished
        self.deadline_sent = deadline_sent


def callback(name: str) -> Callable[[Callback], Callback]:
    """Register a function as the parallel-execution callback ``name``; it receives the payload dict.

    Raises:
        ConfigurationError: another function already has that name.
    """

    def decorator(function: Callback) -> Callback:
        known = _callbacks.get(name)
        if known is not None and known.__qualname__ != function.__qualname__:
            raise ConfigurationError(f"Callback {name!r} is registered twice: rename one of them")
        _callbacks[name] = function
        return function

    return decorator


def find_callback(name: str) -> Callback | None:
    """Return the callback registered under ``name``, or None."""
    return _callbacks.get(name)


def register_target(name: str, target: str | type[PubSubMessageSchema]) -> None:
    """Let ``invoke`` and ``fan_out`` accept ``name`` for the media type of ``target``."""
    _targets[name] = media_type_of(target)


def utc_now() -> str:
    """Now, as the ISO 8601 UTC text used in payloads."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _names(text: Any) -> tuple[str, ...]:
    """A JSON list of callback names from opaque data (absent: none).

    Raises:
        ValueError: not a JSON list of strings.
    """
    names = json.loads(text or "[]")
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise ValueError(f"not a JSON list of names: {text!r}")
    return tuple(names)


@dataclass(frozen=True)
class ParallelRequest:
    """What a target message carries about its parallel execution (see the module docstring)."""

    cid: str
    source: str
    target: str
    req_ts_utc: str
    reply_to: str
    on_target: tuple[str, ...]
    on_final: tuple[str, ...] = ()
    expected: int | None = None

    def to_opaque(self) -> dict[str, str]:
        """Opaque data entries, all strings."""
        opaque = {
            CID_KEY: self.cid,
            SOURCE_KEY: self.source,
            TARGET_KEY: self.target,
            REQ_TS_KEY: self.req_ts_utc,
            REPLY_TO_KEY: self.reply_to,
            ON_TARGET_KEY: json.dumps(list(self.on_target)),
        }
        if self.expected is not None:
            opaque[ON_FINAL_KEY] = json.dumps(list(self.on_final))
            opaque[EXPECTED_KEY] = str(self.expected)
        return opaque

    @classmethod
    def from_opaque(cls, opaque: Mapping[str, Any]) -> ParallelRequest | None:
        """Read from opaque data; None when the message is not part of a parallel execution."""
        if not opaque.get(CID_KEY) or not opaque.get(REPLY_TO_KEY):
            return None
        expected = opaque.get(EXPECTED_KEY)
        try:
            return cls(
                cid=str(opaque[CID_KEY]),
                source=str(opaque.get(SOURCE_KEY, "")),
                target=str(opaque.get(TARGET_KEY, "")),
                req_ts_utc=str(opaque.get(REQ_TS_KEY, "")),
                reply_to=str(opaque[REPLY_TO_KEY]),
                on_target=_names(opaque.get(ON_TARGET_KEY)),
                on_final=_names(opaque.get(ON_FINAL_KEY)),
                expected=int(expected) if expected else None,
            )
        except (TypeError, ValueError) as exc:
            logger.warning("Ignoring malformed parallel-execution fields in opaqueData: %s", log_text(str(exc)))
            return None

    @classmethod
    def from_message(cls, message: SQSMessage) -> ParallelRequest | None:
        """Read from a received message, even one whose content did not decode."""
        opaque: Any = message.opaque_data
        if message.content is None:
            try:
                opaque = unwrap_envelope(message.body)[0].get("opaqueData") or {}
            except DecodeError:
                return None
        return cls.from_opaque(opaque) if isinstance(opaque, Mapping) else None


def target_payload(
    request: ParallelRequest, *, response: Any, ok: bool, exception: str | None, resp_ts_utc: str
) -> dict[str, Any]:
    """The on-target callback payload."""
    return {
        "source": request.source,
        "target": request.target,
        "response": response,
        "req_ts_utc": request.req_ts_utc,
        "resp_ts_utc": resp_ts_utc,
        "ok": ok,
        "exception": exception if not ok else None,
        "cid": request.cid,
        "phase": ON_TARGET,
    }


def missing_payload(*, cid: str, source: str, req_ts_utc: str, target: str, reason: str) -> dict[str, Any]:
    """The on-final ``data`` entry of a target that never reported: ``ok`` false, ``resp_ts_utc`` None."""
    return {
        "source": source,
        "target": target,
        "response": None,
        "req_ts_utc": req_ts_utc,
        "resp_ts_utc": None,
        "ok": False,
        "exception": f"FanInTimeoutError: {reason}",
        "cid": cid,
        "phase": ON_TARGET,
    }


def final_payload(
    *,
    cid: str,
    source: str,
    req_ts_utc: str,
    on_target: Iterable[str],
    on_final: Iterable[str],
    data: Iterable[dict[str, Any]],
    missing: Iterable[str] = (),
) -> dict[str, Any]:
    """The on-final callback payload; ``data`` is sorted by response time, then target.

    ``missing`` names the targets that never reported (the fan-in ended at its deadline); ``data`` then
    holds a :func:`missing_payload` entry for each.
    """
    return {
        "phase": ON_FINAL,
        "source": source,
        "req_ts_utc": req_ts_utc,
        "cid": cid,
        "on_target": list(on_target),
        "on_final": list(on_final),
        "data": sorted(data, key=lambda item: (item.get("resp_ts_utc") or "", item.get("target") or "")),
        "missing": sorted(missing),
    }


def parse_utc(text: str) -> float | None:
    """Epoch seconds of an ISO 8601 timestamp (naive means UTC); None when it is not one."""
    try:
        moment = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


@dataclass
class _Partial:
    """A fan-out published in part, kept by the invoker so that a retry with its cid publishes the rest."""

    targets: frozenset[str]
    req_ts_utc: str
    published: set[str]
    deadline_sent: bool


class Parallel:
    """``graph.parallel``: publishes targets for parallel execution and fan-out/fan-in.

    Parameters:
        producer: publishes the target messages (validation, topic by media type).
        source: this service's name, as callbacks see it.
        callback_queue_url: where target daemons send their reports.
        sqs_client: sends each fan-out's :class:`FanInDeadline` to the callback queue; None sends none
            (a fan-in that cannot complete then never ends).
    """

    max_partials: ClassVar[int] = 1_000
    """How many fan-outs published in part are remembered for a retry with their cid (oldest dropped)."""

    def __init__(
        self, *, producer: SNSProducer, source: str, callback_queue_url: str | None, sqs_client: Any = None
    ) -> None:
        self.producer = producer
        self.source = source
        self.callback_queue_url = callback_queue_url
        self.sqs_client = sqs_client
        self._partials: dict[str, _Partial] = {}
        self._lock = threading.Lock()

    def invoke(self, targets: Mapping[str, dict[str, Any]], callbacks: Iterable[str], cid: str | None = None) -> str:
        """Publish one message per target; run ``callbacks`` after each target finished. Return the cid.

        Raises:
            ConfigurationError: no callback queue is configured, or a callback name is empty.
            MessageValidationError, UnknownMediaTypeError, MessageTooLargeError: a target's payload (nothing sent).
            TransportError: publishing failed (``PublishError`` lists what was sent).
        """
        return self._publish(targets, on_target=tuple(callbacks), on_final=None, cid=cid)

    def fan_out(
        self,
        targets: Mapping[str, dict[str, Any]],
        on_target: Iterable[str] = (),
        on_final: Iterable[str] = (),
        cid: str | None = None,
        *,
        resume: FanOutPublishError | None = None,
    ) -> str:
        """Like :meth:`invoke`, plus ``on_final`` callbacks run once after every target finished. Return the cid.

        When a fan-out was published only in part (:class:`FanOutPublishError`), call again with the same
        targets and its cid (this invoker remembers what was sent) or with ``resume=`` the error (any invoker):
        only the targets not yet published are published, into the same fan-in.

        Raises:
            The same as :meth:`invoke`; FanOutPublishError when only some targets were published;
            ConfigurationError: a resume with other targets than the first call's.
        """
        if resume is not None:
            cid = resume.cid
            with self._lock:
                known = self._partials.get(cid)
                if known is None:
                    self._partials[cid] = _Partial(
                        targets=frozenset(resume.published + resume.unpublished),
                        req_ts_utc=resume.req_ts_utc,
                        published=set(resume.published),
                        deadline_sent=resume.deadline_sent,
                    )
        return self._publish(targets, on_target=tuple(on_target), on_final=tuple(on_final), cid=cid)

    def _publish(
        self,
        targets: Mapping[str, dict[str, Any]],
        *,
        on_target: tuple[str, ...],
        on_final: tuple[str, ...] | None,
        cid: str | None,
    ) -> str:
        if not self.callback_queue_url:
            raise ConfigurationError("No callback queue configured: set parallel.callback_queue_url")
        if not targets:
            raise ConfigurationError("Parallel execution needs at least one target")
        names = on_target + (on_final or ())
        if not all(isinstance(name, str) and name for name in names):
            raise ConfigurationError(f"Callback names must be non-empty strings, got {list(names)!r}")
        cid = cid or uuid.uuid4().hex
        fan_in = on_final is not None
        partial = self._partial(cid, targets) if fan_in else None
        req_ts_utc = partial.req_ts_utc if partial else utc_now()
        messages: list[OutgoingMessage] = []
        names_sent: list[str] = []
        for target, payload in targets.items():
            if partial is not None and target in partial.published:
                continue
            request = ParallelRequest(
                cid=cid,
                source=self.source,
                target=target,
                req_ts_utc=req_ts_utc,
                reply_to=self.callback_queue_url,
                on_target=on_target,
                on_final=on_final or (),
                expected=len(targets) if fan_in else None,
            )
            media_type = _targets.get(target, target)
            messages.append(self.producer.create_message(media_type, payload, opaque_data=request.to_opaque()))
            names_sent.append(target)
        deadline_sent = partial.deadline_sent if partial else False
        if fan_in and not deadline_sent:
            self._send_deadline(cid, req_ts_utc, list(targets), on_target, on_final or ())
            deadline_sent = self.sqs_client is not None
        try:
            self.producer.publish_many(messages)
        except PublishError as exc:
            if not fan_in:
                raise
            published = {name for i, name in enumerate(names_sent) if exc.message_ids[i] is not None}
            published -= {names_sent[i] for i in exc.failed}
            raise self._partly(exc, cid, req_ts_utc, targets, partial, published, deadline_sent) from exc
        with self._lock:
            self._partials.pop(cid, None)
        logger.info("Published %d targets for cid %r", len(messages), cid)
        return cid

    def _partial(self, cid: str, targets: Mapping[str, Any]) -> _Partial | None:
        """What an earlier call with this cid published, when it was published only in part.

        Raises:
            ConfigurationError: the targets differ from that call's.
        """
        with self._lock:
            partial = self._partials.get(cid)
        if partial is not None and partial.targets != frozenset(targets):
            raise ConfigurationError(
                f"cid {cid!r} names a fan-out published in part with targets {sorted(partial.targets)}: "
                "resume it with the same targets"
            )
        return partial

    def _partly(
        self,
        exc: PublishError,
        cid: str,
        req_ts_utc: str,
        targets: Mapping[str, Any],
        partial: _Partial | None,
        published_now: set[str],
        deadline_sent: bool,
    ) -> FanOutPublishError:
        """Remember what a fan-out published in part, and the error that says how to resume it."""
        published = published_now | (partial.published if partial else set())
        with self._lock:
            self._partials[cid] = _Partial(frozenset(targets), req_ts_utc, published, deadline_sent)
            while len(self._partials) > self.max_partials:
                self._partials.pop(next(iter(self._partials)))
        done = tuple(name for name in targets if name in published)
        missing = tuple(name for name in targets if name not in published)
        return FanOutPublishError(
            f"Fan-out {cid!r} was published in part: {len(missing)} of {len(targets)} targets were not "
            f"({', '.join(missing)}): {exc}. Call fan_out again with cid={cid!r} to publish the rest; "
            "otherwise the fan-in ends at its deadline with them missing",
            cause=exc,
            cid=cid,
            req_ts_utc=req_ts_utc,
            published=done,
            unpublished=missing,
            deadline_sent=deadline_sent,
        )

    def _send_deadline(
        self, cid: str, req_ts_utc: str, targets: list[str], on_target: tuple[str, ...], on_final: tuple[str, ...]
    ) -> None:
        """Send the fan-in's deadline to the callback queue (before any target is published).

        Raises:
            TransportError: the callback queue could not be reached (no target was published).
        """
        if self.sqs_client is None or self.callback_queue_url is None:
            logger.warning("No SQS client for the deadline of fan-out %r: if it cannot complete, it never ends", cid)
            return
        body = self.producer.schema_registry.find(FanInDeadline.MEDIA_TYPE).encode(
            {
                "cid": cid,
                "source": self.source,
                "req_ts_utc": req_ts_utc,
                "targets": targets,
                "on_target": list(on_target),
                "on_final": list(on_final),
                "expected": len(targets),
            },
            opaque_data={CID_KEY: cid},
        )
        transport = SQSTransport(client=self.sqs_client, queue_url=self.callback_queue_url)
        transport.send(body, {"media_type": {"DataType": "String", "StringValue": FanInDeadline.MEDIA_TYPE}})


@defaults(callback_queue_url=None)
def configure_parallel(graph: ObjectGraph) -> Parallel:
    """microcosm factory: ``graph.parallel``, reading ``parallel.callback_queue_url``."""
    return Parallel(
        producer=graph.microbus_sns_producer,
        source=graph.metadata.name,
        callback_queue_url=graph.config.parallel.callback_queue_url or None,
        sqs_client=graph.sqs_client,
    )
