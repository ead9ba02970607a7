"""Idempotency: run a handler's side effect once per message, even when SQS delivers it twice.

Opt in per handler with ``@handles(Schema, idempotent=True)``. The guard is dispatcher middleware
(``graph.idempotency_guard``, added by the dispatcher's factory); before calling the handler it
claims the message's key (its :attr:`~microbus.SQSMessage.idempotency_key`, prefixed with the
daemon's name) in a store with a conditional write:

- no record, or an ``IN_PROGRESS`` record whose lease has expired → claim it (``IN_PROGRESS`` with a
  lease of ``lease_s``) and call the handler; on success mark it ``COMPLETED`` (kept ``ttl_s``), on
  failure delete the claim so the retry can run;
- ``COMPLETED`` → do not call the handler; ack the message (outcome SKIPPED, reason ``duplicate``);
- ``IN_PROGRESS`` within its lease (another worker is running it) → retry after the lease's remainder.

The guarantee, exactly: while the store is reachable and every handler run ends within ``lease_s``,
a handler's side effect happens at most once per message key for ``ttl_s``. If the process dies (or
cannot write the ``COMPLETED`` record) after the side effect and before the record, the claim stays
``IN_PROGRESS`` until its lease expires and the message is then handled again: the side effect can
happen twice, never zero times. Make handlers transactional with their own storage where "twice" is
not acceptable.
"""

from __future__ import annotations

import asyncio
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

from microbus.consume.dispatch import AsyncHandlerCall, HandlerCall, Middleware
from microbus.errors import ConfigurationError, Nack, SkipMessage, TransportError
from microbus.wire.transport import translate_errors

if TYPE_CHECKING:
    from microcosm.object_graph import ObjectGraph

logger = logging.getLogger(__name__)

IN_PROGRESS = "IN_PROGRESS"
COMPLETED = "COMPLETED"
T = TypeVar("T")


class Decision(Enum):
    """What to do with a message, given its record."""

    PROCEED = "proceed"
    DUPLICATE = "duplicate"
    BUSY = "busy"


@dataclass(frozen=True)
class Record:
    """A message's idempotency record."""

    status: str
    token: str
    lease_until: float


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

    def complete(self, key: str, *, token: str, now: float) -> None:
        """Mark ``key`` handled."""
        ...

    def release(self, key: str, *, token: str) -> None:
        """Delete the claim of ``token`` on ``key`` (it stays if someone else holds it)."""
        ...


class IdempotencyGuard(Middleware):
    """Dispatcher middleware: wraps the calls of idempotent handlers with claim → call → complete (or release).

    Parameters:
        store: where records live.
        lease_s: how long a claim blocks other deliveries; longer than the slowest handler run.
        clock: wall-clock seconds (records are shared between machines).
    """

    def __init__(self, *, store: IdempotencyStore, lease_s: float = 300.0, clock: Callable[[], float] = time.time):
        self.store = store
        self.lease_s = lease_s
        self.clock = clock

    guards_idempotent_handlers = True

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
        await asyncio.to_thread(self._quietly, self.store.complete, key, token=token, now=self.clock())
        return response

    def run(self, key: str, call: Callable[[], T]) -> T:
        """Call ``call`` unless ``key`` was handled or is being handled.

        Raises:
            SkipMessage: already handled (the message is acked).
            Nack: being handled elsewhere (retried after the lease's remainder).
            Nack: the store could not be reached before the call (retried with the backoff, not counted as a
                handler failure, so an outage of the table never dead-letters good messages).
        """
        token = self._claim(key)
        try:
            response = call()
        except BaseException:
            self._quietly(self.store.release, key, token=token)
            raise
        self._quietly(self.store.complete, key, token=token, now=self.clock())
        return response

    def _claim(self, key: str) -> str:
        """Claim ``key``; return the claim's token.

        Raises:
            SkipMessage: already handled.
            Nack: being handled elsewhere, or the store could not be reached.
        """
        token = uuid.uuid4().hex
        now = self.clock()
        try:
            record = self.store.claim(key, token=token, now=now, lease_s=self.lease_s)
        except TransportError as exc:
            raise Nack(None, reason=f"idempotency store unreachable: {exc}", extra={"idempotency_key": key}) from exc
        if record is not None:
            if decide(record, now=now) is Decision.DUPLICATE:
                raise SkipMessage("duplicate", extra={"idempotency_key": key})
            retry_s = max(1, math.ceil(record.lease_until - now))
            raise Nack(retry_s, reason="in progress elsewhere", extra={"idempotency_key": key})
        return token

    def _quietly(self, action: Callable[..., None], key: str, **kwargs: Any) -> None:
        try:
            action(key, **kwargs)
        except TransportError as exc:
            logger.warning("Idempotency record %r not updated (its lease will expire): %s", key, exc)


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

    def complete(self, key: str, *, token: str, now: float) -> None:
        with self._lock:
            self.records[key] = Record(COMPLETED, token, now)

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

    def complete(self, key: str, *, token: str, now: float) -> None:
        with self._translate():
            self.client.put_item(
                TableName=self.table_name, Item=_item(key, COMPLETED, token, now, int(now + self.ttl_s))
            )

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

    @contextmanager
    def _translate(self) -> Iterator[None]:
        try:
            with translate_errors(self._what):
                yield
        except TransportError as exc:
            if isinstance(exc.__cause__, self.client.exceptions.ResourceNotFoundException):
                raise ConfigurationError(
                    f"{self._what} does not exist: create it (a topology Table) or set idempotency_guard.table_name"
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
    return Record(item["status"]["S"], item.get("token", {}).get("S", ""), float(item["lease_until"]["N"]))


@defaults(table_name="microbus-idempotency", lease_s=300, ttl_s=7 * 86_400)
def configure_idempotency_guard(graph: ObjectGraph) -> IdempotencyGuard:
    """microcosm factory: ``graph.idempotency_guard``, backed by DynamoDB (``graph.dynamodb_client``)."""
    config = graph.config.idempotency_guard
    if not config.table_name:
        raise ConfigurationError("No idempotency table: set idempotency_guard.table_name")
    store = DynamoDBIdempotencyStore(
        client=graph.dynamodb_client, table_name=config.table_name, ttl_s=int(config.ttl_s)
    )
    return IdempotencyGuard(store=store, lease_s=float(config.lease_s))
