"""Fan-in and the callback daemon: turn target reports into callback runs, fire on-final callbacks once.

A report (:class:`~microbus.parallel.TargetReport`) is expanded into one
:class:`~microbus.parallel.CallbackInvocation` message per callback name, sent back to the callback
queue: each callback then runs in isolation and is retried or dead-lettered on its own.

For ``fan_out``, the report is first recorded in a DynamoDB item per cid (:class:`FanInStore`):

- A conditional update records each target once. Who recorded it, and who claimed the on-final
  callbacks, is the report's own ``report_id`` (in its body), not the SQS message id: a dead-letter copy
  and its redrive are new SQS messages with the same body, so they can still finish what they started.
- Every invocation of a fan-out carries a ``dedup_key`` (phase, target, callback name) and a fresh
  ``invocation_id``. Before a callback runs, a conditional update lets one invocation id per key run
  (:meth:`FanInStore.claim_run`); another send of the same callback (after a failed
  ``mark_final_sent``, a crash, or two daemons claiming) is acked without running. The retries and the
  redriven dead-letter copy of the winning invocation keep its id, so they run.
- The fan-in lives ``ttl_s`` from the fan-out's start (``req_ts_utc``), not from its first report: a
  report after that is late, logged and acked without being recorded. At that deadline, the
  :class:`~microbus.parallel.FanInDeadline` that ``fan_out`` sent first (and that the daemon re-sends
  with a delay until then) runs the on-final callbacks with the targets that never reported marked.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections.abc import Callable, Iterable
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
    FanInDeadline,
    TargetReport,
    final_payload,
    find_callback,
    missing_payload,
    parse_utc,
)
from microbus.wire.context import bind_cid, unbind_cid
from microbus.wire.schemas import SchemaRegistry
from microbus.wire.transport import SQSTransport, translate_errors

if TYPE_CHECKING:
    from microcosm.object_graph import ObjectGraph

logger = logging.getLogger(__name__)

DEADLINE_CLAIMANT = "deadline"
"""Who claims on-final when a fan-in ends at its deadline."""
MAX_DELAY_S = 900
"""SQS's longest message delay: a deadline further away is re-sent in hops of at most this."""


def dedup_key(phase: str, name: str, target: str | None = None) -> str:
    """The key under which one callback of one fan-in step runs once (see :meth:`FanInStore.claim_run`)."""
    return f"{phase}:{name}" if target is None else f"{phase}:{target}:{name}"


@dataclass(frozen=True)
class FanInState:
    """What the store knows of one cid, as seen by the report of one target."""

    expected: int
    completed: frozenset[str]
    recorded_by: str | None
    final_claimed_by: str | None = None
    final_sent: bool = False
    runs: frozenset[str] = frozenset()
    """Dedup keys of callbacks whose run an invocation claimed (they were sent, and received)."""


@dataclass(frozen=True)
class FanInDecision:
    """What to do with a report: run its on-target callbacks, and/or try to claim the on-final ones."""

    run_on_target: bool
    claim_final: bool


def decide(state: FanInState, *, report_id: str, recorded_now: bool, has_final: bool) -> FanInDecision:
    """Decide from the stored state (pure).

    A target's report counts once: a later report of the same target (another run of the target, another
    send of its report) changes nothing, unless it is a delivery of the very report that recorded it
    (a redelivery, or a redriven dead-letter copy: same ``report_id``). Its on-target invocations then
    go out again and are deduplicated where they run.
    """
    mine = recorded_now or state.recorded_by == report_id
    complete = len(state.completed) >= state.expected
    claimable = state.final_claimed_by in (None, report_id) and not state.final_sent
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
    targets: frozenset[str] = frozenset()
    """The fan-out's target names (known once its deadline was received; empty before)."""
    completed: frozenset[str] = frozenset()

    @property
    def missing(self) -> list[str]:
        """Targets of the fan-out that never reported."""
        return sorted(self.targets - self.completed)


class FanInStore:
    """Fan-in state in a DynamoDB table keyed by ``pk`` (see :class:`~microbus.topology.Table`).

    One item per cid: ``expected``, the string set ``completed``, per target ``result:<target>`` (the
    payload as JSON) and ``by:<target>`` (the ``report_id`` that recorded it), the ``targets`` of the
    fan-out (from its deadline), the on-final claim (``final_claimed_by``, ``final_sent``), and per
    callback run ``run:<dedup key>`` (the invocation id allowed to run it). The whole item is bounded by
    DynamoDB's 400 KB.

    Parameters:
        client: a boto3 DynamoDB client.
        table_name: the table.
        ttl_s: lifetime of a fan-in from its start (``req_ts_utc``): reports after it are late, and at its
            end the on-final callbacks run with the missing targets marked.
        retain_s: how long the item is kept after that (its ``ttl_attribute``), for on-final callbacks
            still being retried.
        clock: epoch seconds now.
    """

    def __init__(
        self,
        *,
        client: Any,
        table_name: str,
        ttl_s: int = 86_400,
        ttl_attribute: str = "expires_at",
        retain_s: int = 86_400,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.table_name = table_name
        self.ttl_s = ttl_s
        self.ttl_attribute = ttl_attribute
        self.retain_s = retain_s
        self.clock = clock
        self._what = f"DynamoDB table {table_name}"

    def deadline(self, req_ts_utc: str) -> float:
        """When the fan-in started at ``req_ts_utc`` ends (epoch seconds); unreadable: ``ttl_s`` from now."""
        started = parse_utc(req_ts_utc)
        return (self.clock() if started is None else started) + self.ttl_s

    def is_late(self, req_ts_utc: str) -> bool:
        """Whether a report of the fan-in started at ``req_ts_utc`` arrives after its end."""
        return self.clock() >= self.deadline(req_ts_utc)

    def _common(self, fan_in: dict[str, Any]) -> tuple[str, dict[str, str], dict[str, Any]]:
        """The SET clauses (and their names and values) every write of the fan-in's header makes."""
        names = {"#exp": "expected", "#src": "source", "#req": "req_ts_utc", "#ot": "on_target", "#of": "on_final"}
        names["#ttl"] = self.ttl_attribute
        values = {
            ":n": {"N": str(fan_in["expected"])},
            ":s": {"S": fan_in["source"]},
            ":rq": {"S": fan_in["req_ts_utc"]},
            ":ot": {"S": json.dumps(fan_in["on_target"])},
            ":of": {"S": json.dumps(fan_in["on_final"])},
            ":ttl": {"N": str(int(self.deadline(fan_in["req_ts_utc"])) + self.retain_s)},
        }
        update = (
            "SET #exp = if_not_exists(#exp, :n), #src = if_not_exists(#src, :s), #req = if_not_exists(#req, :rq), "
            "#ot = if_not_exists(#ot, :ot), #of = if_not_exists(#of, :of), #ttl = if_not_exists(#ttl, :ttl)"
        )
        return update, names, values

    def record(self, report: dict[str, Any], payload: dict[str, Any], *, report_id: str) -> tuple[bool, FanInState]:
        """Record a target's payload once; return whether this call recorded it, and the state after.

        Raises:
            FanInStateError: the item would exceed DynamoDB's item size limit.
            TransportError: DynamoDB could not be reached.
        """
        target = report["target"]
        update, names, values = self._common(report)
        names.update({"#done": "completed", "#r": f"result:{target}", "#b": f"by:{target}"})
        values.update({":r": {"S": json.dumps(payload)}, ":b": {"S": report_id}, ":t": {"S": target}})
        values[":ts"] = {"SS": [target]}
        with translate_errors(self._what):
            try:
                response = self.client.update_item(
                    TableName=self.table_name,
                    Key=self._key(report["cid"]),
                    UpdateExpression=f"{update}, #r = :r, #b = :b ADD #done :ts",
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

    def register(self, deadline: dict[str, Any]) -> FanInState:
        """Record a fan-out's header and target names from its deadline (once); return the state after."""
        update, names, values = self._common(deadline)
        names["#tg"] = "targets"
        values[":tg"] = {"S": json.dumps(sorted(deadline["targets"]))}
        with translate_errors(self._what):
            response = self.client.update_item(
                TableName=self.table_name,
                Key=self._key(deadline["cid"]),
                UpdateExpression=f"{update}, #tg = if_not_exists(#tg, :tg)",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
                ReturnValues="ALL_NEW",
            )
        return self._state(response["Attributes"], None)

    def claim_final(self, cid: str, *, claimant: str, take_over: bool = False) -> bool:
        """Claim the on-final callbacks for ``claimant`` (a report id, or :data:`DEADLINE_CLAIMANT`).

        False when another claimant has them (unless ``take_over``), or they were sent.
        """
        condition = "attribute_exists(pk) AND attribute_not_exists(final_sent)"
        if not take_over:
            condition += " AND (attribute_not_exists(final_claimed_by) OR final_claimed_by = :me)"
        with translate_errors(self._what):
            try:
                self.client.update_item(
                    TableName=self.table_name,
                    Key=self._key(cid),
                    UpdateExpression="SET final_claimed_by = :me",
                    ConditionExpression=condition,
                    ExpressionAttributeValues={":me": {"S": claimant}},
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

    def claim_run(self, cid: str, key: str, *, invocation_id: str) -> bool | None:
        """Let ``invocation_id`` run the callback ``key`` of this fan-in; False when another invocation has it.

        The winner's retries (same invocation id) may run it again. None when nothing is stored for the
        cid (expired): the caller decides.
        """
        with translate_errors(self._what):
            try:
                self.client.update_item(
                    TableName=self.table_name,
                    Key=self._key(cid),
                    UpdateExpression="SET #run = :id",
                    ConditionExpression="attribute_exists(pk) AND (attribute_not_exists(#run) OR #run = :id)",
                    ExpressionAttributeNames={"#run": f"run:{key}"},
                    ExpressionAttributeValues={":id": {"S": invocation_id}},
                )
            except self.client.exceptions.ConditionalCheckFailedException:
                return False if self._get(cid) else None
        return True

    def state(self, cid: str) -> FanInState | None:
        """The stored state of a cid, or None."""
        item = self._get(cid)
        return self._state(item, None) if item else None

    def load(self, cid: str) -> FanInRecord:
        """Everything recorded for a cid.

        Raises:
            FanInStateError: nothing is stored for it (never recorded, or expired).
        """
        item = self._get(cid)
        if not item or "source" not in item:
            raise FanInStateError(f"No fan-in state for cid {cid!r}: it expired or was never recorded")
        results = [json.loads(value["S"]) for name, value in item.items() if name.startswith("result:")]
        return FanInRecord(
            cid=cid,
            source=item["source"]["S"],
            req_ts_utc=item["req_ts_utc"]["S"],
            on_target=json.loads(item["on_target"]["S"]),
            on_final=json.loads(item["on_final"]["S"]),
            results=results,
            targets=frozenset(json.loads(item["targets"]["S"])) if "targets" in item else frozenset(),
            completed=frozenset(item.get("completed", {}).get("SS", [])),
        )

    def _get(self, cid: str) -> dict[str, Any]:
        with translate_errors(self._what):
            response = self.client.get_item(TableName=self.table_name, Key=self._key(cid), ConsistentRead=True)
        return dict(response.get("Item") or {})

    @staticmethod
    def _key(cid: str) -> dict[str, Any]:
        return {"pk": {"S": f"fan-in#{cid}"}}

    @staticmethod
    def _state(item: dict[str, Any], target: str | None) -> FanInState:
        return FanInState(
            expected=int(item["expected"]["N"]),
            completed=frozenset(item.get("completed", {}).get("SS", [])),
            recorded_by=item.get(f"by:{target}", {}).get("S") if target is not None else None,
            final_claimed_by=item.get("final_claimed_by", {}).get("S"),
            final_sent=bool(item.get("final_sent", {}).get("BOOL", False)),
            runs=frozenset(name[len("run:") :] for name in item if name.startswith("run:")),
        )


class CallbackRunner(Middleware):
    """Handlers of the callback queue: expand reports, record fan-in, end fan-ins at their deadline, run callbacks.

    It is also the dispatcher's middleware, to know the SQS message id of the delivery being handled (logs).

    Parameters:
        transport: the callback queue itself (invocations and deadlines are sent back to it).
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
            {
                TargetReport.MEDIA_TYPE: self.handle_report,
                CallbackInvocation.MEDIA_TYPE: self.handle_invocation,
                FanInDeadline.MEDIA_TYPE: self.handle_deadline,
            }
        )

    def before_handle(self, message: SQSMessage) -> None:
        self._delivery.set(message.message_id)

    def _fan_in_store(self) -> FanInStore:
        if self.store is None:
            raise ConfigurationError("A fan-out report arrived but no fan-in table is set: set fan_in_store.table_name")
        return self.store

    def handle_report(self, report: dict[str, Any]) -> bool:
        """Send one invocation per on-target callback and, for fan-out, record the target and maybe fire on-final.

        Order for on-final: claim (by ``report_id``), send the invocations not yet run, mark sent. A retry
        after any step repeats the later ones; the invocations it sends again do not run twice.

        Raises:
            ConfigurationError: a fan-out report arrived but no fan-in table is configured.
            FanInStateError, TransportError: the report is retried.
        """
        payload = {name: report.get(name) for name in PAYLOAD_FIELDS}
        if report.get("expected") is None:
            self._send(report["on_target"], cid=report["cid"], phase=ON_TARGET, payload=payload)
            return True
        store = self._fan_in_store()
        cid, target = report["cid"], report["target"]
        if store.is_late(report["req_ts_utc"]):
            logger.warning(
                "Late report of target %r for cid %r: its fan-in (started %s) ended %d s after its start; not recorded",
                target,
                cid,
                report["req_ts_utc"],
                store.ttl_s,
            )
            return True
        report_id = str(report["report_id"])
        recorded_now, state = store.record(report, payload, report_id=report_id)
        decision = decide(state, report_id=report_id, recorded_now=recorded_now, has_final=bool(report["on_final"]))
        if not decision.run_on_target:
            logger.info("Duplicate report of target %r for cid %r: already counted", target, cid)
        else:
            self._send(report["on_target"], cid=cid, phase=ON_TARGET, payload=payload, target=target, done=state.runs)
        if decision.claim_final and store.claim_final(cid, claimant=report_id):
            self._send(report["on_final"], cid=cid, phase=ON_FINAL, payload=None, done=state.runs)
            store.mark_final_sent(cid)
            logger.info("All %d targets of cid %r finished: on-final callbacks sent", state.expected, cid)
        return True

    def handle_deadline(self, deadline: dict[str, Any]) -> bool:
        """Record the fan-out's targets; until its deadline re-send this with a delay; then end the fan-in.

        At the deadline, unless on-final was sent, it is claimed (taking over a claim that was never
        completed) and sent; the on-final payload marks the targets that never reported.

        Raises:
            ConfigurationError: no fan-in table is configured.
            FanInStateError, TransportError: the deadline is retried.
        """
        store = self._fan_in_store()
        cid = deadline["cid"]
        state = store.register(deadline)
        if state.final_sent:
            return True
        remaining = store.deadline(deadline["req_ts_utc"]) - store.clock()
        if remaining > 0:
            self._send_deadline(deadline, delay_s=min(MAX_DELAY_S, max(1, math.ceil(remaining))))
            return True
        if store.claim_final(cid, claimant=DEADLINE_CLAIMANT, take_over=True):
            self._send(deadline["on_final"], cid=cid, phase=ON_FINAL, payload=None, done=state.runs)
            store.mark_final_sent(cid)
            missing = sorted(set(deadline["targets"]) - state.completed)
            logger.warning(
                "Fan-in of cid %r ended at its deadline (%d s after its start) with %d of %d targets missing (%s): "
                "on-final callbacks sent",
                cid,
                store.ttl_s,
                len(missing),
                len(deadline["targets"]),
                ", ".join(missing) or "none",
            )
        return True

    def handle_invocation(self, invocation: dict[str, Any]) -> Any:
        """Run one named callback with its payload (on-final: built from the fan-in store).

        An invocation of a fan-out runs only if its invocation id holds its dedup key (another send of the
        same callback is acked without running).

        Raises:
            ConfigurationError: no callback is registered under that name (retried, then dead-lettered).
            Whatever the callback raises.
        """
        name = invocation["callback"]
        function = find_callback(name)
        if function is None:
            raise ConfigurationError(f"No callback is registered as {name!r} in this daemon: import its module")
        key, invocation_id = invocation.get("dedup_key"), invocation.get("invocation_id")
        if key and invocation_id and self.store is not None:
            claimed = self.store.claim_run(invocation["cid"], key, invocation_id=invocation_id)
            if claimed is False:
                logger.info(
                    "Callback %r of cid %r (%s) already ran from another invocation: skipped",
                    name,
                    invocation["cid"],
                    key,
                )
                return None
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
        reason = f"no report within {self.store.ttl_s} s of the fan-out's start"
        data = record.results + [
            missing_payload(cid=cid, source=record.source, req_ts_utc=record.req_ts_utc, target=target, reason=reason)
            for target in record.missing
        ]
        return final_payload(
            cid=cid,
            source=record.source,
            req_ts_utc=record.req_ts_utc,
            on_target=record.on_target,
            on_final=record.on_final,
            data=data,
            missing=record.missing,
        )

    def _send(
        self,
        names: Iterable[str],
        *,
        cid: str,
        phase: str,
        payload: dict[str, Any] | None,
        target: str | None = None,
        done: Iterable[str] | None = None,
    ) -> None:
        """Send one invocation per name; with ``done`` (a fan-out), deduplicated, skipping keys already run."""
        codec = self.schema_registry.find(CallbackInvocation.MEDIA_TYPE)
        attributes = {"media_type": {"DataType": "String", "StringValue": CallbackInvocation.MEDIA_TYPE}}
        ran = None if done is None else frozenset(done)
        for name in names:
            extra: dict[str, Any] = {}
            if ran is not None:
                key = dedup_key(phase, name, target)
                if key in ran:
                    continue
                extra = {"dedup_key": key, "invocation_id": uuid.uuid4().hex}
            body = codec.encode(
                callback=name, cid=cid, phase=phase, payload=payload, opaque_data={CID_KEY: cid}, **extra
            )
            self.transport.send(body, attributes)

    def _send_deadline(self, deadline: dict[str, Any], *, delay_s: int) -> None:
        codec = self.schema_registry.find(FanInDeadline.MEDIA_TYPE)
        fields = {name: deadline[name] for name in ("cid", "source", "req_ts_utc", "targets", "on_target", "on_final")}
        body = codec.encode(fields, expected=deadline["expected"], opaque_data={CID_KEY: deadline["cid"]})
        attributes = {"media_type": {"DataType": "String", "StringValue": FanInDeadline.MEDIA_TYPE}}
        with translate_errors(f"SQS queue {self.transport.queue_url}"):
            self.transport.client.send_message(
                QueueUrl=self.transport.queue_url, MessageBody=body, MessageAttributes=attributes, DelaySeconds=delay_s
            )


class CallbackDaemon(ConsumerDaemon):
    """Consumes a callback queue (``--sqs-queue-url``): records fan-in and runs the registered callbacks.

    Subclass it, set ``name``, and import the modules that register your callbacks.
    """

    name: ClassVar[str] = "parallel-callbacks"
    dispatcher_component: ClassVar[str] = "parallel_callback_dispatcher"


@defaults(table_name=None, ttl_s=86_400, ttl_attribute="expires_at", retain_s=86_400)
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
        retain_s=int(config.retain_s),
    )


def configure_parallel_callback_runner(graph: ObjectGraph) -> CallbackRunner:
    """microcosm factory: ``graph.parallel_callback_runner`` for the queue of ``graph.microbus_sqs_consumer``."""
    return CallbackRunner(
        transport=graph.microbus_sqs_consumer.transport,
        schema_registry=graph.microbus_pubsub_message_schema_registry,
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
