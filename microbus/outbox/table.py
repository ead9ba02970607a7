"""The outbox table: one row per message produced inside a database transaction, relayed in ``id`` order."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, Column, DateTime, Index, Integer, MetaData, String, Table, Text

from microbus.produce.producer import OutgoingMessage

DEFAULT_TABLE_NAME = "microbus_outbox"


def outbox_table(metadata: MetaData, name: str = DEFAULT_TABLE_NAME) -> Table:
    """Define the outbox table in ``metadata`` (add it to your migrations, or call ``Outbox.create_table``).

    Columns: ``id`` (creation order), ``created_at``, the encoded message (``topic_arn``, ``media_type``,
    ``message``, ``message_attributes`` as JSON, ``message_id`` — its ``x-microbus-message-id`` —,
    ``message_group_id``, ``deduplication_id``, ``offload`` — over the topic's limit, stored in S3 when relayed),
    and the relay's bookkeeping: ``sent_at`` (None: pending),
    ``attempts``, ``last_error``, ``failed_at`` (set for a row that can never be published; it is kept, and
    held until cleared), ``claimed_until`` (SQLite: a relay is publishing the row).
    """
    table = Table(
        name,
        metadata,
        Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("topic_arn", String(256), nullable=False),
        Column("media_type", String(256), nullable=False),
        Column("message", Text, nullable=False),
        Column("message_attributes", Text, nullable=False),
        Column("message_id", String(64), nullable=False),
        Column("message_group_id", String(128)),
        Column("deduplication_id", String(128)),
        Column("offload", Boolean, nullable=False, default=False),
        Column("sent_at", DateTime(timezone=True)),
        Column("attempts", Integer, nullable=False, default=0),
        Column("last_error", Text),
        Column("failed_at", DateTime(timezone=True)),
        Column("claimed_until", DateTime(timezone=True)),
    )
    Index(f"ix_{name}_pending", table.c.sent_at, table.c.id)
    return table


def row_of(message: OutgoingMessage) -> dict[str, Any]:
    """The outbox row of an encoded message."""
    return {
        "created_at": datetime.now(UTC),
        "topic_arn": message.topic_arn,
        "media_type": message.media_type,
        "message": message.message,
        "message_attributes": json.dumps(message.message_attributes),
        "message_id": str(message.message_id),
        "message_group_id": message.message_group_id,
        "deduplication_id": message.deduplication_id,
        "offload": message.offload,
        "attempts": 0,
    }
