"""Idempotency: run a handler's side effect once per message, even when SQS delivers it twice.

Opt in per handler with ``@handles(Schema, idempotent=True)``. The guard is dispatcher middleware
(``graph.idempotency_guard``, added by the dispatcher's factory); before calling the handler it
claims the message's key (its :attr:`~microbus.SQSMessage.idempotency_key`, prefixed with the
daemon's name) in a store with a conditional write:

- no record, or an ``IN_PROGRESS`` record whose lease has expired → claim it (``IN_PROGRESS`` with a
  lease of ``lease_s``) and call the handler; on success mark it ``COMPLETED`` (kept ``ttl_s``) with the
  handler's response as JSON (up to ``max_response_bytes``; a larger or non-JSON one is kept as a marker
  saying why), on failure delete the claim so the retry can run;
- ``COMPLETED`` → do not call the handler; ack the message (outcome SKIPPED, reason ``duplicate``) with
  the stored response as the result's ``response`` (and under :data:`IDEMPOTENT_RESPONSE` in its
  ``extra``), so that a target whose report was lost reports the response on its retry;
- ``IN_PROGRESS`` within its lease (another worker is running it) → retry after the lease's remainder.

The lease is not renewed: a daemon whose declared handler timeout exceeds ``lease_s`` is refused at start
(:meth:`IdempotencyGuard.check_handler_timeout`). A store that refuses the guard's calls (AccessDenied) is
a configuration error: refused at start by a probe (:meth:`IdempotencyGuard.check_store`), and at run time
it stops the daemon (an :class:`~microbus.errors.AccessDeniedError` is a fatal error): the message goes back
unstarted and the daemon exits 2 with one sentence.

The guarantee, exactly: while the store is reachable and every handler run ends within ``lease_s``,
a handler's side effect happens at most once per message key for ``ttl_s``. If the process dies (or
cannot write the ``COMPLETED`` record) after the side effect and before the record, the claim stays
``IN_PROGRESS`` until its lease expires and the message is then handled again: the side effect can
happen twice, never zero times. Make handlers transactional with their own storage where "twice" is
not acceptable.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from microcosm.api import defaults

from microbus.consume.dispatch import AsyncHandlerCall, HandlerCall, Middleware, Outcome, Result
from microbus.consume.message import SQSMessage
from microbus.errors import (
    ACCESS_DENIED_CODES,
    AccessDeniedError,
    ConfigurationError,
    Nack,
    SkipMessage,
    TransportError,
)
from microbus.wire.sanitize import log_repr
from microbus.wire.transport import translate_errors

if TYPE_CHECKING:
    from microcosm.object_graph import ObjectGraph

logger = logging.getLogger(__name__)

IN_PROGRESS = "IN_PROGRESS"
COMPLETED = "COMPLETED"
MAX_RESPONSE_BYTES = 65_536
"""The largest response (as JSON) a COMPLETED record keeps; DynamoDB items are limited to 400 KB."""
IDEMPOTENT_RESPONSE = "idempotent_response"
"""Key of the :class:`StoredResponse` in the ``extra`` of a duplicate's SkipMessage and Result."""
T = TypeVar("T")


class Decision(Enum):
    """What to do with a message, given its record."""

    PROCEED = "proceed"
    DUPLICATE = "duplicate"
    BUSY = "busy"


@dataclass(frozen=True)
class StoredResponse:
    """What a COMPLETED record kept of the handler's response: its JSON text, or why it was not kept."""

    json: str | None = None
    problem: str | None = None

    @property
    def value(self) -> Any:
        """The response (None when it was not kept: see :attr:`problem`)."""
        return None if self.json is None else json.loads(self.json)

    @classmethod
    def of(cls, response: Any, *, max_bytes: int) -> StoredResponse:
        """Keep ``response`` as JSON, or say why not (not JSON, or over ``max_bytes``)."""
        try:
            text = json.dumps(response, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:
            return cls(problem=f"the response is not JSON ({type(exc).__name__})")
        size = len(text.encode())
        if size > max_bytes:
            return cls(problem=f"the response is {size} bytes, over the idempotency record's limit of {max_bytes}")
        return cls(json=text)


NOT_RECORDED = StoredResponse(problem="the record holds no response (written by an older microbus)")


@dataclass(frozen=True)
class Record:
    """A message's idempotency record; ``response`` is set on COMPLETED records."""

    status: str
    token: str
    lease_until: float
    response: StoredResponse | None = None


def decide(record: Record | None, *, now: float) -> Decision:
    """PROCEED when there is no record or its lease expired, DUPLICATE when completed, else BUSY."""
    if record is None:
        return Decision.PROCEED
    if record.status == COMPLETED:
        return Decision.DUPLICATE
    return Decision.BUSY if record.lease_until > now else Decision.PROCEED


class IdempotencyStore(Protocol):
    """Claims, completes and releases message keys; the claim must be atomic across processes."""

    def claim(self, key: str, *, token: str, now: float, lease_s: float) -> Record | None:
        """Claim ``key`` for ``token``; return None when claimed, else the record that prevented it.

        Raises:
            TransportError: the store could not be reached.
        """
        ...

    def complete(self, key: str, *, token: str, now: float, response: StoredResponse | None = None) -> None:
        """Mark ``key`` handled, keeping ``response`` (returned with the record by later claims)."""
        ...

    def release(self, key: str, *, token: str) -> None:
        """Delete the claim of ``token`` on ``key`` (it stays if someone else holds it)."""
        ...


class IdempotencyGuard(Middleware):
    """Dispatcher middleware: wraps the calls of idempotent handlers with claim → call → complete (or release).

    Parameters:
        store: where records live.
        lease_s: how long a claim blocks other deliveries; at least the daemon's handler timeout (not renewed).
        clock: wall-clock seconds (records are shared between machines).
        max_response_bytes: the largest response (JSON) kept with the COMPLETED record.
    """

    def __init__(
        self,
        *,
        store: IdempotencyStore,
        lease_s: float = 300.0,
        clock: Callable[[], float] = time.time,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ):
        self.store = store
        self.lease_s = lease_s
        self.clock = clock
        self.max_response_bytes = max_response_bytes
        self._keeps_responses = _accepts_keyword(store.complete, "response")
        """Stores written before responses were kept take no ``response``: their duplicates report NOT_RECORDED."""

    guards_idempotent_handlers = True

    def check_handler_timeout(self, handler_timeout_s: float | None, *, daemon: str) -> None:
        """Refuse a lease shorter than the daemon's handler timeout (the lease is not renewed); warn without one.

        Raises:
            ConfigurationError: ``lease_s`` is shorter than ``handler_timeout_s``.
        """
        if handler_timeout_s is None:
            logger.warning(
                "%s has idempotent handlers and declares no handler timeout: they run at most once only if every "
                "run ends within the idempotency lease of %gs (idempotency_guard.lease_s)",
                daemon,
                self.lease_s,
            )
            return
        if self.lease_s < handler_timeout_s:
            raise ConfigurationError(
                f"The idempotency lease of {self.lease_s:g}s is shorter than {daemon}'s handler timeout of "
                f"{handler_timeout_s:g}s, so a slow handler could run twice at once: raise idempotency_guard.lease_s "
                f"to at least {handler_timeout_s:g} or lower the handler timeout."
            )

    def check_store(self) -> None:
        """Probe the store's permissions without writing anything (a start-time check).

        Raises:
            AccessDeniedError: the store refuses one of the guard's calls.
            ConfigurationError: the store does not exist.
            TransportError: the store could not be reached (the caller may defer the check).
        """
        check = getattr(self.store, "check_access", None)
        if check is not None:
            check()

    def around_handler(self, call: HandlerCall) -> Any:
        """Run an idempotent handler at most once per ``<daemon name>#<message idempotency key>``."""
        if not call.idempotent:
            return call.call()
        return self.run(f"{call.source}#{call.message.idempotency_key}", call.call)

    async def around_handler_async(self, call: AsyncHandlerCall) -> Any:
        """The same for async handlers; the store's calls run on a thread, off the event loop."""
        if not call.idempotent:
            return await call.call()
        key = f"{call.source}#{call.message.idempotency_key}"
        token = await asyncio.to_thread(self._claim, key)
        try:
            response = await call.call()
        except BaseException:
            await asyncio.to_thread(self._quietly, self.store.release, key, token=token)
            raise
        await asyncio.to_thread(self._complete, key, token, response)
        return response

    def after_handle(self, message: SQSMessage, result: Result) -> None:
        """A duplicate's result carries the response stored by the run that completed the key."""
        stored = stored_response(result)
        if stored is not None and stored.problem is None:
            result.response = stored.value

    def run(self, key: str, call: Callable[[], T]) -> T:
        """Call ``call`` unless ``key`` was handled or is being handled.

        Raises:
            SkipMessage: already handled (the message is acked); its ``extra`` carries the stored response.
            Nack: being handled elsewhere (retried after the lease's remainder).
            Nack: the store could not be reached before the call (retried with the backoff, not counted as a
                handler failure, so an outage of the table never dead-letters good messages).
            AccessDeniedError: the store refused the claim (fatal: the worker stops).
        """
        token = self._claim(key)
        try:
            response = call()
        except BaseException:
            self._quietly(self.store.release, key, token=token)
            raise
        self._complete(key, token, response)
        return response

    def _complete(self, key: str, token: str, response: Any) -> None:
        # A handler returning False is SKIPPED without a response; the record says the same.
        if not self._keeps_responses:
            self._quietly(self.store.complete, key, token=token, now=self.clock())
            return
        kept = StoredResponse.of(None if response is False else response, max_bytes=self.max_response_bytes)
        self._quietly(self.store.complete, key, token=token, now=self.clock(), response=kept)

    def _claim(self, key: str) -> str:
        """Claim ``key``; return the claim's token.

        Raises:
            SkipMessage: already handled.
            Nack: being handled elsewhere, or the store could not be reached.
            AccessDeniedError: the store refused the call (fatal).
        """
        token = uuid.uuid4().hex
        now = self.clock()
        try:
            record = self.store.claim(key, token=token, now=now, lease_s=self.lease_s)
        except AccessDeniedError:
            raise  # fatal: the worker returns the message and stops, the daemon exits 2
        except TransportError as exc:
            raise Nack(None, reason=f"idempotency store unreachable: {exc}", extra={"idempotency_key": key}) from exc
        if record is not None:
            if decide(record, now=now) is Decision.DUPLICATE:
                stored = record.response or NOT_RECORDED
                raise SkipMessage("duplicate", extra={"idempotency_key": key, IDEMPOTENT_RESPONSE: stored})
            retry_s = max(1, math.ceil(record.lease_until - now))
            raise Nack(retry_s, reason="in progress elsewhere", extra={"idempotency_key": key})
        return token

    def _quietly(self, action: Callable[..., None], key: str, **kwargs: Any) -> None:
        try:
            action(key, **kwargs)
        except AccessDeniedError as exc:
            logger.error("Idempotency record %s not updated (its lease will expire): %s", log_repr(key), exc)
        except TransportError as exc:
            logger.warning("Idempotency record %s not updated (its lease will expire): %s", log_repr(key), exc)


def _accepts_keyword(function: Callable[..., Any], name: str) -> bool:
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def stored_response(result: Result) -> StoredResponse | None:
    """The response a duplicate's COMPLETED record kept, when ``result`` is such a duplicate; else None."""
    stored = result.extra.get(IDEMPOTENT_RESPONSE)
    if result.outcome is Outcome.SKIPPED and isinstance(stored, StoredResponse):
        return stored
    return None


class MemoryIdempotencyStore:
    """A store in this process's memory: for tests and single-process daemons."""

    def __init__(self) -> None:
        self.records: dict[str, Record] = {}
        self._lock = threading.Lock()

    def claim(self, key: str, *, token: str, now: float, lease_s: float) -> Record | None:
        with self._lock:
            record = self.records.get(key)
            if decide(record, now=now) is not Decision.PROCEED:
                return record
            self.records[key] = Record(IN_PROGRESS, token, now + lease_s)
            return None

    def complete(self, key: str, *, token: str, now: float, response: StoredResponse | None = None) -> None:
        with self._lock:
            self.records[key] = Record(COMPLETED, token, now, response)

    def release(self, key: str, *, token: str) -> None:
        with self._lock:
            record = self.records.get(key)
            if record is not None and record.status == IN_PROGRESS and record.token == token:
                del self.records[key]


class DynamoDBIdempotencyStore:
    """Records in a DynamoDB table keyed by ``pk`` (see :class:`microbus.topology.Table`), with conditional writes.

    Parameters:
        client: a boto3 DynamoDB client.
        table_name: the table.
        ttl_s: how long a COMPLETED record is kept (the table's TTL attribute ``expires_at``).
    """

    def __init__(self, *, client: Any, table_name: str, ttl_s: int = 7 * 86_400) -> None:
        self.client = client
        self.table_name = table_name
        self.ttl_s = ttl_s
        self._what = f"DynamoDB table {table_name}"

    def claim(self, key: str, *, token: str, now: float, lease_s: float) -> Record | None:
        item = _item(key, IN_PROGRESS, token, now + lease_s, int(now + max(lease_s, self.ttl_s)))
        with self._translate():
            try:
                self.client.put_item(
                    TableName=self.table_name,
                    Item=item,
                    ConditionExpression="attribute_not_exists(pk) OR (#s = :in_progress AND lease_until < :now)",
                    ExpressionAttributeNames={"#s": "status"},
                    ExpressionAttributeValues={":in_progress": {"S": IN_PROGRESS}, ":now": {"N": repr(now)}},
                )
                return None
            except self.client.exceptions.ConditionalCheckFailedException:
                pass
            response = self.client.get_item(TableName=self.table_name, Key={"pk": {"S": key}}, ConsistentRead=True)
        found = response.get("Item")
        # Deleted between the two calls: report a short lease so the message is retried soon.
        return _record(found) if found else Record(IN_PROGRESS, "", now + 1.0)

    def complete(self, key: str, *, token: str, now: float, response: StoredResponse | None = None) -> None:
        item = _item(key, COMPLETED, token, now, int(now + self.ttl_s))
        if response is not None and response.json is not None:
            item["response"] = {"S": response.json}
        if response is not None and response.problem is not None:
            item["response_problem"] = {"S": response.problem}
        with self._translate():
            self.client.put_item(TableName=self.table_name, Item=item)

    def release(self, key: str, *, token: str) -> None:
        with self._translate():
            try:
                self.client.delete_item(
                    TableName=self.table_name,
                    Key={"pk": {"S": key}},
                    ConditionExpression="#s = :in_progress AND #t = :token",
                    ExpressionAttributeNames={"#s": "status", "#t": "token"},
                    ExpressionAttributeValues={":in_progress": {"S": IN_PROGRESS}, ":token": {"S": token}},
                )
            except self.client.exceptions.ConditionalCheckFailedException:
                pass

    def check_access(self) -> None:
        """Call GetItem, PutItem and DeleteItem on a key that does not exist, the writes with a condition that
        fails, so nothing is written: IAM refuses a call before its condition is evaluated.

        Raises:
            AccessDeniedError: one of the calls is not allowed.
            ConfigurationError: the table does not exist.
            TransportError: the table could not be reached.
        """
        key = {"pk": {"S": f"microbus-access-check#{uuid.uuid4().hex}"}}
        never = "attribute_exists(pk)"
        with self._translate():
            self.client.get_item(TableName=self.table_name, Key=key, ConsistentRead=True)
            try:
                # should an emulator ignore the condition, the item expires (TTL) and its key is never claimed
                item = {**key, "expires_at": {"N": str(int(time.time()) + 60)}}
                self.client.put_item(TableName=self.table_name, Item=item, ConditionExpression=never)
            except self.client.exceptions.ConditionalCheckFailedException:
                pass
            try:
                self.client.delete_item(TableName=self.table_name, Key=key, ConditionExpression=never)
            except self.client.exceptions.ConditionalCheckFailedException:
                pass

    @contextmanager
    def _translate(self) -> Iterator[None]:
        try:
            with translate_errors(self._what):
                yield
        except TransportError as exc:
            cause = exc.__cause__
            if isinstance(cause, self.client.exceptions.ResourceNotFoundException):
                raise ConfigurationError(
                    f"{self._what} does not exist: create it (a topology Table) or set idempotency_guard.table_name"
                ) from exc
            if isinstance(cause, self.client.exceptions.ClientError):
                code = cause.response.get("Error", {}).get("Code", "")
                if code in ACCESS_DENIED_CODES:
                    raise AccessDeniedError(
                        f"{self._what} refused dynamodb:{cause.operation_name} ({code}): grant the daemon's role "
                        f"dynamodb:GetItem, PutItem and DeleteItem on it (see `microbus topology policy`)"
                    ) from exc
            raise


def _item(key: str, status: str, token: str, lease_until: float, expires_at: int) -> dict[str, Any]:
    return {
        "pk": {"S": key},
        "status": {"S": status},
        "token": {"S": token},
        "lease_until": {"N": repr(lease_until)},
        "expires_at": {"N": str(expires_at)},
    }


def _record(item: dict[str, Any]) -> Record:
    response = None
    if "response" in item or "response_problem" in item:
        response = StoredResponse(item.get("response", {}).get("S"), item.get("response_problem", {}).get("S"))
    return Record(item["status"]["S"], item.get("token", {}).get("S", ""), float(item["lease_until"]["N"]), response)


@defaults(
    table_name="microbus-idempotency",
    lease_s=300,
    ttl_s=7 * 86_400,
    max_response_bytes=MAX_RESPONSE_BYTES,
)
def configure_idempotency_guard(graph: ObjectGraph) -> IdempotencyGuard:
    """microcosm factory: ``graph.idempotency_guard``, backed by DynamoDB (``graph.dynamodb_client``)."""
    config = graph.config.idempotency_guard
    if not config.table_name:
        raise ConfigurationError("No idempotency table: set idempotency_guard.table_name")
    store = DynamoDBIdempotencyStore(
        client=graph.dynamodb_client, table_name=config.table_name, ttl_s=int(config.ttl_s)
    )
    return IdempotencyGuard(
        store=store,
        lease_s=float(config.lease_s),
        max_response_bytes=int(config.max_response_bytes),
    )
