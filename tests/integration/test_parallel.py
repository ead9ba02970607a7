"""Parallel execution and fan-out/fan-in against the emulator over HTTP: SNS, SQS and DynamoDB."""

from __future__ import annotations

import threading
import uuid
from collections import defaultdict
from contextlib import ExitStack

import pytest
from marshmallow import fields
from microcosm.api import create_object_graph, load_from_dict

from microbus import PubSubMessageSchema, Worker, schema
from microbus.consume.dispatch import Outcome, Result, SQSMessageDispatcher
from microbus.consume.handlers import HandlerRegistry
from microbus.errors import FanInStateError
from microbus.patterns.fanin import CallbackDaemon, FanInStore
from microbus.patterns.parallel import PAYLOAD_FIELDS, ParallelRequest, TargetReport, callback, current_cid, utc_now
from microbus.testing import wait_for
from microbus.topology import Queue, Table, Topology, apply_topology

pytestmark = pytest.mark.integration


class _Job(PubSubMessageSchema):
    n = fields.Integer(required=True)


JOBS = [
    schema(type(f"ParallelJob{i}", (_Job,), {"MEDIA_TYPE": f"application/vnd.test.parallel.job{i}"})) for i in range(5)
]
MEDIA_TYPES = [job.MEDIA_TYPE for job in JOBS]
RAISING = MEDIA_TYPES[1]

_lock = threading.Lock()
calls: dict[str, list[dict]] = defaultdict(list)
cids_seen_by_targets: list[str | None] = []


def _record(name: str, payload: dict) -> None:
    with _lock:
        calls[name].append({**payload, "current_cid": current_cid()})


@callback("test.parallel.first")
def first_callback(payload: dict) -> None:
    _record("first", payload)


@callback("test.parallel.second")
def second_callback(payload: dict) -> None:
    _record("second", payload)


@callback("test.parallel.each")
def each_callback(payload: dict) -> None:
    _record("each", payload)


@callback("test.parallel.final")
def final_callback(payload: dict) -> None:
    _record("final", payload)


def job_handler(content: dict) -> dict:
    with _lock:
        cids_seen_by_targets.append(current_cid())
    if content["media_type"] == RAISING:
        raise ValueError(f"boom {content['n']}")
    return {"doubled": content["n"] * 2}


def for_cid(name: str, cid: str) -> list[dict]:
    with _lock:
        return [payload for payload in calls[name] if payload["cid"] == cid]


@pytest.fixture
def parallel_app(make_queue, microbus_endpoint):
    """A target topic + queue, a callback queue, a fan-in table, and a graph wired to them."""
    queue = make_queue()
    name = f"cb-{uuid.uuid4().hex[:12]}"
    settings = microbus_endpoint.settings()
    applied = apply_topology(
        Topology(queues=(Queue(name=name, max_receive_count=5),), tables=(Table(name=name),)),
        sns=queue.sns,
        sqs=queue.sqs,
        dynamodb=settings.client("dynamodb"),
    )
    callback_queue_url = applied.queue_urls[name]
    config = queue.graph_config(
        parallel={"callback_queue_url": callback_queue_url},
        fan_in_store={"table_name": name},
        microbus_sqs_message_dispatcher={"middleware": ["parallel_reporter"]},
    )
    graph = create_object_graph("parallel-test", testing=True, loader=load_from_dict(config))
    graph.use("parallel", "microbus_sqs_consumer", "parallel_reporter")

    def callback_worker() -> Worker:
        daemon = CallbackDaemon(
            **microbus_endpoint.config(),
            microbus_sqs_consumer={"sqs_queue_url": callback_queue_url, "wait_seconds": 1},
            fan_in_store={"table_name": name},
            parallel_callback_dispatcher={"backoff_base_s": 0.2},
        )
        return daemon.create_worker(concurrency=2)

    target_dispatcher = SQSMessageDispatcher(
        handler_registry=HandlerRegistry(dict.fromkeys(MEDIA_TYPES, job_handler)),
        middleware=[graph.parallel_reporter],
    )
    target_worker = Worker(consumer=graph.microbus_sqs_consumer, dispatcher=target_dispatcher, concurrency=2)
    with ExitStack() as stack:
        yield graph, queue, callback_queue_url, target_worker, callback_worker, stack


def run(stack: ExitStack, worker: Worker) -> Worker:
    worker.start()
    stack.callback(worker.join)
    stack.callback(worker.stop)
    return worker


def test_invoke_runs_every_callback_once_per_target_with_ok_false_and_a_traceback_for_the_raiser(parallel_app):
    graph, queue, callback_queue_url, target_worker, callback_worker, stack = parallel_app
    # Given a target daemon and a callback daemon
    run(stack, target_worker)
    run(stack, callback_worker())
    targets = {media_type: {"n": i} for i, media_type in enumerate(MEDIA_TYPES[:3])}
    # When three targets are invoked with two callbacks, one target raising
    cid = graph.parallel.invoke(targets, ["test.parallel.first", "test.parallel.second"])
    # Then each callback runs three times, once per target
    wait_for(lambda: len(for_cid("first", cid)) >= 3 and len(for_cid("second", cid)) >= 3, what="6 callback runs")
    for name in ("first", "second"):
        payloads = {payload["target"]: payload for payload in for_cid(name, cid)}
        assert len(for_cid(name, cid)) == 3
        assert set(payloads) == set(targets)
        for target, payload in payloads.items():
            assert set(payload) == set(PAYLOAD_FIELDS) | {"current_cid"}
            assert payload["cid"] == payload["current_cid"] == cid
            assert payload["phase"] == "on-target"
            assert payload["source"] == "parallel-test"
            assert payload["resp_ts_utc"] >= payload["req_ts_utc"]
            if target == RAISING:
                assert payload["ok"] is False
                assert payload["response"] is None
                assert payload["exception"].startswith("Traceback (most recent call last)")
                assert "ValueError: boom 1" in payload["exception"]
            else:
                assert payload["ok"] is True
                assert payload["exception"] is None
                assert payload["response"] == {"doubled": targets[target]["n"] * 2}
        assert len({payload["req_ts_utc"] for payload in payloads.values()}) == 1
    # And the targets saw the cid, and the raising target's message was acked once reported (not retried)
    assert cids_seen_by_targets.count(cid) == 3
    wait_for(lambda: queue.depth() == 0 and queue.depth(callback_queue_url) == 0, what="queues drained")
    assert target_worker.stats.outcomes[Outcome.SKIPPED.label] == 1
    assert target_worker.stats.failed == 0


def test_a_user_supplied_cid_comes_back_unchanged(parallel_app):
    graph, queue, callback_queue_url, target_worker, callback_worker, stack = parallel_app
    run(stack, target_worker)
    run(stack, callback_worker())
    # When the caller gives its own cid
    given = f"1632-5754-{uuid.uuid4().hex[:8]}"
    cid = graph.parallel.invoke({MEDIA_TYPES[0]: {"n": 7}}, ["test.parallel.first"], cid=given)
    # Then it is returned unchanged and the callback sees it
    assert cid == given
    (payload,) = wait_for(lambda: for_cid("first", given), what="the callback")
    assert payload["response"] == {"doubled": 14}
    assert payload["current_cid"] == given


def test_fan_out_fires_on_final_exactly_once_with_two_callback_daemons_and_a_duplicate_report(parallel_app):
    graph, queue, callback_queue_url, target_worker, callback_worker, stack = parallel_app
    # Given five targets that all reported before any callback daemon runs
    run(stack, target_worker)
    targets = {media_type: {"n": i} for i, media_type in enumerate(MEDIA_TYPES)}
    cid = graph.parallel.fan_out(targets, on_target=["test.parallel.each"], on_final=["test.parallel.final"])
    wait_for(lambda: queue.depth(callback_queue_url) >= 5, what="5 reports")
    # And a duplicate delivery of one report (same body, another SQS message)
    (report,) = queue.sqs.receive_message(
        QueueUrl=callback_queue_url, MaxNumberOfMessages=1, MessageAttributeNames=["All"]
    )["Messages"]
    queue.sqs.send_message(
        QueueUrl=callback_queue_url, MessageBody=report["Body"], MessageAttributes=report["MessageAttributes"]
    )
    queue.sqs.change_message_visibility(
        QueueUrl=callback_queue_url, ReceiptHandle=report["ReceiptHandle"], VisibilityTimeout=0
    )
    # When two callback daemons consume the callback queue at once
    workers = [run(stack, callback_worker()), run(stack, callback_worker())]
    # Then on_final runs once, with the five results, and each target's callback once
    wait_for(lambda: for_cid("final", cid), what="on_final")
    wait_for(lambda: queue.depth(callback_queue_url) == 0, what="callback queue drained")
    (final,) = for_cid("final", cid)
    assert final["phase"] == "on-final"
    assert final["current_cid"] == final["cid"] == cid
    assert final["source"] == "parallel-test"
    assert final["on_target"] == ["test.parallel.each"]
    assert final["on_final"] == ["test.parallel.final"]
    assert sorted(item["target"] for item in final["data"]) == sorted(MEDIA_TYPES)
    assert [item["ok"] for item in final["data"]].count(False) == 1
    assert all(item["phase"] == "on-target" and item["cid"] == cid for item in final["data"])
    assert len(for_cid("each", cid)) == 5
    # When a late duplicate report of a target arrives (the target ran twice)
    handled = sum(worker.stats.handled for worker in workers)
    request = ParallelRequest(
        cid=cid,
        source="parallel-test",
        target=MEDIA_TYPES[0],
        req_ts_utc=utc_now(),
        reply_to=callback_queue_url,
        on_target=("test.parallel.each",),
        on_final=("test.parallel.final",),
        expected=5,
    )
    graph.parallel_reporter.send_report(request, Result(Outcome.SUCCEEDED, TargetReport.MEDIA_TYPE, "late", 1))
    wait_for(lambda: sum(worker.stats.handled for worker in workers) > handled, what="the late duplicate handled")
    # Then nothing more runs
    assert len(for_cid("final", cid)) == 1
    assert len(for_cid("each", cid)) == 5
    assert sum(worker.stats.dead_lettered + worker.stats.failed for worker in workers) == 0


@pytest.fixture
def fan_in_store(microbus_endpoint):
    name = f"fi-{uuid.uuid4().hex[:12]}"
    dynamodb = microbus_endpoint.settings().client("dynamodb")
    apply_topology(Topology(tables=(Table(name=name),)), sns=None, sqs=None, dynamodb=dynamodb)
    return FanInStore(client=dynamodb, table_name=name, ttl_s=60)


REPORT = dict(cid="c-1", source="s", req_ts_utc="t0", on_target=["each"], on_final=["final"], expected=2)


def test_the_store_counts_a_target_once_and_lets_one_delivery_claim_on_final(fan_in_store):
    # Given one target recorded, then recorded again by another delivery
    assert fan_in_store.record({**REPORT, "target": "a"}, {"target": "a"}, report_id="d-1")[0] is True
    recorded, state = fan_in_store.record({**REPORT, "target": "a"}, {"target": "a", "late": True}, report_id="d-2")
    # Then the second changes nothing
    assert recorded is False
    assert (state.completed, state.recorded_by) == (frozenset({"a"}), "d-1")
    # When the last target is recorded, only one delivery can claim on-final, until it was sent
    recorded, state = fan_in_store.record({**REPORT, "target": "b"}, {"target": "b"}, report_id="d-3")
    assert recorded and state.completed == frozenset({"a", "b"}) and state.expected == 2
    assert fan_in_store.claim_final("c-1", claimant="d-3") is True
    assert fan_in_store.claim_final("c-1", claimant="d-2") is False
    assert fan_in_store.claim_final("c-1", claimant="d-3") is True
    fan_in_store.mark_final_sent("c-1")
    assert fan_in_store.claim_final("c-1", claimant="d-3") is False
    # And the record holds the first payload of each target, and expires
    record = fan_in_store.load("c-1")
    assert sorted(record.results, key=lambda r: r["target"]) == [{"target": "a"}, {"target": "b"}]
    item = fan_in_store.client.get_item(TableName=fan_in_store.table_name, Key={"pk": {"S": "fan-in#c-1"}})["Item"]
    assert int(item["expires_at"]["N"]) > 0


def test_results_over_the_item_limit_fail_clearly_and_unknown_cids_too(fan_in_store):
    report = {**REPORT, "cid": "c-big", "expected": 3}
    fan_in_store.record({**report, "target": "a"}, {"response": "x" * 200_000}, report_id="d-1")
    fan_in_store.record({**report, "target": "b"}, {"response": "x" * 150_000}, report_id="d-2")
    with pytest.raises(FanInStateError, match="exceed DynamoDB's 400 KB item limit"):
        fan_in_store.record({**report, "target": "c"}, {"response": "x" * 100_000}, report_id="d-3")
    with pytest.raises(FanInStateError, match="No fan-in state for cid 'nope'"):
        fan_in_store.load("nope")
