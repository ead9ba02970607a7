"""Parallel execution without an emulator: wire format, payloads, publishing, reporting, fan-in decisions."""

from __future__ import annotations

import json

import pytest
from marshmallow import fields
from microcosm.api import create_object_graph, load_from_dict

from microbus import PubSubMessageSchema, schema
from microbus.consume.dispatch import Outcome, RetryPolicy, SQSMessageDispatcher
from microbus.consume.handlers import HandlerRegistry
from microbus.consume.message import SQSMessage
from microbus.errors import ConfigurationError, MessageValidationError, TransportError
from microbus.patterns.fanin import CallbackRunner, FanInState, decide
from microbus.patterns.parallel import (
    CID_KEY,
    PAYLOAD_FIELDS,
    CallbackInvocation,
    Parallel,
    ParallelRequest,
    TargetReport,
    callback,
    current_cid,
    final_payload,
    register_target,
    target_payload,
)
from microbus.patterns.reporter import FailureMode, ParallelReporter, exception_text, should_report
from microbus.produce.producer import SNSProducer, TopicArns
from microbus.wire.schemas import SchemaRegistry

REPLY_TO = "http://127.0.0.1:1/123456789012/callbacks"


@schema
class UnitTarget(PubSubMessageSchema):
    MEDIA_TYPE = "application/vnd.test.unit.parallel.target"

    sku = fields.String(required=True)


register_target("unit.inventory", UnitTarget)


def make_request(**overrides) -> ParallelRequest:
    values = dict(
        cid="cid-1",
        source="orders",
        target="unit.inventory",
        req_ts_utc="2026-01-01T00:00:00.000+00:00",
        reply_to=REPLY_TO,
        on_target=("cb.a", "cb.b"),
        on_final=("cb.final",),
        expected=3,
    )
    values.update(overrides)
    return ParallelRequest(**values)


def make_message(opaque: dict, *, media_type: str = UnitTarget.MEDIA_TYPE, content: bool = True) -> SQSMessage:
    body = {"mediaType": media_type, "opaqueData": opaque, "sku": "s-1"}
    return SQSMessage(
        consumer=None,
        message_id="m-1",
        receipt_handle="r-1",
        body=json.dumps(body),
        media_type=media_type,
        content={"media_type": media_type, "opaque_data": opaque, "sku": "s-1"} if content else None,
    )


# --- wire format and payloads


def test_a_request_travels_in_opaque_data_as_a_string_map_and_comes_back_equal():
    request = make_request()
    opaque = request.to_opaque()
    assert all(isinstance(key, str) and isinstance(value, str) for key, value in opaque.items())
    assert ParallelRequest.from_opaque(opaque) == request


def test_an_invoke_request_has_no_fan_in_entries():
    opaque = make_request(on_final=(), expected=None).to_opaque()
    assert "x-microbus-expected" not in opaque and "x-microbus-on-final" not in opaque
    assert ParallelRequest.from_opaque(opaque).expected is None


def test_a_message_without_a_cid_or_reply_to_is_not_parallel():
    assert ParallelRequest.from_opaque({"x-request-id": "r"}) is None
    assert ParallelRequest.from_opaque({CID_KEY: "c"}) is None


def test_the_request_is_read_from_the_body_when_the_content_did_not_decode():
    message = make_message(make_request().to_opaque(), content=False)
    assert ParallelRequest.from_message(message) == make_request()


def test_target_payload_has_exactly_the_documented_fields():
    payload = target_payload(make_request(), response={"r": 1}, ok=True, exception="ignored", resp_ts_utc="t2")
    assert tuple(payload) == PAYLOAD_FIELDS
    assert payload["exception"] is None
    assert payload["phase"] == "on-target"
    assert (payload["cid"], payload["source"], payload["target"]) == ("cid-1", "orders", "unit.inventory")


def test_final_payload_lists_results_by_response_time():
    data = [
        {"target": "b", "resp_ts_utc": "2"},
        {"target": "a", "resp_ts_utc": "3"},
        {"target": "c", "resp_ts_utc": "1"},
    ]
    payload = final_payload(cid="c", source="s", req_ts_utc="0", on_target=["x"], on_final=["y"], data=data)
    assert payload["phase"] == "on-final"
    assert [item["target"] for item in payload["data"]] == ["c", "b", "a"]
    assert (payload["on_target"], payload["on_final"], payload["cid"]) == (["x"], ["y"], "c")


def test_exception_text_is_the_traceback_or_the_reason():
    try:
        raise KeyError("missing")
    except KeyError as exc:
        error = exc
    assert exception_text(error, None).startswith("Traceback (most recent call last)")
    assert "KeyError: 'missing'" in exception_text(error, None)
    assert exception_text(None, "no-handler") == "no-handler"


# --- publishing


class RecordingSNS:
    def __init__(self) -> None:
        self.batches: list[tuple[str, list]] = []

    def publish_batch(self, topic_arn, entries):
        self.batches.append((topic_arn, list(entries)))
        return [f"id-{i}" for i in range(len(entries))], {}


def make_parallel(callback_queue_url: str | None = REPLY_TO) -> tuple[Parallel, RecordingSNS]:
    sns = RecordingSNS()
    producer = SNSProducer(transport=sns, schema_registry=SchemaRegistry(), topic_arns=TopicArns(default="arn:topic"))
    return Parallel(producer=producer, source="orders", callback_queue_url=callback_queue_url), sns


def published(sns: RecordingSNS) -> list[dict]:
    return [json.loads(message) for _, entries in sns.batches for message, _ in entries]


def test_fan_out_publishes_one_message_per_target_through_the_producer_with_the_cid():
    parallel, sns = make_parallel()
    targets = {"unit.inventory": {"sku": "a"}, UnitTarget.MEDIA_TYPE: {"sku": "b"}}
    # When fanning out to a registered target name and a media type
    cid = parallel.fan_out(targets, on_target=["cb.each"], on_final=["cb.final"])
    # Then both are published as the target's media type, with the parallel request in opaqueData
    messages = published(sns)
    assert [m["mediaType"] for m in messages] == [UnitTarget.MEDIA_TYPE] * 2
    requests = [ParallelRequest.from_opaque(m["opaqueData"]) for m in messages]
    assert [r.target for r in requests] == ["unit.inventory", UnitTarget.MEDIA_TYPE]
    assert {(r.cid, r.expected, r.on_target, r.on_final, r.reply_to) for r in requests} == {
        (cid, 2, ("cb.each",), ("cb.final",), REPLY_TO)
    }
    assert len(cid) == 32


def test_invoke_returns_the_callers_cid_unchanged():
    parallel, sns = make_parallel()
    assert parallel.invoke({"unit.inventory": {"sku": "a"}}, ["cb"], cid="1632-5754-5628-5197") == "1632-5754-5628-5197"
    assert ParallelRequest.from_opaque(published(sns)[0]["opaqueData"]).cid == "1632-5754-5628-5197"


def test_an_invalid_target_payload_publishes_nothing():
    parallel, sns = make_parallel()
    with pytest.raises(MessageValidationError, match="sku"):
        parallel.invoke({"unit.inventory": {"sku": "a"}, UnitTarget.MEDIA_TYPE: {}}, ["cb"])
    assert sns.batches == []


@pytest.mark.parametrize(
    ("queue_url", "targets", "callbacks", "match"),
    [
        (None, {"unit.inventory": {"sku": "a"}}, ["cb"], "parallel.callback_queue_url"),
        (REPLY_TO, {}, ["cb"], "at least one target"),
        (REPLY_TO, {"unit.inventory": {"sku": "a"}}, [""], "non-empty strings"),
    ],
)
def test_misuse_fails_with_a_sentence_that_says_what_to_fix(queue_url, targets, callbacks, match):
    parallel, _ = make_parallel(queue_url)
    with pytest.raises(ConfigurationError, match=match):
        parallel.invoke(targets, callbacks)


# --- reporting


class RecordingSQS:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.sent: list[dict] = []

    def send_message(self, **kwargs):
        if self.fail:
            raise TransportError("SQS queue is down")
        self.sent.append(kwargs)
        return {"MessageId": f"sent-{len(self.sent)}"}

    def reports(self) -> list[dict]:
        return [json.loads(kwargs["MessageBody"]) for kwargs in self.sent]


@pytest.mark.parametrize(
    ("outcome", "mode", "reported"),
    [
        (Outcome.SUCCEEDED, FailureMode.REPORT, True),
        (Outcome.SKIPPED, FailureMode.REPORT, True),
        (Outcome.FAILED, FailureMode.REPORT, True),
        (Outcome.FAILED, FailureMode.RETRY_FIRST, False),
        (Outcome.EXPIRED, FailureMode.RETRY_FIRST, True),
        (Outcome.REJECTED, FailureMode.RETRY_FIRST, True),
        (Outcome.RETRIED, FailureMode.REPORT, False),
        (Outcome.IGNORED, FailureMode.REPORT, False),
    ],
)
def test_which_outcomes_are_reported(outcome, mode, reported):
    assert should_report(outcome, mode) is reported


def run_target(handler, *, mode=FailureMode.REPORT, sqs=None, receive_count=1, max_bytes=262_144, opaque=None):
    sqs = sqs or RecordingSQS()
    reporter = ParallelReporter(
        sqs_client=sqs,
        schema_registry=SchemaRegistry(),
        allowed_reply_queues=[REPLY_TO],
        mode=mode,
        max_message_bytes=max_bytes,
    )
    dispatcher = SQSMessageDispatcher(
        handler_registry=HandlerRegistry({UnitTarget.MEDIA_TYPE: handler}),
        retry_policy=RetryPolicy(max_attempts=3, jitter=False),
        middleware=[reporter],
    )
    message = make_message(make_request().to_opaque() if opaque is None else opaque)
    message.approximate_receive_count = receive_count
    return dispatcher.handle(message), sqs


def test_a_successful_target_is_reported_and_its_handler_sees_the_cid():
    seen = []

    def handler(content):
        seen.append(current_cid())
        return {"reserved": content["sku"]}

    result, sqs = run_target(handler)
    (report,) = sqs.reports()
    assert result.outcome is Outcome.SUCCEEDED
    assert seen == ["cid-1"] and current_cid() is None
    assert sqs.sent[0]["QueueUrl"] == REPLY_TO
    assert report["mediaType"] == TargetReport.MEDIA_TYPE
    assert (report["ok"], report["response"], report["exception"]) == (True, {"reserved": "s-1"}, None)
    assert (report["on_target"], report["on_final"], report["expected"]) == (["cb.a", "cb.b"], ["cb.final"], 3)


def test_a_raising_target_is_reported_with_its_traceback_then_acked():
    def handler(content):
        raise RuntimeError("no stock")

    result, sqs = run_target(handler)
    (report,) = sqs.reports()
    assert report["ok"] is False and report["response"] is None
    assert "RuntimeError: no stock" in report["exception"] and "Traceback" in report["exception"]
    assert result.outcome is Outcome.SKIPPED and result.reason == "failure-reported"


def test_in_retry_first_mode_a_failure_is_retried_and_only_the_expiry_is_reported():
    def handler(content):
        raise RuntimeError("no stock")

    result, sqs = run_target(handler, mode=FailureMode.RETRY_FIRST)
    assert result.outcome is Outcome.FAILED and sqs.sent == []
    result, sqs = run_target(handler, mode=FailureMode.RETRY_FIRST, receive_count=3)
    assert result.outcome is Outcome.EXPIRED
    assert sqs.reports()[0]["ok"] is False


def test_a_failed_report_send_means_the_target_message_is_retried_not_acked():
    result, _ = run_target(lambda content: True, sqs=RecordingSQS(fail=True))
    assert result.outcome is Outcome.FAILED
    assert result.reason == "callback-send-failed"
    assert result.retry_after_s >= 1


def test_a_response_too_large_for_a_callback_message_is_reported_as_a_clear_failure():
    result, sqs = run_target(lambda content: "x" * 5_000, max_bytes=4_000)
    (report,) = sqs.reports()
    assert result.outcome is Outcome.SUCCEEDED
    assert report["ok"] is False and report["response"] is None
    assert report["exception"].startswith("ResponseTooLargeError: The response of target 'unit.inventory' is")
    assert "over the callback message limit of 4000" in report["exception"]


def test_a_response_that_is_not_json_is_reported_as_a_clear_failure():
    (report,) = run_target(lambda content: {"when": object()})[1].reports()
    assert report["ok"] is False
    assert report["exception"].startswith("ResponseNotSerializableError: The response of target 'unit.inventory'")


def test_a_message_outside_parallel_execution_is_not_reported():
    result, sqs = run_target(lambda content: True, opaque={"x-request-id": "r"})
    assert result.outcome is Outcome.SUCCEEDED and sqs.sent == []


def test_an_unknown_reporter_mode_is_a_configuration_error():
    graph = create_object_graph("unit", testing=True, loader=load_from_dict({"parallel_reporter": {"mode": "later"}}))
    with pytest.raises(ConfigurationError, match="'report' or 'retry-first'"):
        graph.parallel_reporter  # noqa: B018


# --- fan-in decisions


def state(**overrides) -> FanInState:
    values = dict(expected=3, completed=frozenset({"a", "b", "c"}), recorded_by="d-1")
    values.update(overrides)
    return FanInState(**values)


@pytest.mark.parametrize(
    ("fan_in", "report_id", "recorded_now", "run_on_target", "claim_final"),
    [
        (state(), "d-1", True, True, True),  # the last target just recorded
        (state(completed=frozenset({"a", "b"})), "d-1", True, True, False),  # targets still running
        (state(), "d-2", False, False, True),  # a duplicate: counted once, may still claim an unclaimed final
        (state(), "d-1", False, True, True),  # a redelivery or redriven copy of the report that recorded it
        (state(final_claimed_by="d-9"), "d-1", True, True, False),  # another delivery claimed on-final
        (state(final_claimed_by="d-1"), "d-1", False, True, True),  # our own claim, redelivered before sending
        (state(final_claimed_by="d-1", final_sent=True), "d-1", False, True, False),  # already sent
    ],
)
def test_fan_in_decisions(fan_in, report_id, recorded_now, run_on_target, claim_final):
    decision = decide(fan_in, report_id=report_id, recorded_now=recorded_now, has_final=True)
    assert (decision.run_on_target, decision.claim_final) == (run_on_target, claim_final)


def test_no_on_final_callbacks_means_nothing_to_claim():
    assert not decide(state(), report_id="d-1", recorded_now=True, has_final=False).claim_final


# --- callback runner


class RecordingTransport:
    def __init__(self) -> None:
        self.sent: list[dict] = []

    def send(self, body, message_attributes=None):
        self.sent.append(json.loads(body))
        return "id"


def test_an_invoke_report_becomes_one_invocation_per_callback_name():
    transport = RecordingTransport()
    runner = CallbackRunner(transport=transport, schema_registry=SchemaRegistry(), store=None)
    report = target_payload(make_request(expected=None), response=1, ok=True, exception=None, resp_ts_utc="t")
    report.update(report_id="r", on_target=["cb.a", "cb.b"], on_final=[], expected=None)
    assert runner.handle_report(report) is True
    assert [(m["mediaType"], m["callback"], m["phase"]) for m in transport.sent] == [
        (CallbackInvocation.MEDIA_TYPE, "cb.a", "on-target"),
        (CallbackInvocation.MEDIA_TYPE, "cb.b", "on-target"),
    ]
    assert all(m["payload"] == {k: report[k] for k in PAYLOAD_FIELDS} for m in transport.sent)


def test_a_fan_out_report_without_a_fan_in_table_fails_clearly():
    runner = CallbackRunner(transport=RecordingTransport(), schema_registry=SchemaRegistry(), store=None)
    with pytest.raises(ConfigurationError, match="fan_in_store.table_name"):
        runner.handle_report({"expected": 2, "on_target": [], "on_final": ["f"], "cid": "c"})


def test_an_invocation_runs_its_callback_with_the_cid_and_an_unknown_name_fails_clearly():
    seen = []

    @callback("unit.cb.seen")
    def seen_callback(payload):
        seen.append((payload, current_cid()))

    runner = CallbackRunner(transport=RecordingTransport(), schema_registry=SchemaRegistry(), store=None)
    runner.handle_invocation({"callback": "unit.cb.seen", "cid": "c-9", "phase": "on-target", "payload": {"k": 1}})
    assert seen == [({"k": 1}, "c-9")] and current_cid() is None
    with pytest.raises(ConfigurationError, match="No callback is registered as 'unit.cb.missing'"):
        runner.handle_invocation({"callback": "unit.cb.missing", "cid": "c", "phase": "on-target", "payload": {}})


def test_registering_two_functions_under_one_callback_name_is_refused():
    @callback("unit.cb.twice")
    def first(payload):
        return None

    with pytest.raises(ConfigurationError, match="registered twice"):

        @callback("unit.cb.twice")
        def second(payload):
            return None


@pytest.mark.parametrize(
    "opaque",
    [
        {"x-microbus-cid": "c", "x-microbus-reply-to": "q", "x-microbus-expected": "three"},
        {"x-microbus-cid": "c", "x-microbus-reply-to": "q", "x-microbus-on-target": "{not json"},
        {"x-microbus-cid": "c", "x-microbus-reply-to": "q", "x-microbus-on-final": '{"a": 1}'},
    ],
)
def test_malformed_parallel_fields_are_ignored_not_turned_into_endless_retries(opaque):
    from microbus.patterns.parallel import ParallelRequest

    assert ParallelRequest.from_opaque(opaque) is None
