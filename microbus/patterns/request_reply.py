"""Request/reply over SNS and SQS: publish a request, wait for the handler's reply on a per-process reply queue.

Caller: :class:`Requester` (``graph.requester``) creates one reply queue for the process on its first request
(``microbus-reply-<service>-<random>``), removes it on :meth:`Requester.close`, and matches replies to waiting
requests by correlation id. A request carries in its ``opaqueData`` the correlation id (``x-microbus-cid``, so
``current_cid()`` works in the handler) and the reply queue (``x-microbus-reply-queue``).

Handler side: :class:`Replier` (``graph.replier``, dispatcher middleware) sends the handler's return value to the
request's reply queue, and acks the request only after the reply was sent. Anyone who may publish to the topic
chooses the reply queue, so the replier only replies to queues in ``replier.allowed_reply_queues`` (default
``microbus-reply-*``: requesters' queues on the daemon's own host and account); a request naming another is
dead-lettered without running (REJECTED, ``reply-to-not-allowed``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import uuid
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING, Any

from microcosm.api import defaults

from microbus.consume.dispatch import AsyncHandlerCall, HandlerCall, Middleware, Outcome, Result
from microbus.consume.message import SQSMessage
from microbus.errors import (
    ConfigurationError,
    PatternError,
    QueueNotFoundError,
    RemoteHandlerError,
    RequestTimeoutError,
    SkipMessage,
    TransportError,
)
from microbus.patterns.parallel import CID_KEY, bind_cid, unbind_cid
from microbus.patterns.reporter import REPLY_TO_NOT_ALLOWED, ReplyQueues, exception_text
from microbus.produce.producer import SNSProducer, capturing
from microbus.wire.sanitize import log_repr
from microbus.wire.transport import SQSTransport, translate_errors

if TYPE_CHECKING:
    from contextvars import Token

    from microcosm.object_graph import ObjectGraph

logger = logging.getLogger(__name__)

REPLY_QUEUE_KEY = "x-microbus-reply-queue"
REPLY_MEDIA_TYPE = "application/vnd.microbus.reply"
REPLY_QUEUE_PREFIX = "microbus-reply-"
DEFAULT_REPLY_MAX_BYTES = 262_144
"""The size limit of a reply when the reply queue's ``MaximumMessageSize`` cannot be read."""


class Requester:
    """Publishes requests and waits for their replies on one reply queue per process.

    Parameters:
        producer: publishes requests (validation, topic by media type).
        sqs_client: creates, reads and removes the reply queue.
        source: this service's name, part of the reply queue's name.
        queue_prefix: the reply queue's name starts with it (handlers allow ``<prefix>*``).
        wait_seconds: long-poll wait of the reply listener (also how long :meth:`close` may take).
    """

    def __init__(
        self,
        *,
        producer: SNSProducer,
        sqs_client: Any,
        source: str,
        queue_prefix: str = REPLY_QUEUE_PREFIX,
        wait_seconds: int = 1,
    ) -> None:
        self.producer = producer
        self.sqs_client = sqs_client
        self.source = source
        self.queue_prefix = queue_prefix
        self.wait_seconds = wait_seconds
        self.queue_url: str | None = None
        self._pending: dict[str, Future[Any]] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._listener: threading.Thread | None = None

    def request(
        self, media_type: str, content: dict[str, Any] | None = None, *, timeout: float = 30.0, **kwargs: Any
    ) -> Any:
        """Publish a request and return the handler's reply (its return value).

        Raises:
            RequestTimeoutError: no reply within ``timeout`` seconds (a late reply is dropped with a log line).
            RemoteHandlerError: the handler failed for good (dead-lettered) and said why.
            MessageValidationError, MessageTooLargeError, TopicNotDefinedError, TransportError: as ``produce``.
        """
        cid, future = self._send(media_type, content, kwargs)
        try:
            return future.result(timeout)
        except FutureTimeout:
            raise self._timed_out(cid, media_type, timeout) from None
        finally:
            self._forget(cid)

    async def request_async(
        self, media_type: str, content: dict[str, Any] | None = None, *, timeout: float = 30.0, **kwargs: Any
    ) -> Any:
        """:meth:`request` for asyncio code: the publish runs in a thread, the wait does not block the loop."""
        cid, future = await asyncio.to_thread(self._send, media_type, content, kwargs)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        except TimeoutError:
            raise self._timed_out(cid, media_type, timeout) from None
        finally:
            self._forget(cid)

    def _send(self, media_type: str, content: dict[str, Any] | None, kwargs: dict[str, Any]) -> tuple[str, Future[Any]]:
        queue_url = self._reply_queue()
        cid = uuid.uuid4().hex
        opaque = {**dict(kwargs.pop("opaque_data", None) or {}), CID_KEY: cid, REPLY_QUEUE_KEY: queue_url}
        outgoing = self.producer.create_message(media_type, content, opaque_data=opaque, **kwargs)
        future: Future[Any] = Future()
        with self._lock:
            self._pending[cid] = future
        try:
            with capturing(None):  # at once, even in a deferred block or an outbox transaction: the reply is awaited
                self.producer.publish(outgoing)
        except BaseException:
            self._forget(cid)
            raise
        return cid, future

    def _forget(self, cid: str) -> None:
        with self._lock:
            self._pending.pop(cid, None)

    @staticmethod
    def _timed_out(cid: str, media_type: str, timeout: float) -> RequestTimeoutError:
        return RequestTimeoutError(
            f"No reply to the {media_type} request {cid} within {timeout:g}s: is a daemon with the replier "
            "middleware handling it? (a reply that comes later is dropped)"
        )

    def _reply_queue(self) -> str:
        """The reply queue, created (and its listener started) on first use.

        Raises:
            PatternError: the requester was closed.
            TransportError: the queue could not be created.
        """
        with self._lock:
            if self._closed.is_set():
                raise PatternError("This requester is closed: create another one")
            if self.queue_url is None:
                name = f"{self.queue_prefix}{self.source}-{uuid.uuid4().hex[:12]}"[:80]
                with translate_errors(f"SQS reply queue {name}"):
                    response = self.sqs_client.create_queue(
                        QueueName=name, Attributes={"MaximumMessageSize": "1048576", "MessageRetentionPeriod": "3600"}
                    )
                self.queue_url = str(response["QueueUrl"])
                self._listener = threading.Thread(target=self._listen, name="microbus-replies", daemon=True)
                self._listener.start()
            return self.queue_url

    def _listen(self) -> None:
        """Receive replies until closed; each is matched to its request, or dropped (late) with a log line."""
        assert self.queue_url is not None
        transport = SQSTransport(client=self.sqs_client, queue_url=self.queue_url)
        while not self._closed.is_set():
            try:
                raws = transport.receive(max_messages=10, wait_time_seconds=self.wait_seconds)
                for raw in raws:
                    self._deliver(raw.get("Body", ""))
                if raws:
                    transport.delete_batch([raw["ReceiptHandle"] for raw in raws])
            except TransportError as exc:
                if not self._closed.is_set():
                    logger.warning("Receiving replies failed (%s); trying again", exc)
                    self._closed.wait(1.0)
            except Exception:  # never let the listener die: a request would wait for nothing
                logger.exception("Unexpected error receiving replies; trying again")
                self._closed.wait(1.0)

    def _deliver(self, body: str) -> None:
        try:
            reply = json.loads(body)
            cid, ok = reply["cid"], reply["ok"]
            if not isinstance(cid, str) or not isinstance(ok, bool):
                raise TypeError("cid or ok of the wrong type")
        except (ValueError, TypeError, KeyError, RecursionError):
            logger.warning("Dropped a malformed reply (%d chars) from the reply queue", len(body))
            return
        with self._lock:
            future = self._pending.pop(cid, None)
        if future is None:
            logger.info("Dropped a late reply to request %s (it timed out, or was answered already)", log_repr(cid))
            return
        if ok:
            future.set_result(reply.get("response"))
        else:
            future.set_exception(
                RemoteHandlerError(str(reply.get("error") or "failed"), error_class=str(reply.get("error_class") or ""))
            )

    def close(self) -> None:
        """Stop listening and remove the reply queue; waiting requests end with :class:`RequestTimeoutError`."""
        self._closed.set()
        if self._listener is not None:
            self._listener.join(self.wait_seconds + 5)
        with self._lock:
            queue_url, self.queue_url = self.queue_url, None
        if queue_url is not None:
            try:
                with translate_errors(f"SQS reply queue {queue_url}"):
                    self.sqs_client.delete_queue(QueueUrl=queue_url)
            except TransportError as exc:
                logger.warning("Could not remove the reply queue %s: %s", queue_url, exc)

    def __enter__(self) -> Requester:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Replier(Middleware):
    """Dispatcher middleware: a request's handler return value is sent to the request's reply queue.

    Replies go out for SUCCEEDED / SKIPPED (``ok`` true, the return value) and for EXPIRED / REJECTED (``ok`` false
    with the error), never for a failure that will be retried. The request is acked only once its reply was sent:
    a failed send retries it (FAILED, reason ``reply-send-failed``). A return value that is not JSON, or larger
    than the reply queue's ``MaximumMessageSize``, is replied as an error.

    Parameters:
        sqs_client: sends replies and reads reply queues' size limits.
        allowed_reply_queues: queue URLs, SQS ARNs, names or name prefixes (``microbus-reply-*``) replies may go to.
        home_queue_url: the daemon's own queue; names and prefixes match only on its host and account.

    Raises:
        ConfigurationError: no allowed reply queue.
    """

    def __init__(self, *, sqs_client: Any, allowed_reply_queues: list[str], home_queue_url: str | None = None) -> None:
        self.reply_queues = ReplyQueues(allowed_reply_queues, home_queue_url=home_queue_url)
        if not self.reply_queues:
            raise ConfigurationError("The replier has no reply queue to reply to: set replier.allowed_reply_queues")
        self.sqs_client = sqs_client
        self._limits: dict[str, int] = {}
        self._active: dict[int, tuple[str | None, Token[str | None]]] = {}
        self._lock = threading.Lock()

    def before_handle(self, message: SQSMessage) -> None:
        opaque = message.opaque_data
        reply_to, cid = opaque.get(REPLY_QUEUE_KEY), opaque.get(CID_KEY)
        if not isinstance(reply_to, str) or not isinstance(cid, str):
            return
        allowed = self.reply_queues.allows(reply_to)
        if not allowed:
            logger.warning(
                "Request %r asks for a reply to %s, which is not one of replier.allowed_reply_queues: "
                "dead-lettered without running it",
                message.message_id,
                log_repr(reply_to),
            )
        with self._lock:
            self._active[id(message)] = (reply_to if allowed else None, bind_cid(cid))

    def _refused(self, message: SQSMessage) -> bool:
        with self._lock:
            active = self._active.get(id(message))
        return active is not None and active[0] is None

    def around_handler(self, call: HandlerCall) -> Any:
        """A request with a reply queue that is not allowed is not run."""
        if self._refused(call.message):
            raise SkipMessage(REPLY_TO_NOT_ALLOWED)
        return call.call()

    async def around_handler_async(self, call: AsyncHandlerCall) -> Any:
        """The same for async handlers."""
        if self._refused(call.message):
            raise SkipMessage(REPLY_TO_NOT_ALLOWED)
        return await call.call()

    def after_handle(self, message: SQSMessage, result: Result) -> None:
        with self._lock:
            reply_to, token = self._active.pop(id(message), (None, None))
        if token is None:
            return  # not a request
        unbind_cid(token)
        if reply_to is None:
            result.outcome, result.reason, result.response = Outcome.REJECTED, REPLY_TO_NOT_ALLOWED, None
            result.error = PatternError("x-microbus-reply-queue is not one of replier.allowed_reply_queues")
            return
        if result.outcome not in (Outcome.SUCCEEDED, Outcome.SKIPPED, Outcome.EXPIRED, Outcome.REJECTED):
            return
        try:
            self.send_reply(reply_to, str(message.opaque_data[CID_KEY]), result)
        except QueueNotFoundError:  # the requester closed: nobody waits for this reply, and a retry cannot help
            logger.info("Reply to request %r dropped: its reply queue is gone", message.message_id)
        except TransportError as exc:
            logger.warning("Could not reply to request %r: %s", message.message_id, exc)
            result.outcome, result.reason, result.error, result.retry_after_s = (
                Outcome.FAILED,
                "reply-send-failed",
                exc,
                None,
            )

    def send_reply(self, reply_to: str, cid: str, result: Result) -> None:
        """Send the reply of a finished request.

        Raises:
            TransportError: the reply queue could not be reached (or is gone: its requester closed).
        """
        ok = result.outcome in (Outcome.SUCCEEDED, Outcome.SKIPPED)
        if ok:
            response = None if result.response is False else result.response
            reply = {"cid": cid, "ok": True, "response": response}
        else:
            reply = _error_reply(cid, type(result.error).__name__, exception_text(result.error, result.reason))
        try:
            body = json.dumps(reply)
        except (TypeError, ValueError):
            body = json.dumps(_error_reply(cid, "ResponseNotSerializableError", "The handler's reply is not JSON"))
        limit = self._limit(reply_to)
        if len(body.encode()) > limit:
            text = f"The handler's reply is {len(body.encode())} bytes, over the reply queue's limit of {limit}"
            body = json.dumps(_error_reply(cid, "ResponseTooLargeError", text))
        SQSTransport(client=self.sqs_client, queue_url=reply_to).send(
            body, {"media_type": {"DataType": "String", "StringValue": REPLY_MEDIA_TYPE}}
        )

    def _limit(self, reply_to: str) -> int:
        """The reply queue's ``MaximumMessageSize`` (read once per queue), else 256 KiB."""
        known = self._limits.get(reply_to)
        if known is None:
            try:
                value = SQSTransport(client=self.sqs_client, queue_url=reply_to).get_attributes()["MaximumMessageSize"]
                known = int(value)
            except (TransportError, KeyError, ValueError):
                known = DEFAULT_REPLY_MAX_BYTES
            self._limits[reply_to] = known
        return known


def _error_reply(cid: str, error_class: str, text: str) -> dict[str, Any]:
    return {"cid": cid, "ok": False, "error_class": error_class, "error": text[-4096:]}


@defaults(queue_prefix=REPLY_QUEUE_PREFIX, wait_seconds=1)
def configure_requester(graph: ObjectGraph) -> Requester:
    """microcosm factory: ``graph.requester``; ``requester.queue_prefix`` names its reply queue."""
    config = graph.config.requester
    return Requester(
        producer=graph.microbus_sns_producer,
        sqs_client=graph.sqs_client,
        source=graph.metadata.name,
        queue_prefix=str(config.queue_prefix),
        wait_seconds=int(config.wait_seconds),
    )


@defaults(allowed_reply_queues=None)
def configure_replier(graph: ObjectGraph) -> Replier:
    """microcosm factory: ``graph.replier``; list it in ``microbus_sqs_message_dispatcher.middleware``.

    ``replier.allowed_reply_queues``: a list (or comma-separated text) of queue URLs, ARNs, names or name
    prefixes ending in ``*``; default ``microbus-reply-*``, on the host and account of the daemon's own queue.
    """
    allowed = graph.config.replier.allowed_reply_queues or [f"{REPLY_QUEUE_PREFIX}*"]
    if isinstance(allowed, str):
        allowed = allowed.split(",")
    return Replier(
        sqs_client=graph.sqs_client,
        allowed_reply_queues=list(allowed),
        home_queue_url=graph.config.microbus_sqs_consumer.sqs_queue_url or None,
    )
