"""The outbox on SQLite with a recording transport: same transaction as the application, relay order, malformed rows."""

from __future__ import annotations

import json
import logging
import threading
import time

import pytest
from microbus.reference.schemas import OrderPlaced
from sqlalchemy import Column, MetaData, String, Table, create_engine, insert, select, update

from microbus import SNSProducer, TopicArns
from microbus.outbox import Outbox, OutboxRelay
from microbus.web import deferred_publish
from microbus.wire.schemas import SchemaRegistry
from tests.unit.test_web_deferred import RecordingTransport

TOPIC = "arn:aws:sns:us-east-1:123456789012:orders"
FIFO = "arn:aws:sns:us-east-1:123456789012:lines.fifo"


@pytest.fixture
def db(tmp_path):
    metadata = MetaData()
    orders = Table("orders", metadata, Column("order_id", String(32), primary_key=True))
    outbox = Outbox(metadata=metadata)
    engine = create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    metadata.create_all(engine)
    yield engine, orders, outbox
    engine.dispose()


@pytest.fixture
def transport():
    return RecordingTransport()


@pytest.fixture
def producer(transport):
    return SNSProducer(
        transport=transport,
        schema_registry=SchemaRegistry(),
        topic_arns=TopicArns(default=TOPIC, mappings={"application/vnd.test.line": FIFO}),
        retry_base_s=0,
    )


def place(db, producer, order_id, *, fail=False):
    engine, orders, outbox = db
    with engine.begin() as connection, outbox.transaction(connection):
        connection.execute(insert(orders).values(order_id=order_id))
        producer.produce(OrderPlaced.MEDIA_TYPE, order_id=order_id)
        if fail:
            raise RuntimeError("rolled back")


def rows(db):
    engine, _, outbox = db
    with engine.connect() as connection:
        return connection.execute(select(outbox.table).order_by(outbox.table.c.id)).all()


def test_produce_in_the_transaction_writes_the_outbox_and_sends_nothing(db, producer, transport):
    place(db, producer, "o-1")
    assert transport.batches == []
    (row,) = rows(db)
    assert (row.media_type, row.topic_arn, row.sent_at) == (OrderPlaced.MEDIA_TYPE, TOPIC, None)
    assert json.loads(row.message)["opaqueData"]["x-microbus-message-id"] == row.message_id


def test_a_rollback_leaves_neither_the_change_nor_the_message(db, producer, transport):
    with pytest.raises(RuntimeError):
        place(db, producer, "o-1", fail=True)
    assert rows(db) == []
    assert OutboxRelay(engine=db[0], producer=producer, outbox=db[2]).run_until_idle() == 0
    assert transport.batches == []


def test_the_relay_publishes_in_creation_order_with_publish_batch_and_marks_rows_sent(db, producer, transport):
    for i in range(25):
        place(db, producer, f"o-{i:02}")
    relay = OutboxRelay(engine=db[0], producer=producer, outbox=db[2], batch_size=10)
    assert relay.run_until_idle() == 25
    assert transport.batches == [[f"o-{i:02}" for i in range(start, min(start + 10, 25))] for start in (0, 10, 20)]
    assert all(row.sent_at is not None and row.attempts == 1 for row in rows(db))
    assert relay.run_until_idle() == 0  # nothing twice
    assert len(transport.published) == 25


def test_a_deferred_block_inside_the_transaction_writes_to_the_outbox_at_its_end(db, producer, transport):
    engine, orders, outbox = db
    with engine.begin() as connection, outbox.transaction(connection):
        with deferred_publish():
            producer.produce(OrderPlaced.MEDIA_TYPE, order_id="d-1")
            assert rows(db) == []
    assert [row.media_type for row in rows(db)] == [OrderPlaced.MEDIA_TYPE]
    assert transport.batches == []


def test_rows_sns_refuses_stay_pending_and_go_out_on_a_later_batch(db, producer, transport):
    for i in range(3):
        place(db, producer, f"o-{i}")
    transport.fail = frozenset({"o-1"})
    relay = OutboxRelay(engine=db[0], producer=producer, outbox=db[2])
    result = relay.relay_once()
    assert (result.published, result.retry) == (2, 1)
    pending = [row for row in rows(db) if row.sent_at is None]
    assert [(row.attempts, row.last_error) for row in pending] == [(1, "refused")]  # after the producer's 3 tries
    transport.fail = frozenset()
    assert relay.run_until_idle() == 1
    assert transport.published.count("o-1") == 4 and transport.published.count("o-0") == 1


def corrupt(db, row_id, **values):
    engine, _, outbox = db
    with engine.begin() as connection:
        connection.execute(update(outbox.table).where(outbox.table.c.id == row_id).values(**values))


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ({"message": '{"mediaType": "application/vnd.microbus.order.placed", "order_id": '}, "not valid JSON"),
        ({"message_attributes": "not json"}, "not valid JSON"),
        ({"message": "[1, 2]"}, "not JSON objects"),
        ({"message_attributes": '{"media_type": {"DataType": "String", "StringValue": 5}}'}, "not SNS string"),
        ({"message_attributes": '{"media_type": "x"}'}, "not SNS string"),
        ({"media_type": "application/vnd.nobody.knows"}, "is not its body's"),
    ],
    ids=["corrupt-body", "corrupt-attributes", "not-an-object", "bad-attribute-value", "bad-attribute", "mismatch"],
)
def test_a_malformed_row_is_kept_with_the_reason_and_the_others_are_published(
    db, producer, transport, caplog, values, reason
):
    for i in range(3):
        place(db, producer, f"o-{i}")
    corrupt(db, 2, **values)
    relay = OutboxRelay(engine=db[0], producer=producer, outbox=db[2])
    with caplog.at_level(logging.ERROR, logger="microbus.outbox.relay"):
        assert relay.run_until_idle() == 2
    assert transport.published == ["o-0", "o-2"]
    bad = rows(db)[1]
    assert bad.sent_at is None and bad.failed_at is not None and reason in bad.last_error
    assert "Outbox row 2 cannot be published" in caplog.text and reason in caplog.text
    # Once fixed and cleared, it is relayed
    corrupt(db, 2, failed_at=None, **{key: rows(db)[0]._mapping[key] for key in values})
    assert relay.run_until_idle() == 1


def test_an_unknown_media_type_is_held_with_a_clear_error(db, producer, transport):
    place(db, producer, "o-1")
    unknown = "application/vnd.nobody.knows"
    body = json.loads(rows(db)[0].message)
    body["mediaType"] = unknown
    corrupt(db, 1, media_type=unknown, message=json.dumps(body))
    place(db, producer, "o-2")
    relay = OutboxRelay(engine=db[0], producer=producer, outbox=db[2])
    assert relay.run_until_idle() == 1
    assert "unknown media type 'application/vnd.nobody.knows'" in rows(db)[0].last_error
    # A relay that does not check media types (the CLI without --schemas) publishes it
    assert OutboxRelay(engine=db[0], producer=producer, outbox=db[2], check_media_types=False).run_until_idle() == 0


def test_a_huge_corrupt_value_is_bounded_in_the_error(db, producer, transport, caplog):
    place(db, producer, "o-1")
    corrupt(db, 1, media_type="x" * 100_000)
    with caplog.at_level(logging.ERROR):
        OutboxRelay(engine=db[0], producer=producer, outbox=db[2]).run_until_idle()
    assert len(rows(db)[0].last_error) < 1_000
    assert max(len(record.getMessage()) for record in caplog.records) < 1_000


def fifo_line(engine, outbox, producer, group, n):
    with engine.begin() as connection, outbox.transaction(connection):
        producer.produce("application/vnd.test.line", message_group_id=group, n=n)


def test_later_rows_of_a_malformed_rows_fifo_group_wait_behind_it_and_other_groups_go_on(db, producer, transport):
    from marshmallow import fields

    from microbus import PubSubMessageSchema, schema

    @schema
    class Line(PubSubMessageSchema):
        MEDIA_TYPE = "application/vnd.test.line"
        n = fields.Integer(required=True)

    engine, _, outbox = db
    for n, group in enumerate(["a", "b", "a", "b", "a"]):
        fifo_line(engine, outbox, producer, group, n)
    corrupt(db, 1, message="{broken")  # the first row of group a
    transport.batches.clear()
    published = []

    def publish_batch(topic, entries, *, message_group_ids, deduplication_ids):
        for (message, _), group in zip(entries, message_group_ids, strict=True):
            published.append((group, json.loads(message)["n"]))
        return [f"id-{i}" for i in range(len(entries))], {}

    transport.publish_batch = publish_batch
    transport.topic_attributes = lambda topic: {}
    relay = OutboxRelay(engine=engine, producer=producer, outbox=outbox)
    assert relay.run_until_idle() == 2
    assert published == [("b", 1), ("b", 3)]  # group a waits behind its broken first row
    assert [row.sent_at is None for row in rows(db)] == [True, False, True, False, True]
    fixed = json.loads(rows(db)[1].message)
    fixed["n"] = 0
    corrupt(db, 1, message=json.dumps(fixed), failed_at=None)
    assert relay.run_until_idle() == 3
    assert published[2:] == [("a", 0), ("a", 2), ("a", 4)]


def test_a_row_that_breaks_the_publish_itself_is_found_held_and_the_batch_goes_on(db, producer, transport, caplog):
    # Given rows, one of which makes the SNS client raise before sending anything (not an SNS refusal)
    for i in range(4):
        place(db, producer, f"o-{i}")
    publish_batch = transport.publish_batch

    def refuse_o2(topic_arn, entries, **fifo):
        if any(json.loads(message)["order_id"] == "o-2" for message, _ in entries):
            raise TypeError("Parameter validation failed")
        return publish_batch(topic_arn, entries, **fifo)

    transport.publish_batch = refuse_o2
    transport.publish = lambda topic_arn, message, attributes, **fifo: refuse_o2(topic_arn, [(message, attributes)])
    relay = OutboxRelay(engine=db[0], producer=producer, outbox=db[2])
    # When the relay runs
    with caplog.at_level(logging.ERROR, logger="microbus.outbox.relay"):
        result = relay.relay_once()
    # Then the other rows are published once each, and the culprit is kept with the reason
    assert (result.published, result.failed) == (3, 1)
    assert sorted(set(transport.published)) == ["o-0", "o-1", "o-3"]
    bad = rows(db)[2]
    assert bad.sent_at is None and bad.failed_at is not None
    assert "TypeError: Parameter validation failed" in bad.last_error
    assert "Outbox row 3 cannot be published" in caplog.text
    assert relay.run_until_idle() == 0


def test_on_sqlite_the_application_can_write_while_the_relay_waits_for_sns(db, producer, transport, tmp_path):
    # Given a relay whose PublishBatch takes 1 s, and an application whose writes wait at most 0.2 s for a lock
    engine, orders, outbox = db
    place(db, producer, "o-1")
    app_engine = create_engine(engine.url, connect_args={"timeout": 0.2})
    publish_batch = transport.publish_batch
    publishing = threading.Event()

    def slow_publish_batch(*args, **kwargs):
        publishing.set()
        time.sleep(1.0)
        return publish_batch(*args, **kwargs)

    transport.publish_batch = slow_publish_batch
    relay = OutboxRelay(engine=engine, producer=producer, outbox=outbox)
    thread = threading.Thread(target=relay.relay_once)
    thread.start()
    assert publishing.wait(5)
    # When the application commits an order and its message meanwhile, then it is not refused as "locked"
    try:
        place((app_engine, orders, outbox), producer, "o-2")
    finally:
        app_engine.dispose()
    thread.join()
    assert transport.published == ["o-1"]
    assert relay.run_until_idle() == 1 and transport.published == ["o-1", "o-2"]


def test_on_sqlite_a_batch_claimed_by_a_relay_that_died_is_published_after_its_lease(db, producer, transport):
    engine, _, outbox = db
    for i in range(3):
        place(db, producer, f"o-{i}")

    def die(*args, **kwargs):
        raise KeyboardInterrupt  # not an Exception: the relay's process goes down with its claim

    transport.publish_batch, publish_batch = die, transport.publish_batch
    with pytest.raises(KeyboardInterrupt):
        OutboxRelay(engine=engine, producer=producer, outbox=outbox, claim_lease_s=0.3).relay_once()
    transport.publish_batch = publish_batch
    other = OutboxRelay(engine=engine, producer=producer, outbox=outbox)
    assert other.run_until_idle() == 0  # still claimed
    time.sleep(0.35)  # the lease of the claim, a duration under test
    assert other.run_until_idle() == 3
    assert transport.published == ["o-0", "o-1", "o-2"]


def test_a_large_payload_row_is_held_by_a_relay_without_a_payload_store(db, producer, transport):
    place(db, producer, "o-1")
    corrupt(db, 1, offload=True)  # as written by a producer with large payloads on
    relay = OutboxRelay(engine=db[0], producer=producer, outbox=db[2])
    assert relay.run_until_idle() == 0
    assert "no payload store" in rows(db)[0].last_error and rows(db)[0].failed_at is not None
    assert transport.batches == []


def test_rows_sent_longer_ago_than_keep_sent_are_deleted_and_others_kept(db, producer, transport):
    from datetime import UTC, datetime, timedelta

    engine, _, outbox = db
    for i in range(3):
        place(db, producer, f"o-{i}")
    relay = OutboxRelay(engine=engine, producer=producer, outbox=outbox, keep_sent_s=3600)
    relay.relay_once()
    place(db, producer, "pending")
    corrupt(db, 1, sent_at=datetime.now(UTC) - timedelta(hours=2))
    assert relay.purge_sent() == 1
    assert [(row.id, row.sent_at is None) for row in rows(db)] == [(2, False), (3, False), (4, True)]
    assert OutboxRelay(engine=engine, producer=producer, outbox=outbox, keep_sent_s=None).purge_sent() == 0
