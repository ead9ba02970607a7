"""Fan-in exactly-once: the on-final claim survives dead-lettering, a failed ``mark_final_sent`` does not run
on-final twice, the fan-in lifetime starts at the fan-out, a fan-in that cannot complete ends visibly, and
racing callback daemons against a DynamoDB that applies conditional updates concurrently (LocalStack).

The runner-level tests drive a :class:`CallbackRunner` through its dispatcher with hand-made deliveries
(message ids chosen by the test), against the fan-in table on the emulator; invocations are captured
instead of sent, then delivered back, so that redeliveries and dead-letter copies are deterministic.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter, defaultdict
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from marshmallow import fields
from microcosm.api import create_object_graph, load_from_dict

from microbus import PubSubMessageSchema, Worker, schema
from microbus.consume.dispatch import Outcome, RetryPolicy, SQSMessageDispatcher
from microbus.consume.handlers import HandlerRegistry
from microbus.consume.message import SQSMessage
from microbus.errors import TransientTransportError
from microbus.patterns.fanin import CallbackDaemon, CallbackRunner, FanInStore
from microbus.patterns.parallel import CID_KEY, CallbackInvocation, TargetReport, callback, utc_now
from microbus.testing import wait_for
from microbus.topology import Queue, Table, Topology, apply_topology
from microbus.wire.schemas import SchemaRegistry

pytestmark = pytest.mark.integration

_lock = threading.Lock()
runs: dict[str, list[dict[str, Any]]] = defaultdict(list)


@callback("fanin.test.each")
def _each(payload: dict[str, Any]) -> None:
    with _lock:
        runs[f"each:{payload['cid']}"].append(payload)


@callback("fanin.test.final")
def _final(payload: dict[str, Any]) -> None:
    with _lock:
        runs[f"final:{payload['cid']}"].append(payload)


def finals(cid: str) -> list[dict[str, Any]]:
    with _lock:
        return list(runs[f"final:{cid}"])


def eaches(cid: str) -> list[dict[str, Any]]:
    with _lock:
        return list(runs[f"each:{cid}"])


class CapturingQueue:
    """Stands for the callback queue: keeps what the runner sends; can fail on-final sends."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.fail_on_final = 0

    def send(self, body: str, message_attributes: Any = None, **kwargs: Any) -> str:
        if self.fail_on_final and json.loads(body).get("phase") == "on-final":
            self.fail_on_final -= 1
            raise TransientTransportError("SQS queue is throttling")
        self.sent.append(body)
        return f"inv-{len(self.sent)}"

    def take(self) -> list[str]:
        taken, self.sent = self.sent, []
        return taken


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")


def make_report(cid: str, target: str, *, expected: int = 2, req_ts_utc: str | None = None) -> dict[str, Any]:
    return {
        "media_type": TargetReport.MEDIA_TYPE,
        "opaque_data": {CID_KEY: cid},
        "report_id": uuid.uuid4().hex,
        "cid": cid,
        "source": "fanin-test",
        "target": target,
        "response": {"target": target},
        "req_ts_utc": req_ts_utc or utc_now(),
        "resp_ts_utc": utc_now(),
        "ok": True,
        "exception": None,
        "phase": "on-target",
        "on_target": ["fanin.test.each"],
        "on_final": ["fanin.test.final"],
        "expected": expected,
    }


class Harness:
    """A runner on the emulator's fan-in table, its dispatcher, and deliveries with chosen message ids."""

    def __init__(self, store: FanInStore) -> None:
        self.store = store
        self.queue = CapturingQueue()
        self.registry = SchemaRegistry()
        self.runner = CallbackRunner(transport=self.queue, schema_registry=self.registry, store=store)  # type: ignore[arg-type]
        self.dispatcher = SQSMessageDispatcher(
            handler_registry=self.runner.handler_registry(),
            retry_policy=RetryPolicy(max_attempts=5, jitter=False),
            middleware=[self.runner],
        )

    def deliver(self, content: dict[str, Any], *, message_id: str | None = None, receive_count: int = 1) -> Outcome:
        media_type = content["media_type"]
        message = SQSMessage(
            consumer=None,
            message_id=message_id or uuid.uuid4().hex,
            receipt_handle=uuid.uuid4().hex,
            body=json.dumps(content),
            media_type=media_type,
            content=content,
        )
        message.approximate_receive_count = receive_count
        return self.dispatcher.handle(message).outcome

    def run_invocations(self, bodies: list[str] | None = None) -> list[Outcome]:
        """Deliver the captured invocations (each as a new SQS message) and return their outcomes."""
        codec = self.registry.find(CallbackInvocation.MEDIA_TYPE)
        return [self.deliver(codec.decode(body)) for body in (self.queue.take() if bodies is None else bodies)]

    def final_invocations(self, bodies: list[str]) -> list[str]:
        return [body for body in bodies if json.loads(body)["phase"] == "on-final"]


@pytest.fixture
def harness(make_table, microbus_endpoint) -> Harness:
    client = microbus_endpoint.settings().client("dynamodb")
    return Harness(FanInStore(client=client, table_name=make_table("fi"), ttl_s=600))


# --- defect 1: the on-final claim must survive dead-lettering and redrive


def test_a_redriven_copy_of_the_report_that_claimed_on_final_still_sends_it(harness):
    cid = uuid.uuid4().hex
    first, last = make_report(cid, "a"), make_report(cid, "b")
    assert harness.deliver(first) is Outcome.SUCCEEDED
    # Given the last report claims on-final, then cannot send it, until it is dead-lettered
    harness.queue.fail_on_final = 3
    outcomes = [harness.deliver(last, message_id="m-last", receive_count=n) for n in (3, 4, 5)]
    assert outcomes == [Outcome.FAILED, Outcome.FAILED, Outcome.EXPIRED]
    assert harness.final_invocations(harness.queue.sent) == []
    # When the dead-letter copy (a new SendMessage: a new message id) is redriven to the callback queue
    assert harness.deliver(last, message_id="m-redriven") is Outcome.SUCCEEDED
    # Then on-final is sent, and runs once with both results
    harness.run_invocations()
    (final,) = finals(cid)
    assert sorted(item["target"] for item in final["data"]) == ["a", "b"]
    # And another delivery of the same copy changes nothing
    assert harness.deliver(last, message_id="m-redriven-again") is Outcome.SUCCEEDED
    harness.run_invocations()
    assert len(finals(cid)) == 1
    assert sorted(p["target"] for p in eaches(cid)) == ["a", "b"]


# --- defect 2: a transient failure of mark_final_sent must not run on-final twice


def flaky_mark(store: FanInStore, failures: int) -> Counter[str]:
    """Make the next ``failures`` calls of ``mark_final_sent`` fail after doing nothing; count the calls."""
    calls: Counter[str] = Counter()
    real = store.mark_final_sent

    def mark(cid: str) -> None:
        calls["calls"] += 1
        if calls["calls"] <= failures:
            raise TransientTransportError("DynamoDB is throttling")
        real(cid)

    store.mark_final_sent = mark  # type: ignore[method-assign]
    return calls


@pytest.mark.parametrize("failures", [1, 3])
@pytest.mark.parametrize("invocations_first", [True, False], ids=["invocations-run-between", "invocations-queued"])
def test_a_retry_after_mark_final_sent_failed_does_not_run_on_final_again(harness, failures, invocations_first):
    cid = uuid.uuid4().hex
    assert harness.deliver(make_report(cid, "a")) is Outcome.SUCCEEDED
    harness.run_invocations()
    flaky_mark(harness.store, failures)
    last = make_report(cid, "b")
    sent: list[str] = []
    # When the delivery that claimed on-final fails to record it sent, ``failures`` times, and is retried
    for attempt in range(1, failures + 2):
        outcome = harness.deliver(last, message_id="m-last", receive_count=attempt)
        assert outcome is (Outcome.FAILED if attempt <= failures else Outcome.SUCCEEDED)
        if invocations_first:
            sent += harness.final_invocations(harness.queue.sent)
            harness.run_invocations()
    if not invocations_first:
        sent = harness.final_invocations(harness.queue.sent)
        harness.run_invocations()
    # Then on-final runs once; the number of on-final invocations sent is what the retries cost
    assert len(finals(cid)) == 1
    assert len(sent) == (1 if invocations_first else failures + 1)
    # And nothing more is sent afterwards
    assert harness.deliver(last, message_id="m-last", receive_count=failures + 2) is Outcome.SUCCEEDED
    assert harness.final_invocations(harness.queue.take()) == []


def test_a_duplicate_on_final_invocation_is_acked_without_running_and_its_own_retry_runs(harness):
    cid = uuid.uuid4().hex
    harness.deliver(make_report(cid, "a"))
    harness.deliver(make_report(cid, "b"))
    (invocation,) = harness.final_invocations(harness.queue.take())
    codec = harness.registry.find(CallbackInvocation.MEDIA_TYPE)
    content = codec.decode(invocation)
    # The winning invocation runs; a retry of the same message (or its redriven copy) runs again
    assert harness.deliver(content, message_id="i-1") is Outcome.SUCCEEDED
    assert harness.deliver(content, message_id="i-1-redriven") is Outcome.SUCCEEDED
    assert len(finals(cid)) == 2  # at least once per invocation: callbacks must be idempotent
    # A second invocation of the same callback (another send) does not run
    copy = {**content, "invocation_id": uuid.uuid4().hex}
    assert harness.deliver(copy) is Outcome.SUCCEEDED
    assert len(finals(cid)) == 2


# --- defect 4: the fan-in lifetime starts at the fan-out, and late reports are recognised


def test_the_item_expires_a_ttl_after_the_fan_out_started_not_after_the_first_report(harness):
    cid = uuid.uuid4().hex
    started = datetime.now(UTC) - timedelta(seconds=300)
    harness.deliver(make_report(cid, "a", req_ts_utc=iso(started)))
    item = harness.store.client.get_item(TableName=harness.store.table_name, Key={"pk": {"S": f"fan-in#{cid}"}})
    expires_at = int(item["Item"]["expires_at"]["N"])
    assert expires_at <= started.timestamp() + harness.store.ttl_s + getattr(harness.store, "retain_s", 0) + 1


def test_a_report_after_the_fan_in_expired_is_acked_without_starting_a_new_fan_in(harness, caplog):
    cid = uuid.uuid4().hex
    started = datetime.now(UTC) - timedelta(seconds=harness.store.ttl_s + 5)
    # When a report of a fan-out that started more than ttl_s ago arrives (its item may be gone)
    outcome = harness.deliver(make_report(cid, "a", expected=1, req_ts_utc=iso(started)))
    # Then it is acked, logged as late, and nothing is recorded or sent
    assert outcome is Outcome.SUCCEEDED
    assert "late" in caplog.text.lower()
    item = harness.store.client.get_item(TableName=harness.store.table_name, Key={"pk": {"S": f"fan-in#{cid}"}})
    assert "Item" not in item
    assert harness.queue.sent == []


# --- defect 3 (the daemon side): a fan-in that cannot complete ends at its deadline, missing targets marked


class _Step(PubSubMessageSchema):
    n = fields.Integer(required=True)


STEPS = [
    schema(type(f"FanInStep{i}", (_Step,), {"MEDIA_TYPE": f"application/vnd.test.fanin.step{i}"})) for i in range(3)
]
STEP_TYPES = [step.MEDIA_TYPE for step in STEPS]


def step_handler(content: dict[str, Any]) -> dict[str, Any]:
    return {"n": content["n"]}


def refuse_last_step(graph: Any, refuse: dict[str, bool]) -> dict[str, bool]:
    """While ``refuse["on"]``, SNS refuses the entries of the last step (and publishes the others)."""
    transport = graph.microbus_sns_producer.transport
    real = transport.publish_batch

    def publish_batch(topic_arn: str, entries: list[Any], **kwargs: Any) -> Any:
        if not refuse["on"]:
            return real(topic_arn, entries, **kwargs)
        keep = [p for p, (body, _) in enumerate(entries) if STEP_TYPES[2] not in body]
        kept_ids, kept_failed = real(topic_arn, [entries[p] for p in keep], **kwargs)
        ids: list[str | None] = [None] * len(entries)
        for position, message_id in zip(keep, kept_ids, strict=True):
            ids[position] = message_id
        failed = {keep[i]: reason for i, reason in kept_failed.items()}
        failed.update({p: "InternalError: refused by the test" for p in range(len(entries)) if p not in keep})
        return ids, failed

    transport.publish_batch = publish_batch
    return refuse


@pytest.fixture
def fan_in_app(make_queue, microbus_endpoint):
    """A target topic + queue, a callback queue, a fan-in table; targets and callback daemons to start."""
    queue = make_queue()
    name = f"cbx-{uuid.uuid4().hex[:12]}"
    applied = apply_topology(
        Topology(queues=(Queue(name=name, max_receive_count=5),), tables=(Table(name=name),)),
        sns=queue.sns,
        sqs=queue.sqs,
        dynamodb=microbus_endpoint.settings().client("dynamodb"),
    )
    callback_queue_url = applied.queue_urls[name]
    config = queue.graph_config(
        parallel={"callback_queue_url": callback_queue_url},
        microbus_sqs_message_dispatcher={"middleware": ["parallel_reporter"]},
    )
    graph = create_object_graph("fanin-test", testing=True, loader=load_from_dict(config))
    graph.use("parallel", "microbus_sqs_consumer", "parallel_reporter")

    def callback_worker(ttl_s: int = 600) -> Worker:
        daemon = CallbackDaemon(
            **microbus_endpoint.config(),
            microbus_sqs_consumer={"sqs_queue_url": callback_queue_url, "wait_seconds": 1},
            fan_in_store={"table_name": name, "ttl_s": ttl_s},
            parallel_callback_dispatcher={"backoff_base_s": 0.2},
        )
        return daemon.create_worker(concurrency=4)

    def target_worker() -> Worker:
        dispatcher = SQSMessageDispatcher(
            handler_registry=HandlerRegistry(dict.fromkeys(STEP_TYPES, step_handler)),
            middleware=[graph.parallel_reporter],
        )
        return Worker(consumer=graph.microbus_sqs_consumer, dispatcher=dispatcher, concurrency=4)

    with ExitStack() as stack:

        def run(worker: Worker) -> Worker:
            worker.start()
            stack.callback(worker.join)
            stack.callback(worker.stop)
            return worker

        yield graph, queue, callback_queue_url, target_worker, callback_worker, run


def test_a_partial_fan_out_left_alone_runs_on_final_at_its_deadline_with_the_missing_target_marked(fan_in_app):
    from microbus.patterns.parallel import FanOutPublishError

    graph, queue, callback_queue_url, target_worker, callback_worker, run = fan_in_app
    refuse_last_step(graph, {"on": True})
    run(target_worker())
    run(callback_worker(ttl_s=3))
    # When a fan-out is published only in part, and nobody resumes it
    with pytest.raises(FanOutPublishError) as caught:
        graph.parallel.fan_out(
            {step: {"n": i} for i, step in enumerate(STEP_TYPES)},
            on_target=["fanin.test.each"],
            on_final=["fanin.test.final"],
        )
    cid = caught.value.cid
    assert caught.value.unpublished == (STEP_TYPES[2],)
    # Then on-final runs once, at the deadline, with the missing target marked as failed
    (final,) = wait_for(lambda: finals(cid), timeout_s=30, what="on-final at the deadline")
    assert final["missing"] == [STEP_TYPES[2]]
    by_target = {item["target"]: item for item in final["data"]}
    assert set(by_target) == set(STEP_TYPES)
    assert [by_target[t]["ok"] for t in STEP_TYPES] == [True, True, False]
    assert "FanInTimeoutError" in by_target[STEP_TYPES[2]]["exception"]
    time.sleep(2)
    assert len(finals(cid)) == 1


def test_a_partial_fan_out_resumed_with_its_cid_completes_without_rerunning_what_was_published(fan_in_app):
    from microbus.patterns.parallel import FanOutPublishError

    graph, queue, callback_queue_url, target_worker, callback_worker, run = fan_in_app
    refuse = refuse_last_step(graph, {"on": True})
    targets = {step: {"n": i} for i, step in enumerate(STEP_TYPES)}
    run(target_worker())
    run(callback_worker())
    with pytest.raises(FanOutPublishError) as caught:
        graph.parallel.fan_out(targets, on_target=["fanin.test.each"], on_final=["fanin.test.final"])
    cid = caught.value.cid
    wait_for(lambda: len(eaches(cid)) == 2, what="the two published targets")
    # When the caller retries with the cid, and SNS takes everything now
    refuse["on"] = False
    assert graph.parallel.fan_out(targets, on_target=["fanin.test.each"], on_final=["fanin.test.final"], cid=cid) == cid
    # Then the fan-in completes once, and the published targets did not run again
    (final,) = wait_for(lambda: finals(cid), what="on-final")
    assert final["missing"] == []
    assert sorted(item["target"] for item in final["data"]) == sorted(STEP_TYPES)
    wait_for(lambda: len(eaches(cid)) == 3, what="the third target")
    time.sleep(1.5)
    assert sorted(p["target"] for p in eaches(cid)) == sorted(STEP_TYPES)
    assert len(finals(cid)) == 1


# --- defect 5: racing callback daemons against a DynamoDB that applies conditional updates concurrently


def test_racing_callback_daemons_fire_on_final_once_on_a_concurrent_dynamodb(fan_in_app, microbus_endpoint):
    if microbus_endpoint.kind != "localstack":
        pytest.skip(
            "needs a DynamoDB that applies conditional updates concurrently (LocalStack's DynamoDB Local): "
            "the embedded moto server handles DynamoDB requests one at a time; run with --emulator localstack"
        )
    graph, queue, callback_queue_url, target_worker, callback_worker, run = fan_in_app
    # Given many fan-outs whose reports (and duplicates of them) are all queued before any callback daemon runs
    run(target_worker())
    cids = [
        graph.parallel.fan_out(
            {step: {"n": i} for i, step in enumerate(STEP_TYPES)},
            on_target=["fanin.test.each"],
            on_final=["fanin.test.final"],
        )
        for _ in range(20)
    ]
    wait_for(lambda: queue.depth(callback_queue_url) >= 20 * 4, timeout_s=60, what="all reports and deadlines")
    copies = 0
    for _ in range(6):  # duplicate some reports: the same body again, as another SQS message
        batch = queue.sqs.receive_message(
            QueueUrl=callback_queue_url, MaxNumberOfMessages=10, MessageAttributeNames=["All"], VisibilityTimeout=0
        ).get("Messages", [])
        for message in batch:
            queue.sqs.send_message(
                QueueUrl=callback_queue_url, MessageBody=message["Body"], MessageAttributes=message["MessageAttributes"]
            )
            copies += 1
    assert copies > 0
    # When four callback daemons consume the callback queue at once
    workers = [run(callback_worker()) for _ in range(4)]
    # Then each fan-out's on-final runs exactly once, and each target's on-target callback once
    wait_for(lambda: all(finals(cid) for cid in cids), timeout_s=90, what="every on-final")
    wait_for(lambda: queue.depth(callback_queue_url) == 0, timeout_s=60, what="the callback queue drained")
    assert {cid: len(finals(cid)) for cid in cids} == dict.fromkeys(cids, 1)
    assert {cid: len(eaches(cid)) for cid in cids} == dict.fromkeys(cids, 3)
    assert sum(worker.stats.dead_lettered for worker in workers) == 0
