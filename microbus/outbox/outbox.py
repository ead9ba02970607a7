"""Writing to the outbox: ``produce`` inside the application's transaction inserts rows in that transaction."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from sqlalchemy import MetaData, insert

from microbus.outbox.table import DEFAULT_TABLE_NAME, outbox_table, row_of
from microbus.produce.producer import OutgoingMessage, SNSProducer, capturing

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine
    from sqlalchemy.orm import Session


class Outbox:
    """The transactional outbox of one table.

    Parameters:
        table_name: the table (default ``microbus_outbox``).
        metadata: the application's SQLAlchemy ``MetaData`` to define it in (so migrations see it); default a
            MetaData of its own.
    """

    def __init__(self, *, table_name: str = DEFAULT_TABLE_NAME, metadata: MetaData | None = None) -> None:
        self.metadata = metadata if metadata is not None else MetaData()
        existing = self.metadata.tables.get(table_name)
        self.table = existing if existing is not None else outbox_table(self.metadata, table_name)

    def create_table(self, bind: Engine | Connection) -> None:
        """Create the table and its index unless they exist."""
        self.table.create(bind, checkfirst=True)

    @contextmanager
    def transaction(self, session: Session | Connection) -> Iterator[None]:
        """In the block, every publish of this context goes into the outbox through ``session`` (a Session or a
        Connection), in its current transaction: committed with it, gone when it rolls back. Nothing is sent;
        an :class:`~microbus.outbox.relay.OutboxRelay` publishes committed rows. ``produce`` returns the
        message's ``x-microbus-message-id``.
        """
        with capturing(_OutboxWriter(self, session)):
            yield


class _OutboxWriter:
    """A capture that inserts messages into the outbox table through the application's session."""

    def __init__(self, outbox: Outbox, session: Session | Connection) -> None:
        self.outbox = outbox
        self.session = session

    def capture(self, producer: SNSProducer, messages: Sequence[OutgoingMessage]) -> None:
        """Insert one row per message (validated and encoded already), in order."""
        if messages:
            self.session.execute(insert(self.outbox.table), [row_of(message) for message in messages])
