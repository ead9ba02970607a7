"""A fan-out published only in part: the error carries the cid and what was sent, a retry with the cid
publishes only the rest (same fan-in: same request time, same expected count), and a deadline is sent
to the callback queue first so that a fan-in nobody resumes still ends."""

from __future__ import annotations

import json
from typing import Any

import pytest
from marshmallow import fields

from microbus import PublishError, PubSubMessageSchema, schema
from microbus.errors import ConfigurationError, TransportError
from microbus.patterns.parallel import Parallel, ParallelRequest, register_target
from microbus.produce.producer import SNSProducer, TopicArns
from microbus.wire.schemas import SchemaRegistry

REPLY_TO = "http://127.0.0.1:1/123456789012/callbacks"


@schema
class PartialTarget(PubSubMessageSchema):
    MEDIA_TYPE = "application/vnd.test.unit.fanin.partial"

    n = fields.Integer(required=True)


for _name in ("p.a", "p.b", "p.c"):
    register_target(_name, PartialTarget)

TARGETS = {"p.a": {"n": 1}, "p.b": {"n": 2}, "p.c": {"n": 3}}


class RefusingSNS:
    """Publishes every entry except those of the targets in ``refuse``."""

    def __init__(self, refuse: set[str]) -> None:
        self.refuse = refuse
        self.published: list[dict[str, Any]] = []

    def publish_batch(self, topic_arn: str, entries: list[Any], **kwargs: Any) -> Any:
        ids: list[str | None] = []
        failed: dict[int, str] = {}
        for position, (body, _) in enumerate(entries):
            message = json.loads(body)
            if ParallelRequest.from_opaque(message["opaqueData"]).target in self.refuse:
                ids.append(None)
                failed[position] = "InternalError: refused"
            else:
                self.published.append(message)
                ids.append(f"id-{len(self.published)}")
        return ids, failed

    def requests(self) -> list[ParallelRequest]:
        return [ParallelRequest.from_opaque(m["opaqueData"]) for m in self.published]


class RecordingSQS:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.fail = False

    def send_message(self, **kwargs: Any) -> dict[str, str]:
        if self.fail:
            raise TransportError("SQS queue is down")
        self.sent.append(kwargs)
        return {"MessageId": f"m-{len(self.sent)}"}

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(kwargs["MessageBody"]) for kwargs in self.sent]


def make(sns: RefusingSNS, sqs: RecordingSQS | None = None) -> Parallel:
    producer = SNSProducer(
        transport=sns, schema_registry=SchemaRegistry(), topic_arns=TopicArns(default="arn:topic"), retry_base_s=0
    )
    return Parallel(producer=producer, source="orders", callback_queue_url=REPLY_TO, sqs_client=sqs or RecordingSQS())


def fail_partly(parallel: Parallel, **kwargs: Any) -> Any:
    with pytest.raises(PublishError) as caught:
        parallel.fan_out(TARGETS, on_target=["cb.each"], on_final=["cb.final"], **kwargs)
    return caught.value


def test_the_error_of_a_partial_fan_out_carries_the_cid_and_what_was_sent():
    sns = RefusingSNS(refuse={"p.b"})
    error = fail_partly(make(sns))
    assert error.cid == sns.requests()[0].cid
    assert error.published == ("p.a", "p.c")
    assert error.unpublished == ("p.b",)
    assert error.req_ts_utc == sns.requests()[0].req_ts_utc
    assert "p.b" in str(error) and error.cid in str(error)
    assert [r.expected for r in sns.requests()] == [3, 3]


def test_a_retry_with_the_cid_publishes_only_the_rest_into_the_same_fan_in():
    sns = RefusingSNS(refuse={"p.b"})
    parallel = make(sns)
    error = fail_partly(parallel, cid="order-17")
    assert error.cid == "order-17"
    sns.refuse.clear()
    # When the caller retries with the cid
    assert parallel.fan_out(TARGETS, on_target=["cb.each"], on_final=["cb.final"], cid="order-17") == "order-17"
    # Then only the missing target is published, under the first call's request time and count
    requests = sns.requests()
    assert [r.target for r in requests] == ["p.a", "p.c", "p.b"]
    assert {(r.cid, r.req_ts_utc, r.expected) for r in requests} == {("order-17", error.req_ts_utc, 3)}
    # And a further call with that cid is a new fan-out again (nothing is remembered once complete)
    parallel.fan_out(TARGETS, on_target=["cb.each"], on_final=["cb.final"], cid="order-17")
    assert len(sns.requests()) == 6


def test_another_invoker_resumes_from_the_error():
    sns = RefusingSNS(refuse={"p.a", "p.c"})
    error = fail_partly(make(sns))
    sns.refuse.clear()
    other, sqs = make(sns), RecordingSQS()
    other.sqs_client = sqs
    assert other.fan_out(TARGETS, on_target=["cb.each"], on_final=["cb.final"], resume=error) == error.cid
    assert [r.target for r in sns.requests()] == ["p.b", "p.a", "p.c"]
    assert len({r.req_ts_utc for r in sns.requests()}) == 1
    assert sqs.sent == []  # the fan-in's deadline was sent by the first call


def test_resuming_with_other_targets_is_refused():
    sns = RefusingSNS(refuse={"p.b"})
    parallel = make(sns)
    error = fail_partly(parallel)
    with pytest.raises(ConfigurationError, match="same targets"):
        parallel.fan_out({"p.a": {"n": 1}}, on_target=["cb.each"], on_final=["cb.final"], cid=error.cid)


def test_the_deadline_goes_to_the_callback_queue_before_the_targets_and_lists_them_all():
    sns, sqs = RefusingSNS(refuse={"p.b"}), RecordingSQS()
    error = fail_partly(make(sns, sqs))
    (deadline,) = sqs.bodies()
    assert sqs.sent[0]["QueueUrl"] == REPLY_TO
    assert deadline["mediaType"] == "application/vnd.microbus.parallel.deadline"
    assert (deadline["cid"], deadline["req_ts_utc"], deadline["expected"]) == (error.cid, error.req_ts_utc, 3)
    assert deadline["targets"] == ["p.a", "p.b", "p.c"]
    assert (deadline["on_target"], deadline["on_final"]) == (["cb.each"], ["cb.final"])


def test_when_the_deadline_cannot_be_sent_no_target_is_published():
    sns, sqs = RefusingSNS(refuse=set()), RecordingSQS()
    sqs.fail = True
    with pytest.raises(TransportError):
        make(sns, sqs).fan_out(TARGETS, on_final=["cb.final"])
    assert sns.published == []
