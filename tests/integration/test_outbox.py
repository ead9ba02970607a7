"""The transactional outbox on SQLite and a real PostgreSQL, relayed to the emulator: commit publishes, rollback
does not, creation order, two relays racing, and a relay SIGKILLed mid-batch loses nothing.

PostgreSQL: ``MICROBUS_TEST_POSTGRES_URL`` (``.ci/run`` starts one with ``.ci/postgres.sh``), else the tests start
their own with that script when PostgreSQL is installed; without it they skip with the reason, and fail under CI.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import uuid
from pathlib import Path

import pytest
from microbus.reference.schemas import OrderPlaced
from microcosm.api import create_object_graph, load_from_dict
from sqlalchemy import Column, MetaData, String, Table, create_engine, func, insert, select

from microbus import Outcome, Worker
from microbus.consume.dispatch import SQSMessageDispatcher
from microbus.consume.handlers import HandlerRegistry
from microbus.outbox import Outbox, OutboxRelay
from microbus.testing import wait_for
from microbus.testing.fixtures import unavailable

pytestmark = pytest.mark.integration
POSTGRES_VARIABLE = "MICROBUS_TEST_POSTGRES_URL"
SCRIPT = Path(__file__).resolve().parents[2] / ".ci" / "postgres.sh"
MICROBUS = str(Path(sys.executable).parent / "microbus")


@pytest.fixture(scope="session")
def postgres_url():
    url = os.environ.get(POSTGRES_VARIABLE)
    if url:
        yield url
        return
    # Not under pytest's temp dir: the server runs as the postgres user when we are root, and must reach it.
    state = tempfile.mkdtemp(prefix="microbus-postgres-")
    env = {**os.environ, "MICROBUS_POSTGRES_STATE": state}
    if os.environ.get("CI", "").lower() != "true":
        env["MICROBUS_POSTGRES_NO_INSTALL"] = "1"  # locally, never apt-get behind the developer's back
    started = subprocess.run(["bash", str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=600)
    if started.returncode != 0:
        reason = (started.stderr.strip().splitlines() or ["no output"])[-1]
        unavailable(f"PostgreSQL tests need {POSTGRES_VARIABLE} or PostgreSQL installed ({reason})")
    try:
        yield started.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True, timeout=120)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'app.db'}"
    return request.getfixturevalue("postgres_url")


class App:
    """An application database (an ``orders`` table and the outbox, uniquely named) and a graph on a fresh queue."""

    def __init__(self, url, queue):
        suffix = uuid.uuid4().hex[:8]
        self.url = url
        self.metadata = MetaData()
        self.orders = Table(f"orders_{suffix}", self.metadata, Column("order_id", String(64), primary_key=True))
        self.outbox = Outbox(table_name=f"outbox_{suffix}", metadata=self.metadata)
        self.engine = create_engine(url)
        self.metadata.create_all(self.engine)
        self.queue = queue
        self.graph = create_object_graph("outbox", testing=True, loader=load_from_dict(queue.graph_config()))
        self.graph.use("microbus_sns_producer", "microbus_sqs_consumer")
        self.published: list[str] = []  # microbus message ids, as they went out in PublishBatch calls
        self.graph.sns_client.meta.events.register("before-parameter-build.sns.PublishBatch", self._record)

    def _record(self, params, **_):
        for entry in params["PublishBatchRequestEntries"]:
            self.published.append(json.loads(entry["Message"])["opaqueData"]["x-microbus-message-id"])

    def place(self, order_id, *, fail=False):
        with self.engine.begin() as connection, self.outbox.transaction(connection):
            connection.execute(insert(self.orders).values(order_id=order_id))
            message_id = self.graph.microbus_sns_producer.produce(OrderPlaced.MEDIA_TYPE, order_id=order_id)
            if fail:
                raise RuntimeError("the request failed after producing")
        return message_id

    def place_many(self, count, prefix="o"):
        rows = []
        with self.engine.begin() as connection, self.outbox.transaction(connection):
            for i in range(count):
                connection.execute(insert(self.orders).values(order_id=f"{prefix}-{i}"))
                rows.append(self.graph.microbus_sns_producer.produce(OrderPlaced.MEDIA_TYPE, order_id=f"{prefix}-{i}"))
        return rows

    def relay(self, **options):
        return OutboxRelay(engine=self.engine, producer=self.graph.microbus_sns_producer, outbox=self.outbox, **options)

    def count(self, *where):
        table = self.outbox.table
        with self.engine.connect() as connection:
            return connection.execute(select(func.count()).select_from(table).where(*where)).scalar_one()

    def row_ids(self):
        table = self.outbox.table
        with self.engine.connect() as connection:
            return list(connection.execute(select(table.c.message_id).order_by(table.c.id)).scalars())

    def close(self):
        self.metadata.drop_all(self.engine)
        self.engine.dispose()


@pytest.fixture
def app(database_url, microbus_queue):
    app = App(database_url, microbus_queue)
    yield app
    app.close()


def test_a_committed_message_is_relayed_and_handled_and_a_rolled_back_one_never_exists(app):
    # Given one request that commits and one that rolls back after producing
    kept = app.place("o-1")
    with pytest.raises(RuntimeError):
        app.place("o-2", fail=True)
    assert app.published == [] and app.count() == 1  # nothing is sent by the request itself
    # When the relay runs as a thread in the application, and a daemon consumes
    handled = []
    dispatcher = SQSMessageDispatcher(handler_registry=HandlerRegistry({OrderPlaced.MEDIA_TYPE: handled.append}))
    worker = Worker(consumer=app.graph.microbus_sqs_consumer, dispatcher=dispatcher)
    relay = app.relay(poll_interval_s=0.05).start()
    worker.start()
    try:
        wait_for(lambda: worker.stats.outcomes[Outcome.SUCCEEDED.label] >= 1, what="the order handled")
    finally:
        assert relay.stop(timeout_s=10)
        worker.stop()
        worker.join()
    # Then the committed message was published once, with its microbus id, and handled; the other never
    assert app.published == [kept]
    assert [content["order_id"] for content in handled] == ["o-1"]
    assert app.count(app.outbox.table.c.sent_at.is_not(None)) == 1


def test_rows_are_published_in_creation_order_in_batches_of_ten(app):
    ids = app.place_many(5, "a") + app.place_many(18, "b")
    relay = app.relay()
    assert relay.run_until_idle() == 23
    assert app.published == ids == app.row_ids()
    assert relay.run_until_idle() == 0 and len(app.published) == 23


def test_two_relays_racing_publish_every_row_exactly_once(app):
    # Given 120 pending rows and two relays on their own threads
    ids = []
    for start in range(0, 120, 40):
        ids += app.place_many(40, f"r{start}")
    relays = [app.relay(batch_size=10), app.relay(batch_size=10)]
    counts = [0, 0]
    barrier = threading.Barrier(2)

    def run(index):
        barrier.wait()
        while True:  # a SQLite relay may find the database busy while the other holds the write lock
            try:
                counts[index] += relays[index].run_until_idle()
            except Exception as exc:  # noqa: BLE001 - retried: the race is the point
                if "locked" not in str(exc):
                    raise
                continue
            if app.count(app.outbox.table.c.sent_at.is_(None)) == 0:
                return

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    # Then every row went out once, none twice, and both relays did some of the work on PostgreSQL
    assert sorted(app.published) == sorted(ids)
    assert len(set(app.published)) == len(app.published) == 120
    assert sum(counts) == 120
    if app.engine.dialect.name == "postgresql":
        assert min(counts) > 0, counts  # SKIP LOCKED: they took different rows at the same time


def relay_process(app, log, *extra, publish_delay_s=0.0):
    """``microbus outbox relay`` as a process; each PublishBatch call is delayed by ``publish_delay_s``."""
    env = {**os.environ, **app.queue.endpoint.environ()}
    command = [sys.executable, str(Path(__file__).with_name("outbox_relay_process.py")), str(publish_delay_s)]
    command += ["--database-url", app.url]
    command += ["--table", app.outbox.table.name, "--poll-interval", "0.05", *extra]
    with open(log, "a") as output:
        return subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)


def received_ids(app, expected):
    """Receive the queue's messages (SNS-enveloped) until every expected id was seen; return all ids received."""
    seen: list[str] = []

    def receive():
        batch = app.queue.sqs.receive_message(QueueUrl=app.queue.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        messages = batch.get("Messages", [])
        for message in messages:
            body = json.loads(json.loads(message["Body"])["Message"])
            seen.append(body["opaqueData"]["x-microbus-message-id"])
        if messages:
            app.queue.sqs.delete_message_batch(
                QueueUrl=app.queue.queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)],
            )
        return set(expected) <= set(seen)

    wait_for(receive, timeout_s=120, what="every row's message on the queue")
    return seen


def test_a_relay_killed_mid_batch_loses_nothing_and_its_duplicates_keep_their_message_ids(app, tmp_path):
    # Given 150 pending rows and a relay process taking 50 rows per transaction (5 PublishBatch calls, each
    # slowed down by 50 ms so that the test sees the batch half published)
    ids = app.place_many(150)
    sent = app.outbox.table.c.sent_at.is_not(None)
    log = tmp_path / "relay.log"
    relay = relay_process(app, log, "--batch-size", "50", "--claim-lease", "2", publish_delay_s=0.05)
    try:
        # When it is SIGKILLed while a batch is published but not yet marked sent
        def mid_batch():
            return app.queue.depth() > app.count(sent)

        wait_for(mid_batch, timeout_s=60, interval_s=0.005, what="a batch published but not committed")
        relay.send_signal(signal.SIGKILL)
    finally:
        relay.wait(30)
        killed = app.count(sent)
    assert killed < 150
    # And a new relay is started (on SQLite, the dead relay's claim expires after 2 s)
    restarted = relay_process(app, log)
    try:
        wait_for(lambda: app.count(sent) == 150, timeout_s=120, what="every row sent after the restart")
    finally:
        restarted.send_signal(signal.SIGTERM)
        assert restarted.wait(30) == 0, log.read_text()
    # Then every row is sent, every message arrived, and the repeats carry the ids of the first copies
    assert app.count(sent) == 150
    seen = received_ids(app, ids)
    assert set(seen) == set(ids)
    duplicates = len(seen) - len(set(seen))
    print(f"killed with {killed} rows marked sent; {len(seen)} messages received, {duplicates} duplicates")
    assert duplicates > 0  # the kill hit a published, uncommitted batch: at least once, same ids


def test_the_relay_command_explains_an_unreachable_database(microbus_endpoint, tmp_path):
    process = subprocess.run(
        [MICROBUS, "outbox", "relay", "--once", "--database-url", "not a url"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **microbus_endpoint.environ()},
    )
    assert process.returncode == 2
    assert "not a usable database URL" in process.stderr
    missing = f"sqlite:///{tmp_path / 'nowhere' / 'x.db'}"
    process = subprocess.run(
        [MICROBUS, "outbox", "relay", "--once", "--database-url", missing],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **microbus_endpoint.environ()},
    )
    assert process.returncode == 2
    assert "OperationalError" in process.stderr and "Traceback" not in process.stderr


def test_the_relay_command_stops_on_sigterm_after_its_batch(app, tmp_path):
    log = tmp_path / "relay.log"
    relay = relay_process(app, log)
    ids = app.place_many(3)
    wait_for(lambda: app.count(app.outbox.table.c.sent_at.is_not(None)) == 3, what="the rows relayed")
    relay.send_signal(signal.SIGTERM)
    assert relay.wait(15) == 0, log.read_text()
    assert len(ids) == 3 and "Traceback" not in log.read_text()


def test_the_relay_command_never_prints_the_database_password(microbus_endpoint):
    process = subprocess.run(
        [MICROBUS, "outbox", "relay", "--once", "--database-url", "postgresql+psycopg://app:s3cret@127.0.0.1:1/app"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **microbus_endpoint.environ()},
    )
    assert process.returncode == 2
    assert "OperationalError" in process.stderr and "app:***@127.0.0.1:1" in process.stderr
    assert "s3cret" not in process.stdout + process.stderr


def test_a_large_payload_waits_in_the_outbox_and_goes_to_s3_when_relayed(app, tmp_path):
    # Given large payloads on (an S3 bucket), and a message far over the SNS limit produced in a transaction
    s3 = app.queue.endpoint.settings().client("s3")
    bucket = f"outbox-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    config = app.queue.graph_config(payload_store={"bucket": bucket})
    graph = create_object_graph("outbox-large", testing=True, loader=load_from_dict(config))
    with app.engine.begin() as connection, app.outbox.transaction(connection):
        graph.microbus_sns_producer.produce(OrderPlaced.MEDIA_TYPE, order_id="x" * 400_000)
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount") == 0  # nothing stored before the relay
    # When the relay command runs with the bucket
    log = tmp_path / "relay.log"
    assert relay_process(app, log, "--payload-bucket", bucket, "--once").wait(60) == 0, log.read_text()
    # Then the body went to S3 and the consumer reads the whole content
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount") == 1
    (message,) = wait_for(graph.microbus_sqs_consumer.consume, what="the large message")
    assert message.error is None and message.content["order_id"] == "x" * 400_000
