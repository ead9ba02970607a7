"""Fan-in and the callback daemon: turn target reports into callback runs, fire on-final callbacks once.

A report (:class:`~microbus.parallel.TargetReport`) is expanded into one
:class:`~microbus.parallel.CallbackInvocation` message per callback name, sent back to the callback
queue: each callback then runs in isolation and is retried or dead-lettered on its own.

For ``fan_out``, the report is first recorded in a DynamoDB item per cid (:class:`FanInStore`). A
conditional update records each target once; a second conditional update lets exactly one delivery
claim the on-final callbacks, which are sent once every target reported. The claim is tied to the SQS
message id, so only a redelivery of the same report (after a crash) may send them again.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from microcosm.api import defaults

from microbus.consume.daemon import ConsumerDaemon
from microbus.consume.dispatch import Middleware, RetryPolicy, SQSMessageDispatcher
from microbus.consume.handlers import HandlerRegistry
from microbus.consume.message import SQSMessage
from microbus.errors import ConfigurationError, FanInStateError
from microbus.patterns.parallel import (
    CID_KEY,
    ON_FINAL,
    ON_TARGET,
    PAYLOAD_FIELDS,
    CallbackInvocation,
    TargetReport,
    bind_cid,
    final_payload,
    find_callback,
    unbind_cid,
)
from microbus.wire.schemas import SchemaRegistry
from microbus.wire.transport import SQSTransport, translate_errors

if TYPE_CHECKING:
    from microcosm.object_graph import ObjectGraph

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FanInState:
    """What the store knows of one cid, as seen by the report of one target."""

    expected: int
    completed: frozenset[str]
    recorded_by: str | None
    final_claimed_by: str | None = None
    final_sent: bool = False


@dataclass(frozen=True)
class FanInDecision:
    """What to do with a report: run its on-target callbacks, and/or try to claim the on-final ones."""

    run_on_target: bool
    claim_final: bool


def decide(state: FanInState, *, delivery_id: str, recorded_now: bool, has_final: bool) -> FanInDecision:
    """Decide from the stored state (pure).

    A target's report counts once: a later report of the same target (another delivery, another
    run of the target) changes nothing, unless it is a redelivery of the very report that recorded it.
    """
    mine = recorded_now or state.recorded_by == delivery_id
    complete = len(state.completed) >= state.expected
    claimable = state.final_claimed_by in (None, delivery_id) and not state.final_sent
    return FanInDecision(run_on_target=mine, claim_final=has_final and complete and claimable)


@dataclass(frozen=True)
class FanInRecord:
    """Everything stored for a cid, to build the on-final payload."""

    cid: str
    source: str
    req_ts_utc: str
    on_target: list[str]
    on_final: list[str]
    results: list[dict[str, Any]]


class FanInStore:
    """Fan-in state in a DynamoDB table keyed by ``pk`` (see :class:`~microbus.topology.Table`).

    One item per cid: ``expected``, the string set ``completed``, and per target ``result:<target>``
    (the payload as JSON) and ``by:<target>`` (the SQS message id that recorded it). The whole item is
    bounded by DynamoDB's 400 KB.

    Parameters:
        client: a boto3 DynamoDB client.
        table_name: the table.
        ttl_s: lifetime of an item, written to ``ttl_attribute`` (epoch seconds).
    """

    def __init__(self, *, client: Any, table_name: str, ttl_s: int = 86_400, ttl_attribute: str = "expires_at") -> None:
        self.client = client
        self.table_name = table_name
        self.ttl_s = ttl_s
        self.ttl_attribute = ttl_attribute
        self._what = f"DynamoDB table {table_name}"

    def record(self, report: dict[str, Any], payload: dict[str, Any], *, delivery_id: str) -> tuple[bool, FanInState]:
        """Record a target's payload once; return whether this call recorded it, and the state after.

        Raises:
            FanInStateError: the item would exceed DynamoDB's item size limit.
            TransportError: DynamoDB could not be reached.
        """
        target = report["target"]
        names = {"#exp": "expected", "#src": "source", "#req": "req_ts_utc", "#ot": "on_target", "#of": "on_final"}
        names.update({"#ttl": self.ttl_attribute, "#done": "completed", "#r": f"result:{target}", "#b": f"by:{target}"})
        values = {
            ":n": {"N": str(report["expected"])},
            ":s": {"S": report["source"]},
            ":rq": {"S": report["req_ts_utc"]},
            ":ot": {"S": json.dumps(report["on_target"])},
            ":of": {"S": json.dumps(report["on_final"])},
            ":ttl": {"N": str(int(time.time()) + self.ttl_s)},
            ":r": {"S": json.dumps(payload)},
            ":b": {"S": delivery_id},
            ":t": {"S": target},
            ":ts": {"SS": [target]},
        }
        update = (
            "SET #exp = if_not_exists(#exp, :n), #src = if_not_exists(#src, :s), #req = if_not_exists(#req, :rq), "
            "#ot = if_not_exists(#ot, :ot), #of = if_not_exists(#of, :of), #ttl = if_not_exists(#ttl, :ttl), "
            "#r = :r, #b = :b ADD #done :ts"
        )
        with translate_errors(self._what):
            try:
                response = self.client.update_item(
                    TableName=self.table_name,
                    Key=self._key(report["cid"]),
                    UpdateExpression=update,
                    ConditionExpression="attribute_not_exists(#done) OR NOT contains(#done, :t)",
                    ExpressionAttributeNames=names,
                    ExpressionAttributeValues=values,
                    ReturnValues="ALL_NEW",
                )
            except self.client.exceptions.ConditionalCheckFailedException:
                return False, self._state(self._get(report["cid"]), target)
            except self.client.exceptions.ClientError as exc:
                if "size" not in str(exc).lower():
                    raise
                raise FanInStateError(
                    f"Fan-in results of cid {report['cid']!r} exceed DynamoDB's 400 KB item limit: "
                    "return smaller responses (e.g. references to S3 objects)"
                ) from exc
        return True, self._state(response["Attributes"], target)

    def claim_final(self, cid: str, *, delivery_id: str) -> bool:
        """Claim the on-final callbacks for this delivery; False when another delivery has them, or they were sent."""
        with translate_errors(self._what):
            try:
                self.client.update_item(
                    TableName=self.table_name,
                    Key=self._key(cid),
                    UpdateExpression="SET final_claimed_by = :me",
                    ConditionExpression=(
                        "attribute_exists(pk) AND (attribute_not_exists(final_claimed_by) OR final_claimed_by = :me) "
                        "AND attribute_not_exists(final_sent)"
                    ),
                    ExpressionAttributeValues={":me": {"S": delivery_id}},
                )
            except self.client.exceptions.ConditionalCheckFailedException:
                return False
        return True

    def mark_final_sent(self, cid: str) -> None:
        """Record that the on-final callbacks were sent."""
        with translate_errors(self._what):
            self.client.update_item(
                TableName=self.table_name,
                Key=self._key(cid),
                UpdateExpression="SET final_sent = :true",
                ExpressionAttributeValues={":true": {"BOOL": True}},
            )

    def load(self, cid: str) -> FanInRecord:
        """Everything recorded for a cid.

        Raises:
            FanInStateError: nothing is stored for it (never recorded, or expired).
        """
        item = self._get(cid)
        if not item:
            raise FanInStateError(f"No fan-in state for cid {cid!r}: it expired or was never recorded")
        results = [json.loads(value["S"]) for name, value in item.items() if name.startswith("result:")]
        return FanInRecord(
            cid=cid,
            source=item["source"]["S"],
            req_ts_utc=item["req_ts_utc"]["S"],
            on_target=json.loads(item["on_target"]["S"]),
            on_final=json.loads(item["on_final"]["S"]),
            results=results,
        )

    def _get(self, cid: str) -> dict[str, Any]:
        with translate_errors(self._what):
            response = self.client.get_item(TableName=self.table_name, Key=self._key(cid), ConsistentRead=True)
        return dict(response.get("Item") or {})

    @staticmethod
    def _key(cid: str) -> dict[str, Any]:
        return {"pk": {"S": f"fan-in#{cid}"}}

    @staticmethod
    def _state(item: dict[str, Any], target: str) -> FanInState:
        return FanInState(
            expected=int(item["expected"]["N"]),
            completed=frozenset(item.get("completed", {}).get("SS", [])),
            recorded_by=item.get(f"by:{target}", {}).get("S"),
            final_claimed_by=item.get("final_claimed_by", {}).get("S"),
            final_sent=bool(item.get("final_sent", {}).get("BOOL", False)),
        )


class CallbackRunner(Middleware):
    """Handlers of the callback queue: expand reports, record fan-in, run the named callbacks.

    It is also the dispatcher's middleware, to know the SQS message id of the delivery being handled.

    Parameters:
        transport: the callback queue itself (invocations are sent back to it).
        schema_registry: encodes invocations.
        store: fan-in state; None when this application only uses ``invoke``.
    """

    def __init__(self, *, transport: SQSTransport, schema_registry: SchemaRegistry, store: FanInStore | None) -> None:
        self.transport = transport
        self.schema_registry = schema_registry
        self.store = store
        self._delivery: ContextVar[str | None] = ContextVar(f"microbus_delivery_{id(self)}", default=None)

    def handler_registry(self) -> HandlerRegistry:
        """The callback queue's handlers by media type."""
        return HandlerRegistry(
            {TargetReport.MEDIA_TYPE: self.handle_report, CallbackInvocation.MEDIA_TYPE: self.handle_invocation}
        )

    def before_handle(self, message: SQSMessage) -> None:
        self._delivery.set(message.message_id)

    def handle_report(self, report: dict[str, Any]) -> bool:
        """Send one invocation per on-target callback and, for fan-out, record the target and maybe fire on-final.

        Raises:
            ConfigurationError: a fan-out report arrived but no fan-in table is configured.
            FanInStateError, TransportError: the report is retried.
        """
        payload = {name: report.get(name) for name in PAYLOAD_FIELDS}
        if report.get("expected") is None:
            self._send(report["on_target"], cid=report["cid"], phase=ON_TARGET, payload=payload)
            return True
        if self.store is None:
            raise ConfigurationError("A fan-out report arrived but no fan-in table is set: set fan_in_store.table_name")
        delivery_id = self._delivery.get()
        if delivery_id is None:
            raise ConfigurationError("CallbackRunner must be in its dispatcher's middleware to handle fan-out reports")
        recorded_now, state = self.store.record(report, payload, delivery_id=delivery_id)
        decision = decide(state, delivery_id=delivery_id, recorded_now=recorded_now, has_final=bool(report["on_final"]))
        if not decision.run_on_target:
            logger.info("Duplicate report of target %r for cid %r: already counted", report["target"], report["cid"])
        else:
            self._send(report["on_target"], cid=report["cid"], phase=ON_TARGET, payload=payload)
        if decision.claim_final and self.store.claim_final(report["cid"], delivery_id=delivery_id):
            self._send(report["on_final"], cid=report["cid"], phase=ON_FINAL, payload=None)
            self.store.mark_final_sent(report["cid"])
            logger.info("All %d targets of cid %r finished: on-final callbacks sent", state.expected, report["cid"])
        return True

    def handle_invocation(self, invocation: dict[str, Any]) -> Any:
        """Run one named callback with its payload (on-final: built from the fan-in store).

        Raises:
            ConfigurationError: no callback is registered under that name (retried, then dead-lettered).
            Whatever the callback raises.
        """
        name = invocation["callback"]
        function = find_callback(name)
        if function is None:
            raise ConfigurationError(f"No callback is registered as {name!r} in this daemon: import its module")
        payload = invocation.get("payload")
        if invocation["phase"] == ON_FINAL:
            payload = self._final_payload(invocation["cid"])
        token = bind_cid(invocation["cid"])
        try:
            return function(dict(payload or {}))
        finally:
            unbind_cid(token)

    def _final_payload(self, cid: str) -> dict[str, Any]:
        if self.store is None:
            raise ConfigurationError("An on-final callback needs a fan-in table: set fan_in_store.table_name")
        record = self.store.load(cid)
        return final_payload(
            cid=cid,
            source=record.source,
            req_ts_utc=record.req_ts_utc,
            on_target=record.on_target,
            on_final=record.on_final,
            data=record.results,
        )

    def _send(self, names: Iterable[str], *, cid: str, phase: str, payload: dict[str, Any] | None) -> None:
        codec = self.schema_registry.find(CallbackInvocation.MEDIA_TYPE)
        attributes = {"media_type": {"DataType": "String", "StringValue": CallbackInvocation.MEDIA_TYPE}}
        for name in names:
            body = codec.encode(callback=name, cid=cid, phase=phase, payload=payload, opaque_data={CID_KEY: cid})
            self.transport.send(body, attributes)


class CallbackDaemon(ConsumerDaemon):
    """Consumes a callback queue (``--sqs-queue-url``): records fan-in and runs the registered callbacks.

    Subclass it, set ``name``, and import the modules that register your callbacks.
    """

    name: ClassVar[str] = "parallel-callbacks"
    dispatcher_component: ClassVar[str] = "parallel_callback_dispatcher"


@defaults(table_name=None, ttl_s=86_400, ttl_attribute="expires_at")
def configure_fan_in_store(graph: ObjectGraph) -> FanInStore:
    """microcosm factory: ``graph.fan_in_store``, reading ``fan_in_store.table_name``.

    Raises:
        ConfigurationError: no table name is configured.
    """
    config = graph.config.fan_in_store
    if not config.table_name:
        raise ConfigurationError("No fan-in table configured: set fan_in_store.table_name")
    return FanInStore(
        client=graph.dynamodb_client,
        table_name=config.table_name,
        ttl_s=int(config.ttl_s),
        ttl_attribute=config.ttl_attribute,
    )


def configure_parallel_callback_runner(graph: ObjectGraph) -> CallbackRunner:
    """microcosm factory: ``graph.parallel_callback_runner`` for the queue of ``graph.sqs_consumer``."""
    return CallbackRunner(
        transport=graph.sqs_consumer.transport,
        schema_registry=graph.pubsub_message_schema_registry,
        store=graph.fan_in_store if graph.config.fan_in_store.table_name else None,
    )


@defaults(backoff_base_s=1.0, backoff_max_s=300.0, max_attempts=None)
def configure_parallel_callback_dispatcher(graph: ObjectGraph) -> SQSMessageDispatcher:
    """microcosm factory: ``graph.parallel_callback_dispatcher``, the callback daemon's dispatcher."""
    config = graph.config.parallel_callback_dispatcher
    runner = graph.parallel_callback_runner
    return SQSMessageDispatcher(
        handler_registry=runner.handler_registry(),
        retry_policy=RetryPolicy(
            base_s=float(config.backoff_base_s),
            max_s=float(config.backoff_max_s),
            max_attempts=int(config.max_attempts) if config.max_attempts else None,
        ),
        source=graph.metadata.name,
        middleware=[runner],
    )
