"""The generated IAM policies grant every AWS call microbus makes.

Runs an idempotent target daemon (consumer, idempotency store, reporter), a callback daemon (fan-in store) and
an invoker against the emulator, records every boto3 operation each one's clients make, and checks each against
``iam_policy`` of that principal in a topology declared like an application would.
"""

from __future__ import annotations

import fnmatch
import threading
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import pytest
from marshmallow import fields
from microbus.reference.daemons import reference
from microcosm.api import create_object_graph, load_from_dict

from microbus import PubSubMessageSchema, Worker, schema
from microbus.consume.dispatch import RetryPolicy, SQSMessageDispatcher
from microbus.consume.handlers import HandlerRegistry
from microbus.errors import Nack
from microbus.patterns.fanin import CallbackDaemon
from microbus.patterns.parallel import callback, register_target
from microbus.testing import wait_for
from microbus.topology import Daemon, Producer, Queue, Subscription, Table, Topic, Topology, apply_topology
from microbus.topology.policy import ArnBuilder, iam_policy

pytestmark = pytest.mark.integration


@schema
class IamJob(PubSubMessageSchema):
    MEDIA_TYPE = "application/vnd.test.iam.job"

    n = fields.Integer(required=True)


for _name in ("iam.one", "iam.two", "iam.three"):
    register_target(_name, IamJob)

_lock = threading.Lock()
finals: list[dict[str, Any]] = []
attempts: dict[int, int] = {}


@callback("test.iam.each")
def each(payload: dict[str, Any]) -> None:
    pass


@callback("test.iam.final")
def final(payload: dict[str, Any]) -> None:
    with _lock:
        finals.append(payload)


def job(content: dict[str, Any]) -> dict[str, Any]:
    n = content["n"]
    with _lock:
        attempts[n] = attempts.get(n, 0) + 1
        first = attempts[n] == 1
    if n == 1:
        raise RuntimeError("target 1 always fails")  # reported, acked; the claim is released (DeleteItem)
    if n == 2 and first:
        raise Nack(0)  # retried (ChangeMessageVisibility), the claim released
    return {"n": n}


@dataclass(frozen=True)
class Call:
    principal: str
    action: str
    resource: str


BATCH_ACTIONS = {
    "sqs:DeleteMessageBatch": "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibilityBatch": "sqs:ChangeMessageVisibility",
    "sqs:SendMessageBatch": "sqs:SendMessage",
    "sns:PublishBatch": "sns:Publish",
}


class Recorder:
    """Records the IAM action and resource of every operation of the clients it watches."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self._lock = threading.Lock()

    def watch(self, principal: str, *clients: Any) -> None:
        for client in clients:
            client.meta.events.register("before-parameter-build", self._handler(principal))

    def _handler(self, principal: str) -> Any:
        def record(params: dict[str, Any], model: Any, **_: Any) -> None:
            self._record(principal, model, params)

        return record

    def _record(self, principal: str, model: Any, params: dict[str, Any]) -> None:
        prefix = model.service_model.endpoint_prefix
        action = f"{prefix}:{model.name}"
        call = Call(principal, BATCH_ACTIONS.get(action, action), resource_of(prefix, params))
        with self._lock:
            self.calls.append(call)


def resource_of(prefix: str, params: dict[str, Any]) -> str:
    if prefix == "sqs":
        name = params.get("QueueName") or str(params["QueueUrl"]).rstrip("/").rsplit("/", 1)[-1]
        return f"arn:aws:sqs:{REGION}:{ACCOUNT}:{name}"
    if prefix == "dynamodb":
        return f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{params['TableName']}"
    if prefix == "sns":
        return str(params["TopicArn"])
    raise AssertionError(f"unexpected service {prefix}: {params}")


REGION, ACCOUNT = "us-east-1", "123456789012"


def granted(policy: dict[str, Any], call: Call) -> bool:
    return any(
        call.action in statement["Action"] and any(fnmatch.fnmatchcase(call.resource, r) for r in statement["Resource"])
        for statement in policy["Statement"]
    )


@pytest.fixture
def app(microbus_endpoint) -> Iterator[tuple[Topology, dict[str, str], Any]]:
    u = uuid.uuid4().hex[:8]
    names = {
        "topic": f"iam-{u}",
        "targets": f"iam-t-{u}",
        "callbacks": f"iam-cb-{u}",
        "idem": f"iam-idem-{u}",
        "fanin": f"iam-fanin-{u}",
    }
    topology = Topology(
        topics=(Topic(name=names["topic"], media_types=(IamJob,)),),
        queues=(
            Queue(name=names["targets"], max_receive_count=3, subscriptions=(Subscription(topic=names["topic"]),)),
            Queue(name=names["callbacks"], max_receive_count=3),
        ),
        tables=(Table(name=names["idem"]), Table(name=names["fanin"])),
        daemons=(
            Daemon(name="iam-target", queue=names["targets"], sends_to=(names["callbacks"],), tables=(names["idem"],)),
            # the callback daemon sends invocations back to its own queue
            Daemon(
                name="iam-callbacks",
                queue=names["callbacks"],
                sends_to=(names["callbacks"],),
                tables=(names["fanin"],),
            ),
        ),
        # fan_out sends the fan-in's deadline to the callback queue
        producers=(Producer(name="iam-invoker", produces=(IamJob,), sends_to=(names["callbacks"],)),),
    )
    settings = microbus_endpoint.settings()
    applied = apply_topology(
        topology, sns=settings.client("sns"), sqs=settings.client("sqs"), dynamodb=settings.client("dynamodb")
    )
    yield topology, names, applied


def test_every_call_of_the_stores_the_reporter_and_the_consumers_is_granted_by_the_policy(microbus_endpoint, app):
    topology, names, applied = app
    recorder = Recorder()
    callbacks_url, targets_url = applied.queue_urls[names["callbacks"]], applied.queue_urls[names["targets"]]
    base = microbus_endpoint.config()
    # Given an idempotent target daemon that reports to the callback queue
    target = create_object_graph(
        "iam-target",
        testing=True,
        loader=load_from_dict(
            {
                **base,
                "microbus_sqs_consumer": {"sqs_queue_url": targets_url, "wait_seconds": 1},
                "parallel_reporter": {"allowed_reply_queues": [callbacks_url]},
                "idempotency_guard": {"table_name": names["idem"], "lease_s": 60},
            }
        ),
    )
    recorder.watch("iam-target", target.sqs_client, target.dynamodb_client)
    target.idempotency_guard.check_store()  # the start-time probe
    dispatcher = SQSMessageDispatcher(
        handler_registry=HandlerRegistry({IamJob.MEDIA_TYPE: job}, idempotent=[IamJob.MEDIA_TYPE]),
        retry_policy=RetryPolicy(base_s=0.2, jitter=False),
        source="iam-target",
        middleware=[target.parallel_reporter, target.idempotency_guard],
    )
    # and a callback daemon with a fan-in table, and an invoker
    callbacks = CallbackDaemon(
        **base,
        microbus_sqs_consumer={"sqs_queue_url": callbacks_url, "wait_seconds": 1},
        fan_in_store={"table_name": names["fanin"]},
        parallel_callback_dispatcher={"backoff_base_s": 0.2},
    )
    recorder.watch("iam-callbacks", callbacks.graph.sqs_client, callbacks.graph.dynamodb_client)
    invoker = create_object_graph(
        "iam-invoker",
        testing=True,
        loader=load_from_dict(
            {
                **base,
                "microbus_sns_topic_arns": {"default": applied.topic_arns[names["topic"]]},
                "parallel": {"callback_queue_url": callbacks_url},
            }
        ),
    )
    recorder.watch("iam-invoker", invoker.sns_client, invoker.sqs_client)
    with ExitStack() as stack:
        workers = [Worker(consumer=target.microbus_sqs_consumer, dispatcher=dispatcher), callbacks.create_worker()]
        for worker in workers:
            worker.start()
            stack.callback(worker.join)
            stack.callback(worker.stop)
        # When targets fan out (one fails, one is retried), one is delivered twice, and a poison message arrives
        cid = invoker.parallel.fan_out(
            {"iam.one": {"n": 1}, "iam.two": {"n": 2}, "iam.three": {"n": 3}},
            on_target=["test.iam.each"],
            on_final=["test.iam.final"],
        )
        twice = invoker.microbus_sns_producer.create_message(IamJob.MEDIA_TYPE, {"n": 4})
        invoker.microbus_sns_producer.publish(twice)
        invoker.microbus_sns_producer.publish(twice)
        microbus_endpoint.settings().client("sqs").send_message(QueueUrl=targets_url, MessageBody="not json")
        wait_for(lambda: any(p["cid"] == cid for p in finals), timeout_s=30, what="the final callback")
        wait_for(lambda: workers[0].stats.dead_lettered >= 1 and workers[0].stats.handled >= 5, timeout_s=30)
    # Then every call was allowed by its principal's policy
    denied = sorted(
        {c for c in recorder.calls if not granted(iam_policy(topology, c.principal, arns=ArnBuilder()), c)},
        key=str,
    )
    assert denied == []
    # and the run exercised what matters (so the check is not vacuous)
    made = {(c.principal, c.action) for c in recorder.calls}
    for action in ("dynamodb:PutItem", "dynamodb:GetItem", "dynamodb:DeleteItem"):
        assert ("iam-target", action) in made
    assert ("iam-target", "sqs:SendMessage") in made  # reports, and the dead letter
    assert ("iam-target", "sqs:ChangeMessageVisibility") in made
    assert ("iam-callbacks", "dynamodb:UpdateItem") in made and ("iam-callbacks", "sqs:SendMessage") in made


def test_the_reference_fulfilment_daemon_may_report_to_its_callback_queue():
    policy = iam_policy(reference.TOPOLOGY, "fulfilment", arns=ArnBuilder())
    call = Call("fulfilment", "sqs:SendMessage", "arn:aws:sqs:eu-west-1:1:fulfilment-callbacks")
    assert granted(policy, call)


def test_an_idempotent_daemon_may_put_and_delete_items_of_its_tables():
    topology = Topology(
        queues=(Queue(name="q"),),
        tables=(Table(name="idem"),),
        daemons=(Daemon(name="d", queue="q", tables=("idem",)),),
    )
    policy = iam_policy(topology, "d", arns=ArnBuilder())
    for action in ("dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:DeleteItem", "dynamodb:UpdateItem"):
        assert granted(policy, Call("d", action, "arn:aws:dynamodb:eu-west-1:1:table/idem"))
