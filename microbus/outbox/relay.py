"""The outbox relay: publishes committed outbox rows in creation order with PublishBatch and marks them sent.

At least once: a row is marked sent only after SNS accepted it; a crash in between leaves it pending and it is
published again, with the same ``x-microbus-message-id`` (and, to a FIFO topic, the same deduplication id), so
an idempotent handler sees one message. Relays may run side by side: on PostgreSQL each batch locks its rows
(``FOR UPDATE SKIP LOCKED``) and the others take the next ones; on SQLite each batch is claimed for a lease in a
short write transaction (SQLite has one writer for the whole database, and holding it while SNS answers would
stop the application's writes).

A row that can never be published (its message or attributes are not JSON, its media type is unknown or not
the one of its body) is logged as an error, marked ``failed_at`` with the reason in ``last_error`` and kept;
the relay goes on with the other rows, except the later rows of the same FIFO message group, which wait behind
it: a FIFO group's order is the only order SNS keeps, and publishing past a gap in it would break it. Clear
``failed_at`` (after fixing the row) to have it relayed."""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, delete, exists, false, or_, select, update

from microbus.consume.supervision import restart_backoff_s
from microbus.errors import MicrobusError, PublishError
from microbus.outbox.outbox import Outbox
from microbus.produce.producer import OutgoingMessage, SNSProducer, capturing, is_fifo_topic
from microbus.wire.sanitize import log_repr, log_text

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine, Row

    from microbus.wire.schemas import SchemaRegistry

logger = logging.getLogger(__name__)
_PURGE_INTERVAL_S = 60.0


class MalformedOutboxRowError(MicrobusError):
    """An outbox row that can never be published as it is."""


@dataclass(frozen=True)
class RelayResult:
    """What one relay batch did."""

    published: int = 0
    failed: int = 0
    """Rows held as malformed."""
    retry: int = 0
    """Rows SNS refused this time; still pending."""

    @property
    def selected(self) -> int:
        """Rows the batch took."""
        return self.published + self.failed + self.retry


class OutboxRelay:
    """Publishes pending outbox rows; run :meth:`relay_once` yourself, :meth:`run` in a loop, or :meth:`start`.

    Parameters:
        engine: the application's database.
        producer: publishes (its PublishBatch batching, retries and FIFO deduplication ids); its schema registry
            decides which media types are known, when ``check_media_types``.
        outbox: the outbox table (default ``microbus_outbox``).
        batch_size: rows per batch (one transaction).
        poll_interval_s: pause when nothing is pending.
        check_media_types: hold rows whose media type the producer's registry does not know.
        claim_lease_s: SQLite only: how long a batch stays claimed by a relay that may have died while publishing
            it; longer than a publish can take (with the producer's retries), shorter than you can wait after a
            crash.
        keep_sent_s: how long sent rows are kept before :meth:`run` deletes them; None: never.
    """

    def __init__(
        self,
        *,
        engine: Engine,
        producer: SNSProducer,
        outbox: Outbox | None = None,
        batch_size: int = 10,
        poll_interval_s: float = 1.0,
        check_media_types: bool = True,
        claim_lease_s: float = 120.0,
        keep_sent_s: float | None = 7 * 86_400,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        self.engine = engine
        self.producer = producer
        self.outbox = outbox or Outbox()
        self.batch_size = batch_size
        self.poll_interval_s = poll_interval_s
        self.claim_lease_s = claim_lease_s
        self.keep_sent_s = keep_sent_s
        self.registry: SchemaRegistry | None = producer.schema_registry if check_media_types else None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def relay_once(self) -> RelayResult:
        """Publish one batch of pending rows, oldest first; return what happened.

        On PostgreSQL (and other databases with row locks) the batch is one transaction that locks its rows
        (``FOR UPDATE SKIP LOCKED``) while they are published. SQLite locks the whole database for a write, which
        would stop the application's writes while SNS is slow, so there the batch is claimed for
        ``claim_lease_s`` in a short transaction, published, and marked in a second one; a relay that dies in
        between leaves its claim, and the rows are published again once it expired.

        Raises:
            sqlalchemy.exc.SQLAlchemyError: the database failed (the batch's rows stay pending).
        """
        if self.engine.dialect.name == "sqlite":
            return self._relay_claimed()
        with self.engine.begin() as connection:
            rows = list(connection.execute(self._pending()).all())
            return self._record(connection, *self._attempt(rows)) if rows else RelayResult()

    def _relay_claimed(self) -> RelayResult:
        table = self.outbox.table
        now = _now()
        with self.engine.begin() as connection:
            connection.execute(update(table).where(false()).values(attempts=table.c.attempts))  # the write lock
            rows = list(connection.execute(self._pending(claimable_at=now)).all())
            if not rows:
                return RelayResult()
            claimed_until = now + timedelta(seconds=self.claim_lease_s)
            ids = [row.id for row in rows]
            connection.execute(update(table).where(table.c.id.in_(ids)).values(claimed_until=claimed_until))
        outcome = self._attempt(rows)
        with self.engine.begin() as connection:
            # Released, also the rows left out (behind a malformed row of their FIFO group).
            connection.execute(update(table).where(table.c.id.in_(ids)).values(claimed_until=None))
            return self._record(connection, *outcome)

    def _pending(self, claimable_at: datetime | None = None) -> Any:
        table = self.outbox.table
        held = table.alias("held")
        behind_failed_row = exists().where(
            and_(
                held.c.failed_at.is_not(None),
                held.c.sent_at.is_(None),
                held.c.message_group_id.is_not(None),
                held.c.topic_arn == table.c.topic_arn,
                held.c.message_group_id == table.c.message_group_id,
                held.c.id < table.c.id,
            )
        )
        query = select(table).where(table.c.sent_at.is_(None), table.c.failed_at.is_(None), ~behind_failed_row)
        if claimable_at is not None:
            query = query.where(or_(table.c.claimed_until.is_(None), table.c.claimed_until < claimable_at))
        return query.order_by(table.c.id).limit(self.batch_size).with_for_update(skip_locked=True)

    def _attempt(self, rows: list[Row[Any]]) -> tuple[list[int], dict[int, str], dict[int, str]]:
        """Check and publish rows (no database call); return the rows sent, refused by SNS, and held as broken."""
        good, broken = self._check(rows)
        refused, broken_by_publish = self._send(good)
        broken.update(broken_by_publish)
        sent = [row_id for row_id, _ in good if row_id not in refused and row_id not in broken]
        return sent, refused, broken

    def _check(self, rows: list[Row[Any]]) -> tuple[list[tuple[int, OutgoingMessage]], dict[int, str]]:
        """The rows that can be published, as messages, and the malformed ones with the reason. Later rows of a
        malformed row's FIFO group are left out (they wait behind it)."""
        good: list[tuple[int, OutgoingMessage]] = []
        broken: dict[int, str] = {}
        blocked: set[tuple[str, str]] = set()
        for row in rows:
            group = (row.topic_arn, row.message_group_id)
            if row.message_group_id is not None and group in blocked:
                continue
            try:
                good.append((row.id, self._message(row)))
            except MalformedOutboxRowError as exc:
                broken[row.id] = str(exc)
                if row.message_group_id is not None:
                    blocked.add(group)
        return good, broken

    def _message(self, row: Row[Any]) -> OutgoingMessage:
        """The message of a row, checked.

        Raises:
            MalformedOutboxRowError: its JSON is corrupt, or its media type unknown or not its body's.
        """
        media_type = row.media_type
        try:
            body = json.loads(row.message)
            attributes = json.loads(row.message_attributes)
        except (TypeError, ValueError) as exc:
            raise MalformedOutboxRowError(f"{log_repr(media_type)} message is not valid JSON ({exc})") from None
        if not isinstance(body, dict) or not isinstance(attributes, dict):
            raise MalformedOutboxRowError(f"{log_repr(media_type)} message or attributes are not JSON objects")
        if not all(_is_string_attribute(name, value) for name, value in attributes.items()):
            raise MalformedOutboxRowError(
                f"{log_repr(media_type)} message attributes are not SNS string attributes "
                '({"name": {"DataType": "String", "StringValue": "..."}})'
            )
        if body.get("mediaType") != media_type:
            raise MalformedOutboxRowError(
                f"the row's media type {log_repr(media_type)} is not its body's {log_repr(body.get('mediaType'))}"
            )
        if is_fifo_topic(row.topic_arn) and not row.message_group_id:
            raise MalformedOutboxRowError(f"{log_repr(media_type)} message to a FIFO topic has no message group id")
        if row.offload and self.producer.payload_store is None:
            raise MalformedOutboxRowError(
                f"{log_repr(media_type)} message is over the topic's limit and this relay has no payload store: "
                "turn on large payloads (payload_store.bucket, --payload-bucket), then clear failed_at"
            )
        if self.registry is not None and media_type not in self.registry:
            raise MalformedOutboxRowError(f"unknown media type {log_repr(media_type)}: no schema is registered for it")
        return OutgoingMessage(
            media_type,
            row.topic_arn,
            row.message,
            attributes,
            message_id=row.message_id,
            message_group_id=row.message_group_id,
            deduplication_id=row.deduplication_id,
            offload=bool(row.offload),
        )

    def _record(
        self, connection: Connection, sent: list[int], refused: dict[int, str], broken: dict[int, str]
    ) -> RelayResult:
        """Mark rows sent, refused (still pending) or failed (held, with the reason), releasing any claim."""
        for row_id, reason in broken.items():
            logger.error("Outbox row %d cannot be published and is kept, held: %s", row_id, reason)
            self._mark(connection, [row_id], failed_at=_now(), last_error=reason)
        if sent:
            self._mark(connection, sent, sent_at=_now())
        for row_id, reason in refused.items():
            self._mark(connection, [row_id], last_error=reason[:1000])
        return RelayResult(published=len(sent), failed=len(broken), retry=len(refused))

    def _send(self, batch: list[tuple[int, OutgoingMessage]]) -> tuple[dict[int, str], dict[int, str]]:
        """Publish a batch; return the rows SNS refused (retried later) and the rows that broke the publish itself
        (an error other than SNS's: held). A batch that breaks is sent again row by row to find the culprit;
        rows of a FIFO group after a broken row are not sent (they wait behind it)."""
        if not batch:
            return {}, {}
        try:
            with capturing(None):  # to SNS, even when called inside a deferred block or an outbox transaction
                self.producer.publish_many([message for _, message in batch])
        except PublishError as exc:
            logger.warning("Outbox: %d of %d messages not published, retried later", len(exc.failed), len(batch))
            return {batch[index][0]: reason for index, reason in exc.failed.items()}, {}
        except Exception as exc:  # a row SNS's client cannot even send (e.g. a parameter it refuses)
            if len(batch) == 1:
                return {}, {batch[0][0]: f"publishing failed: {type(exc).__name__}: {log_text(str(exc))}"}
            refused: dict[int, str] = {}
            broken: dict[int, str] = {}
            blocked: set[tuple[str, str]] = set()
            for row_id, message in batch:
                if message.message_group_id is not None and _group(message) in blocked:
                    refused[row_id] = "waiting behind an earlier row of its FIFO group"
                    continue
                one_refused, one_broken = self._send([(row_id, message)])
                refused.update(one_refused)
                broken.update(one_broken)
                if one_broken and message.message_group_id is not None:
                    blocked.add(_group(message))
            return refused, broken
        return {}, {}

    def _mark(self, connection: Connection, row_ids: list[int], **values: Any) -> None:
        table = self.outbox.table
        released = {"claimed_until": None, **values}
        connection.execute(
            update(table).where(table.c.id.in_(row_ids)).values(attempts=table.c.attempts + 1, **released)
        )

    def run_until_idle(self) -> int:
        """Relay batches until none is pending that can be published now; return the rows published."""
        published = 0
        while True:
            result = self.relay_once()
            published += result.published
            if result.selected < self.batch_size and not result.retry:
                return published
            if result.retry and not result.published:
                return published

    def purge_sent(self) -> int:
        """Delete the rows sent more than ``keep_sent_s`` ago (none when it is None); return how many.

        Raises:
            sqlalchemy.exc.SQLAlchemyError: the database failed.
        """
        if self.keep_sent_s is None:
            return 0
        table = self.outbox.table
        cutoff = _now() - timedelta(seconds=self.keep_sent_s)
        with self.engine.begin() as connection:
            deleted = connection.execute(delete(table).where(table.c.sent_at < cutoff)).rowcount
        if deleted:
            logger.info("Outbox: deleted %d row(s) sent before %s", deleted, cutoff.isoformat())
        return int(deleted or 0)

    def run(self) -> None:
        """Relay until :meth:`stop`: a full batch is followed at once by the next, else a pause of
        ``poll_interval_s``; when idle, at most once a minute, :meth:`purge_sent`. An error is logged (with its
        traceback the first time in a row) and the loop goes on after a backoff; the current batch finishes before
        it stops."""
        failures = 0
        purged_at = float("-inf")
        while not self._stop.is_set():
            try:
                result = self.relay_once()
                idle = result.selected < self.batch_size or bool(result.retry)
                if idle and time.monotonic() - purged_at >= _PURGE_INTERVAL_S:
                    purged_at = time.monotonic()
                    self.purge_sent()
            except Exception as exc:  # the relay outlives a database or network outage
                failures += 1
                delay = restart_backoff_s(failures, base_s=self.poll_interval_s)
                reason = log_text(str(exc))
                logger.error("Outbox relay batch failed (%s); next try in %.1fs", reason, delay, exc_info=failures == 1)
                self._stop.wait(delay)
                continue
            failures = 0
            if idle:
                self._stop.wait(self.poll_interval_s)

    def start(self) -> OutboxRelay:
        """Run :meth:`run` on a daemon thread (embedded in the application); return self."""
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("the outbox relay is already running")
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, name="microbus-outbox-relay", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Stop after the current batch; wait up to ``timeout_s``; True when the thread has ended."""
        self._stop.set()
        if self._thread is None:
            return True
        self._thread.join(timeout_s)
        return not self._thread.is_alive()


def _group(message: OutgoingMessage) -> tuple[str, str]:
    return message.topic_arn, str(message.message_group_id)


def _is_string_attribute(name: object, value: object) -> bool:
    """Whether a message attribute is as microbus writes it: a String (or Number) with its StringValue."""
    return (
        isinstance(name, str)
        and isinstance(value, dict)
        and set(value) == {"DataType", "StringValue"}
        and value["DataType"] in ("String", "Number")
        and isinstance(value["StringValue"], str)
    )


def _now() -> datetime:
    return datetime.now(UTC)
