"""The transactional outbox (``pip install 'microbus[outbox]'``, SQLAlchemy 2).

``produce`` inside ``Outbox.transaction(session)`` writes the message to the outbox table in the application's
transaction; :class:`OutboxRelay` (``microbus outbox relay``, or a thread in the application) publishes
committed rows in creation order.
"""

from microbus.outbox.outbox import Outbox
from microbus.outbox.relay import MalformedOutboxRowError, OutboxRelay, RelayResult
from microbus.outbox.table import DEFAULT_TABLE_NAME, outbox_table

__all__ = ["DEFAULT_TABLE_NAME", "MalformedOutboxRowError", "Outbox", "OutboxRelay", "RelayResult", "outbox_table"]
