"""``x-microbus-reply-to`` comes off the wire: a target daemon reports only to the reply queues it is configured
with; a target naming another queue is dead-lettered without running, with a bounded log line."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from microcosm.api import create_object_graph, load_from_dict

from microbus.consume.dispatch import Action, Outcome, RetryPolicy, SQSMessageDispatcher
from microbus.consume.handlers import HandlerRegistry
from microbus.consume.message import SQSMessage
from microbus.errors import ConfigurationError
from microbus.patterns.parallel import ParallelRequest
from microbus.patterns.reporter import ParallelReporter, ReplyQueues
from microbus.wire.schemas import SchemaRegistry

MEDIA_TYPE = "application/vnd.test.reporter.reply-to"
CALLBACKS = "http://127.0.0.1:4566/123456789012/callbacks"
AWS_CALLBACKS = "https://sqs.eu-west-1.amazonaws.com/111122223333/callbacks"


class RecordingSQS:
    def __init__(self) -> None:
        self.sent: list[dict] = []

    def send_message(self, **kwargs):
        self.sent.append(kwargs)
        return {"MessageId": "sent"}


def message(reply_to: str) -> SQSMessage:
    request = ParallelRequest(
        cid="cid-1", source="evil", target="t", req_ts_utc="2026-01-01T00:00:00.000+00:00",
        reply_to=reply_to, on_target=("cb",),
    )  # fmt: skip
    opaque = request.to_opaque()
    return SQSMessage(
        consumer=None,
        message_id="m-1",
        receipt_handle="r",
        body=json.dumps({"mediaType": MEDIA_TYPE, "opaqueData": opaque}),
        media_type=MEDIA_TYPE,
        content={"media_type": MEDIA_TYPE, "opaque_data": opaque},
    )


def run(reply_to: str, allowed, handler=None):
    calls = []

    def default_handler(content):
        calls.append(content)
        return {"secret": "s3cr3t"}

    sqs = RecordingSQS()
    reporter = ParallelReporter(sqs_client=sqs, schema_registry=SchemaRegistry(), allowed_reply_queues=allowed)
    dispatcher = SQSMessageDispatcher(
        handler_registry=HandlerRegistry({MEDIA_TYPE: handler or default_handler}),
        retry_policy=RetryPolicy(jitter=False),
        middleware=[reporter],
    )
    return dispatcher.handle(message(reply_to)), sqs, calls


def test_a_reply_queue_that_is_allowed_gets_the_report():
    result, sqs, calls = run(CALLBACKS, [CALLBACKS])
    assert result.outcome is Outcome.SUCCEEDED and len(calls) == 1
    assert [kwargs["QueueUrl"] for kwargs in sqs.sent] == [CALLBACKS]


def test_a_reply_queue_that_is_not_allowed_is_dead_lettered_without_running_or_reporting(caplog):
    # Given a target message whose reply-to names a queue this daemon was not configured with
    elsewhere = "http://127.0.0.1:4566/123456789012/attacker-" + "x" * 5_000
    # When it is handled
    with caplog.at_level(logging.WARNING, logger="microbus.patterns.reporter"):
        result, sqs, calls = run(elsewhere, [CALLBACKS])
    # Then the handler did not run, nothing was sent, and the message goes to the DLQ with the reason
    assert calls == [] and sqs.sent == []
    assert result.outcome is Outcome.REJECTED and result.outcome.action is Action.DEAD_LETTER
    assert result.reason == "reply-to-not-allowed"
    # and the log line says why, with the wire value bounded
    (record,) = [r for r in caplog.records if "reply" in r.getMessage()]
    text = record.getMessage()
    assert "parallel_reporter.allowed_reply_queues" in text
    assert len(text) < 1_000 and "5044 chars" in text


def test_an_async_target_with_a_foreign_reply_queue_is_not_run_either():
    calls = []

    async def handler(content):
        calls.append(content)

    sqs = RecordingSQS()
    reporter = ParallelReporter(sqs_client=sqs, schema_registry=SchemaRegistry(), allowed_reply_queues=[CALLBACKS])
    dispatcher = SQSMessageDispatcher(handler_registry=HandlerRegistry({MEDIA_TYPE: handler}), middleware=[reporter])
    result = asyncio.run(dispatcher.handle_async(message("http://127.0.0.1:4566/123456789012/other")))
    assert calls == [] and sqs.sent == []
    assert result.outcome is Outcome.REJECTED and result.reason == "reply-to-not-allowed"


@pytest.mark.parametrize(
    ("allowed", "reply_to", "accepted"),
    [
        (["callbacks"], CALLBACKS, True),
        (["callbacks"], "http://127.0.0.1:4566/123456789012/callbacks-2", False),
        (["arn:aws:sqs:eu-west-1:111122223333:callbacks"], AWS_CALLBACKS, True),
        (["arn:aws:sqs:eu-west-1:999999999999:callbacks"], AWS_CALLBACKS, False),
        (["arn:aws:sqs:us-east-1:111122223333:callbacks"], AWS_CALLBACKS, False),
        ([AWS_CALLBACKS + "/"], AWS_CALLBACKS, True),
        ([CALLBACKS], CALLBACKS + "?x=1", False),
    ],
    ids=["name", "other-name", "arn", "arn-other-account", "arn-other-region", "url-trailing-slash", "url-query"],
)
def test_allowed_reply_queues_are_urls_arns_or_names(allowed, reply_to, accepted):
    result, sqs, _ = run(reply_to, allowed)
    assert (result.outcome is Outcome.SUCCEEDED) is accepted
    assert bool(sqs.sent) is accepted


def test_a_name_matches_only_on_the_host_and_account_of_the_daemons_own_queue():
    reporter = ParallelReporter(
        sqs_client=RecordingSQS(),
        schema_registry=SchemaRegistry(),
        allowed_reply_queues=["callbacks"],
        home_queue_url="https://sqs.eu-west-1.amazonaws.com/111122223333/targets",
    )
    assert reporter.allows(AWS_CALLBACKS)
    assert not reporter.allows("https://sqs.eu-west-1.amazonaws.com/999999999999/callbacks")
    assert not reporter.allows("https://evil.example.com/111122223333/callbacks")


def graph(**config):
    aws = {"endpoint_url": "http://127.0.0.1:1", "access_key_id": "test", "secret_access_key": "test"}
    return create_object_graph("targets", testing=True, loader=load_from_dict({"aws": aws, **config}))


def test_the_graph_allows_the_configured_callback_queue_by_default():
    reporter = graph(parallel={"callback_queue_url": CALLBACKS}).parallel_reporter
    assert reporter.allows(CALLBACKS) and not reporter.allows(AWS_CALLBACKS)


def test_the_graph_takes_an_explicit_list_also_as_comma_separated_text():
    reporter = graph(parallel_reporter={"allowed_reply_queues": f"{CALLBACKS}, other"}).parallel_reporter
    assert reporter.allows(CALLBACKS) and reporter.allows("http://h/1/other") and not reporter.allows("http://h/1/x")


def test_a_target_daemon_without_any_allowed_reply_queue_is_refused_with_one_sentence():
    with pytest.raises(ConfigurationError, match="parallel_reporter.allowed_reply_queues"):
        graph().parallel_reporter  # noqa: B018


def test_localstack_path_style_queue_urls_match_by_name_and_arn():
    home = "http://127.0.0.1:4566/queue/us-east-1/000000000000/fulfilment"
    callbacks = "http://127.0.0.1:4566/queue/us-east-1/000000000000/fulfilment-callbacks"
    assert ReplyQueues(["fulfilment-callbacks"], home_queue_url=home).allows(callbacks)
    assert ReplyQueues(["arn:aws:sqs:us-east-1:000000000000:fulfilment-callbacks"]).allows(callbacks)
    assert not ReplyQueues(["arn:aws:sqs:eu-west-1:000000000000:fulfilment-callbacks"]).allows(callbacks)
    other_account = "http://127.0.0.1:4566/queue/us-east-1/111111111111/fulfilment-callbacks"
    assert not ReplyQueues(["fulfilment-callbacks"], home_queue_url=home).allows(other_account)


def test_a_target_whose_ttl_ran_out_is_reported_as_not_run():
    # Given a target message at the end of its x-request-ttl
    expired = message(CALLBACKS)
    expired.content["opaque_data"] = {**expired.content["opaque_data"], "x-request-ttl": "1"}
    sqs = RecordingSQS()
    reporter = ParallelReporter(sqs_client=sqs, schema_registry=SchemaRegistry(), allowed_reply_queues=[CALLBACKS])
    calls = []
    dispatcher = SQSMessageDispatcher(
        handler_registry=HandlerRegistry({MEDIA_TYPE: calls.append}), middleware=[reporter]
    )
    result = dispatcher.handle(expired)
    # Then it is dropped unrun, and its report says so rather than ok
    assert calls == [] and result.reason == "ttl-expired"
    (report,) = sqs.sent
    body = json.loads(report["MessageBody"])
    assert body["ok"] is False and body["exception"] == "ttl-expired"
