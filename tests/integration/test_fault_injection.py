"""Fault injection: the daemon as a real process against the emulator over HTTP, killed, stopped, cut off, poisoned.

Each scenario prints a row (scenario, produced, handled, duplicates, dead-lettered, lost); set
``MICROBUS_FAULT_REPORT=path`` to collect them. Run the slowest apart with ``-m slow``.
"""

from __future__ import annotations

import json
import random
import re
import signal
import time
from collections import Counter

import pytest
from microcosm.api import create_object_graph, load_from_dict

from microbus import SNSProducer
from microbus.errors import TransportError
from microbus.produce.producer import TopicArns
from microbus.testing import wait_for
from microbus.wire.schemas import SchemaRegistry
from microbus.wire.transport import AWSSettings, SNSTransport
from tests.integration.fault_daemon import Work, WorkOnce
from tests.integration.faults import Daemon, FaultyProxy, Ledger, paced_produce, report, visible_messages

pytestmark = pytest.mark.integration


@pytest.fixture
def ledger(tmp_path):
    return Ledger(tmp_path / "ledger.txt")


@pytest.fixture
def daemons(ledger, tmp_path, idempotency_environ):
    """Factory of daemon processes on a queue; every one is killed at teardown.

    The fault daemon has an idempotent handler, so it needs its table even when a test sends plain work: a
    missing table is refused at start."""
    made = []

    def make(queue, *args, environ=None):
        daemon = Daemon(environ or idempotency_environ, queue.queue_url, ledger, tmp_path, args=args)
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        daemon.stop()


def producer_for(queue):
    graph = create_object_graph("fault-test", testing=True, loader=load_from_dict(queue.graph_config()))
    return graph.microbus_sns_producer


def publisher(producer):
    return lambda items: producer.produce_batch(Work.MEDIA_TYPE, items)


def dead_letters(queue):
    return queue.drain_dlq() if queue.dlq_url else []


@pytest.fixture
def idempotency_environ(microbus_endpoint, make_table):
    """Environment for a daemon whose WorkOnce handler is idempotent: a fresh table, a 3 s lease."""
    name = make_table("idem")
    return {
        **microbus_endpoint.environ(),
        "FAULT__IDEMPOTENCY_GUARD__TABLE_NAME": name,
        "FAULT__IDEMPOTENCY_GUARD__LEASE_S": "3",
    }


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("schema", [Work, WorkOnce], ids=["plain", "idempotent"])
def test_sigkill_three_times_loses_nothing(make_queue, daemons, ledger, idempotency_environ, schema):
    # Given 1,000 messages produced while a daemon with 4 handler threads consumes them
    queue = make_queue(visibility_timeout_s=3)
    rng = random.Random()
    kill_points = sorted(rng.randint(low, low + 200) for low in (100, 400, 700))
    items = [{"n": n} for n in range(1000)]
    daemon = daemons(queue, "--concurrency", "4", environ=idempotency_environ).start()
    producer = producer_for(queue)
    publish = lambda batch: producer.produce_batch(schema.MEDIA_TYPE, batch)  # noqa: E731
    producing = paced_produce(publish, items, handled=lambda: len(ledger.done()))
    # When it is SIGKILLed at three random points and restarted each time
    for point in kill_points:
        wait_for(lambda p=point: len(ledger.done()) >= p, timeout_s=60, interval_s=0.02, what=f"{point} handled")
        daemon.kill()
        daemon.start()
    producing.finish(60)
    # Then every produced message was handled at least once (or dead-lettered)
    dlq = []
    wait_for(lambda: len(ledger.done()) >= 1000 or queue.depth() == 0, timeout_s=90, what="everything handled")
    wait_for(lambda: queue.depth() == 0, timeout_s=30, what="an empty queue")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(30) == 0
    dlq = dead_letters(queue)
    handled = set(ledger.done())
    lost = set(range(1000)) - handled - {json.loads(json.loads(m["Body"])["Message"])["n"] for m in dlq}
    report(
        f"SIGKILL x3 at {'/'.join(map(str, kill_points))} ({schema.__name__})",
        produced=1000,
        handled=len(handled),
        duplicates=ledger.duplicates(),
        dead_lettered=len(dlq),
        lost=len(lost),
    )
    assert not lost
    assert daemon.starts == 4
    if schema is WorkOnce:  # a duplicate needs a kill between the side effect and the COMPLETED record
        assert ledger.duplicates() <= 3 * 4


def test_sigterm_during_a_busy_batch_loses_and_repeats_nothing(make_queue, daemons, ledger):
    # Given 40 slow messages (0.3 s each) and a daemon with 4 handler threads, busy with them
    queue = make_queue(visibility_timeout_s=10)
    producer_for(queue).produce_batch(Work.MEDIA_TYPE, [{"n": n, "sleep_s": 0.3} for n in range(40)])
    daemon = daemons(queue, "--concurrency", "4").start()
    wait_for(lambda: len(ledger.done()) >= 8, timeout_s=30, what="a busy daemon")
    # When it gets SIGTERM
    daemon.signal(signal.SIGTERM)
    # Then it exits 0, having finished what it had started
    assert daemon.wait(30) == 0
    assert ledger.started() == ledger.done()
    handled_before = len(ledger.done())
    assert handled_before < 40
    returned = re.search(r"Returned (\d+) unstarted messages", daemon.log_text())
    assert returned and int(returned.group(1)) > 0, "no prefetched message was returned"
    # And a restarted daemon handles the rest, each message exactly once
    daemon.start()
    wait_for(lambda: len(ledger.done()) >= 40 and queue.depth() == 0, timeout_s=60, what="the rest")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(30) == 0
    dlq = dead_letters(queue)
    report(
        f"SIGTERM during a busy batch (after {handled_before})",
        produced=40,
        handled=len(ledger.done()),
        duplicates=ledger.duplicates(),
        dead_lettered=len(dlq),
        lost=40 - len(ledger.done()),
    )
    assert set(ledger.done()) == set(range(40))
    assert ledger.duplicates() == 0
    assert sum(ledger.started().values()) == 40
    assert dlq == []


def proxied_producer(queue, proxy):
    settings = AWSSettings(
        endpoint_url=proxy.url,
        region_name=queue.endpoint.settings().region_name,
        access_key_id="testing",
        secret_access_key="testing",
        connect_timeout_s=1.0,
        read_timeout_s=2.0,
        max_attempts=1,
    )
    return SNSProducer(
        transport=SNSTransport(client=settings.client("sns")),
        schema_registry=SchemaRegistry(),
        topic_arns=TopicArns(default=queue.topic_arn),
        max_attempts=2,
        retry_base_s=0.2,
    )


def produce_through_outage(producer, proxy, first_n, outage_s):
    """Cycle the proxy through reset, stall and drop for ``outage_s``, producing one message at a time."""
    acknowledged, refused, errors = [], [], []
    phases = [("reset", 0.0), ("stall", outage_s * 0.35), ("drop", outage_s * 0.7)]
    started = time.monotonic()
    n = first_n
    while (now := time.monotonic() - started) < outage_s:
        mode = [name for name, at in phases if now >= at][-1]
        if proxy.mode != mode:
            proxy.set_mode(mode)
        try:
            producer.produce(Work.MEDIA_TYPE, {"n": n})
            acknowledged.append(n)
        except TransportError as exc:
            refused.append(n)
            errors.append(str(exc))
        n += 1
    proxy.set_mode("pass")
    return acknowledged, refused, errors


def test_the_daemon_rides_out_a_ten_second_outage(make_queue, daemons, ledger, microbus_endpoint, idempotency_environ):
    # Given a daemon and a producer that reach the emulator through a faulty proxy
    queue = make_queue(visibility_timeout_s=10)
    proxy = FaultyProxy(int(microbus_endpoint.settings().endpoint_url.rsplit(":", 1)[1]))
    environ = {**idempotency_environ, "AWS_ENDPOINT_URL": proxy.url}
    daemon = daemons(queue, "--concurrency", "2", environ=environ).start()
    producer = proxied_producer(queue, proxy)
    producer.produce_batch(Work.MEDIA_TYPE, [{"n": n} for n in range(30)])
    wait_for(lambda: len(ledger.done()) >= 30, timeout_s=30, what="the first 30")
    # When the proxy resets, stalls and drops every connection for 10 s while the producer keeps producing
    acknowledged, refused, errors = produce_through_outage(producer, proxy, 100, outage_s=10.0)
    after = list(range(1000, 1030))
    producer.produce_batch(Work.MEDIA_TYPE, [{"n": n} for n in after])
    # Then every message whose publish succeeded is handled, and the daemon never exited
    expected = set(range(30)) | set(acknowledged) | set(after)
    wait_for(lambda: expected <= set(ledger.done()), timeout_s=60, what="everything after the outage")
    assert daemon.alive
    # And the producer either succeeded or said clearly why not
    assert refused, "the outage refused nothing: the proxy did not cut anything"
    assert all(re.search(r"Cannot reach|failed transiently", error) for error in errors), errors
    # And the daemon logged the outage once per state change, not once per attempt
    failing = Counter(re.findall(r"(receiving(?:-\d+)?) failing", daemon.log_text()))  # one per receive in flight
    assert failing and max(failing.values()) <= 3, failing

    def recovered():  # a receiver still in its restart backoff logs its recovery when it next runs
        return Counter(re.findall(r"(receiving(?:-\d+)?) recovered", daemon.log_text())) == failing

    wait_for(recovered, timeout_s=30, what="every failing receiver to log its recovery")
    log = daemon.log_text()
    assert "Traceback" not in log
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(30) == 0
    handled = set(ledger.done())
    report(
        "10 s outage (reset/stall/drop proxy)",
        produced=f"{len(expected)} acknowledged + {len(refused)} refused",
        handled=len(handled & expected),
        duplicates=ledger.duplicates(),
        dead_lettered=len(dead_letters(queue)),
        lost=len(expected - handled),
        refused_yet_delivered=len(set(refused) & handled),
    )
    proxy.close()


POISON_REASONS = {
    "body": "malformed-body",
    "no-media-type": "missing-media-type",
    "unknown": "unknown-media-type",
    "schema": "schema-violation",
    "fails": "max-attempts",
}


def poison_body(kind, i):
    """A message that can never succeed; ``poison-<i>`` appears in its body."""
    if kind == "body":
        return f"not json poison-{i} {{"
    if kind == "no-media-type":
        return json.dumps({"poison": f"poison-{i}"})
    if kind == "unknown":
        return json.dumps({"mediaType": "application/vnd.nobody", "poison": f"poison-{i}"})
    return json.dumps({"mediaType": Work.MEDIA_TYPE, "n": f"poison-{i}"})


def poison_publisher(queue, producer):
    """Publishes good items in batches, poison ones straight to SQS (or, for handler failures, through SNS)."""

    def publish(batch):
        for item in (item for item in batch if "poison" in item):
            if item["kind"] == "fails":
                producer.produce(Work.MEDIA_TYPE, {"n": 10_000 + item["poison"], "fail": True})
            else:
                queue.sqs.send_message(QueueUrl=queue.queue_url, MessageBody=poison_body(item["kind"], item["poison"]))
        good = [item for item in batch if "n" in item]
        if good:
            producer.produce_batch(Work.MEDIA_TYPE, good)

    return publish


def poison_reasons(dlq):
    """Poison number → ``microbus.reason``, checking the other reason attributes on the way."""
    reasons = {}
    for message in dlq:
        attributes = {name: value["StringValue"] for name, value in message["MessageAttributes"].items()}
        assert attributes["microbus.daemon"] == "fault"
        assert attributes["microbus.error_class"] != "-"
        assert attributes["microbus.dead_lettered_at"]
        match = re.search(r"poison-(\d+)", message["Body"]) or re.search(r'\\"n\\":\s*100(\d\d)', message["Body"])
        assert match, message["Body"]
        reasons[int(match.group(1))] = attributes["microbus.reason"]
    return reasons


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_poison_messages_go_to_the_dlq_with_their_reason(make_queue, daemons, ledger):
    # Given 1,000 good messages with 50 poison ones (5%) mixed in: undecodable, no or unknown media type,
    # schema violations (sent straight to SQS), and handlers that always fail (published)
    queue = make_queue(visibility_timeout_s=10, max_receive_count=3)
    producer = producer_for(queue)
    kinds = list(POISON_REASONS)
    items = [{"n": n} for n in range(1000)] + [{"poison": i, "kind": kinds[i % 5]} for i in range(50)]
    random.Random(3).shuffle(items)

    daemon = daemons(queue, "--concurrency", "4").start()
    # When the daemon consumes them
    producing = paced_produce(poison_publisher(queue, producer), items, handled=lambda: len(ledger.done()))
    producing.finish(150)
    wait_for(lambda: len(ledger.done()) >= 1000 and queue.depth() == 0, timeout_s=90, what="everything")
    # Then every poison message is in the DLQ with its reason, every good one handled, and no restart
    dlq = dead_letters(queue)
    reasons = poison_reasons(dlq)
    assert reasons == {i: POISON_REASONS[kinds[i % 5]] for i in range(50)}
    assert len(dlq) == 50
    assert set(ledger.done()) == set(range(1000))
    assert daemon.alive and daemon.starts == 1
    # the only tracebacks are the failing handlers' own (logged with their first attempt's FAILED line)
    log = daemon.log_text()
    handler_errors = re.findall(r"^RuntimeError: work \d+ always fails$", log, re.M)
    assert log.count("Traceback (most recent call last)") == len(handler_errors) > 0
    report(
        "5% poison among 1,000 good",
        produced=1050,
        handled=len(ledger.done()),
        duplicates=ledger.duplicates(),
        dead_lettered=len(dlq),
        lost=1000 - len(ledger.done()) + 50 - len(reasons),
    )
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(30) == 0


def test_a_handler_running_three_visibility_timeouts_is_not_redelivered_until_killed(make_queue, daemons, ledger):
    # Given a queue with a 2 s visibility timeout and a daemon whose handler takes 6 s (3x)
    queue = make_queue(visibility_timeout_s=2)
    producer = producer_for(queue)
    daemon = daemons(queue, "--concurrency", "2").start()
    producer.produce(Work.MEDIA_TYPE, {"n": 0, "sleep_s": 6.0})
    wait_for(lambda: ledger.started()[0] == 1, timeout_s=30, what="the handler to start")
    # When it runs, Then the message never becomes visible, and it is handled once
    deadline = time.monotonic() + 20
    while ledger.done()[0] == 0:
        assert time.monotonic() < deadline, "the handler never finished"
        assert visible_messages(queue.sqs, queue.queue_url) == 0
        assert ledger.started()[0] == 1
        time.sleep(0.2)
    wait_for(lambda: queue.depth() == 0, timeout_s=10, what="the ack")
    assert ledger.started()[0] == 1
    # When a second long message is running and the daemon is SIGKILLed
    producer.produce(Work.MEDIA_TYPE, {"n": 1, "sleep_s": 6.0})
    wait_for(lambda: ledger.started()[1] == 1, timeout_s=30, what="the second handler to start")
    killed_at = time.monotonic()
    daemon.kill()
    # Then the heartbeat stopped with it: the message is visible again within the timeout, and redelivered
    wait_for(lambda: visible_messages(queue.sqs, queue.queue_url) == 1, timeout_s=10, what="the redelivery")
    reappeared_s = time.monotonic() - killed_at
    assert reappeared_s < 2 + 1.5
    daemon.start()
    wait_for(lambda: ledger.done()[1] == 1 and queue.depth() == 0, timeout_s=30, what="the second run")
    assert ledger.started()[1] == 2
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(30) == 0
    report(
        f"handler 3x visibility timeout (reappeared {reappeared_s:.1f} s after SIGKILL)",
        produced=2,
        handled=len(ledger.done()),
        duplicates=ledger.duplicates(),
        dead_lettered=len(dead_letters(queue)),
        lost=2 - len(ledger.done()),
    )


def test_a_second_signal_exits_at_once_and_the_running_message_comes_back(make_queue, daemons, ledger):
    # Given a daemon running a 20 s handler and already stopping after a first SIGTERM
    queue = make_queue(visibility_timeout_s=2)
    daemon = daemons(queue).start()
    producer_for(queue).produce(Work.MEDIA_TYPE, {"n": 0, "sleep_s": 20.0})
    wait_for(lambda: ledger.started()[0] == 1, timeout_s=30, what="the handler to start")
    daemon.signal(signal.SIGTERM)
    wait_for(lambda: "stopping" in daemon.log_text(), timeout_s=10, what="the first signal")
    # When a second SIGTERM comes, Then it exits at once with status 1
    signalled_at = time.monotonic()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(5) == 1
    assert time.monotonic() - signalled_at < 5
    # And the unfinished message is handled by the next daemon
    daemon.start()
    wait_for(lambda: ledger.started()[0] == 2, timeout_s=15, what="the redelivery")
    assert ledger.done()[0] == 0
