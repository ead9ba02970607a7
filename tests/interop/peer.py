"""Interop peer: drives microcosm-pubsub 3.0.0 itself against an SNS/SQS endpoint.

Runs under the peer virtualenv built by ``peer_env.ensure_peer_python`` (never under
microbus's own interpreter). Everything on the wire is produced and consumed by
microcosm-pubsub's public API:

* ``produce``: ``create_object_graph`` + ``graph.sns_producer.produce`` (the real
  ``SNSProducer`` and ``PubSubMessageCodec``); prints ``{"message_ids": [...]}``.
* ``consume``: a ``ConsumerDaemon`` subclass builds the graph exactly as the daemon
  does (``@handles`` registration, ``compute_bound_handlers``) and the loop calls
  ``graph.sqs_message_dispatcher.handle_batch`` (``SQSConsumer`` +
  ``CodecSQSEnvelope`` + ``SQSMessageDispatcher``, which acks/nacks), i.e. what
  ``ConsumerDaemon.__call__`` does on each state-machine tick. One JSON line per
  handled message goes to stdout; every dispatch result goes to stderr.

Exit status: 0 on success (``consume``: exactly ``--expect`` messages handled before
``--timeout``), 1 otherwise, 2 on usage errors.

Logging is sent to stderr so stdout stays machine-readable.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from argparse import Namespace
from typing import Any

from marshmallow import fields
from microcosm.api import binding, create_object_graph
from microcosm.loaders import load_from_dict
from microcosm_pubsub.codecs import PubSubMessageSchema
from microcosm_pubsub.daemon import ConsumerDaemon
from microcosm_pubsub.decorators import handles, schema

ORDER_PLACED = "application/vnd.microbus.order.placed"
PAYMENT_CAPTURED = "application/vnd.microbus.payment.captured"

GRAPH_NAME = "microbus_peer"


class OrderPlacedSchema(PubSubMessageSchema):
    """Reference media type ``application/vnd.microbus.order.placed``."""

    MEDIA_TYPE = ORDER_PLACED

    order_id = fields.String(required=True)


class PaymentCapturedSchema(PubSubMessageSchema):
    """Reference media type ``application/vnd.microbus.payment.captured``."""

    MEDIA_TYPE = PAYMENT_CAPTURED

    order_id = fields.String(required=True)
    amount_cents = fields.Integer(required=True)


REFERENCE_SCHEMAS: dict[str, type[PubSubMessageSchema]] = {
    ORDER_PLACED: OrderPlacedSchema,
    PAYMENT_CAPTURED: PaymentCapturedSchema,
}

FIELD_TYPES: dict[str, type[fields.Field]] = {
    "String": fields.String,
    "Integer": fields.Integer,
    "Float": fields.Float,
    "Boolean": fields.Boolean,
    "Dict": fields.Dict,
    "Raw": fields.Raw,
}


def make_schema(media_type: str, field_types: dict[str, str]) -> type[PubSubMessageSchema]:
    """Build (and register with microcosm-pubsub) a schema class for an ad-hoc media type."""
    attrs: dict[str, Any] = {"MEDIA_TYPE": media_type}
    for name, type_name in field_types.items():
        attrs[name] = FIELD_TYPES[type_name](required=True)
    cls = type(f"AdHocSchema_{len(REFERENCE_SCHEMAS)}", (PubSubMessageSchema,), attrs)
    REFERENCE_SCHEMAS[media_type] = cls
    return cls


def parse_schema_arg(text: str) -> tuple[str, dict[str, str]]:
    """Parse ``MEDIA_TYPE=field:Type,field:Type`` (Type defaults to String)."""
    media_type, _, spec = text.partition("=")
    field_types: dict[str, str] = {}
    for item in filter(None, spec.split(",")):
        name, _, type_name = item.partition(":")
        type_name = type_name or "String"
        if type_name not in FIELD_TYPES:
            raise argparse.ArgumentTypeError(f"unknown field type {type_name!r} in {text!r}")
        field_types[name] = type_name
    return media_type, field_types


def infer_field_types(content: dict[str, Any]) -> dict[str, str]:
    """Map JSON values to marshmallow field types for an ad-hoc produce schema."""
    result: dict[str, str] = {}
    for name, value in content.items():
        if isinstance(value, bool):
            result[name] = "Boolean"
        elif isinstance(value, int):
            result[name] = "Integer"
        elif isinstance(value, float):
            result[name] = "Float"
        elif isinstance(value, str):
            result[name] = "String"
        elif isinstance(value, dict):
            result[name] = "Dict"
        else:
            result[name] = "Raw"
    return result


def common_config(args: Namespace) -> dict[str, Any]:
    """Config shared by both subcommands (logging to stderr, no metrics/sentry)."""
    return {
        "logging": {
            "level": args.log_level,
            "stream_handler": {"stream": "ext://sys.stderr"},
        },
        "health_reporter": {"healthcheck_server_host": "http://127.0.0.1"},
    }


def emit(stream: Any, payload: dict[str, Any]) -> None:
    """Write one JSON line and flush."""
    stream.write(json.dumps(payload, sort_keys=True, default=str) + "\n")
    stream.flush()


# ---------------------------------------------------------------- produce


def cmd_produce(args: Namespace) -> int:
    """Publish ``--count`` messages through microcosm-pubsub's SNSProducer."""
    content = json.loads(args.json_content)
    if not isinstance(content, dict):
        raise SystemExit("--json-content must be a JSON object")
    for media_type, field_types in args.schema:
        make_schema(media_type, field_types)
    wildcard = args.media_type.rpartition(".")[0] + ".*"  # a --schema for it: the registry matches it
    if args.media_type not in REFERENCE_SCHEMAS and wildcard not in REFERENCE_SCHEMAS:
        make_schema(args.media_type, infer_field_types(content))
    for schema_cls in REFERENCE_SCHEMAS.values():
        schema(schema_cls)

    config = common_config(args)
    config.update(
        sns_producer={
            "endpoint_url": args.endpoint_url,
            "region_name": args.region,
            "skip": "false",
        },
        sns_topic_arns={"default": args.topic_arn},
    )
    graph = create_object_graph(name=GRAPH_NAME, loader=load_from_dict(config))
    graph.use("logging", "opaque", "pubsub_message_schema_registry", "sns_topic_arns", "sns_producer")
    graph.lock()

    extra: dict[str, Any] = {}
    if args.uri is not None:
        extra["uri"] = args.uri
    if args.opaque_data is not None:
        extra["opaque_data"] = json.loads(args.opaque_data)

    producer = graph.sns_producer
    message_ids = [producer.produce(args.media_type, dict(content), **extra) for _ in range(args.count)]
    emit(sys.stdout, {"media_type": args.media_type, "message_ids": message_ids})
    return 0


# ---------------------------------------------------------------- consume

HANDLED: list[dict[str, Any]] = []
FAILURES_LEFT = [0]
RELAY: dict[str, Any] = {}
"""``--relay-media-type``: each handled message is published again from inside its handler (``graph.sns_producer``,
so microcosm-pubsub's SQSMessageContext forwards the inbound opaqueData, x-request-ttl included)."""


def record(content: dict[str, Any]) -> bool:
    """Record one decoded message (as a microcosm handler sees it) and print it.

    While ``--fail-first`` failures remain, raise instead, so the dispatcher reports
    FAILED and nacks (ChangeMessageVisibility) the message.
    """
    if FAILURES_LEFT[0] > 0:
        FAILURES_LEFT[0] -= 1
        raise RuntimeError("peer: induced handler failure (--fail-first)")
    body = {k: v for k, v in content.items() if k not in ("media_type", "opaque_data")}
    line = {
        "media_type": content.get("media_type"),
        "content": body,
        "opaque_data": content.get("opaque_data", {}),
    }
    HANDLED.append(line)
    emit(sys.stdout, line)
    return True


def register_handler(media_type: str, schema_cls: type[PubSubMessageSchema]) -> str:
    """Register a ``@handles`` handler class as a graph component; return its binding name."""
    key = "peer_handler_" + "".join(c if c.isalnum() else "_" for c in media_type)

    class Handler:
        """Handler instantiated by SQSMessageHandlerRegistry.find(graph)."""

        def __init__(self, graph: Any) -> None:
            self.graph = graph

        def __call__(self, content: dict[str, Any]) -> bool:
            handled = record(content)
            if RELAY:
                body = {k: v for k, v in content.items() if k not in ("media_type", "opaque_data", "uri")}
                self.graph.sns_producer.produce(RELAY["media_type"], body, uri=content.get("uri"))
            return handled

    Handler.__name__ = Handler.__qualname__ = f"Handler_{key}"
    binding(key)(Handler)
    handles(schema_cls)(Handler)
    return key


class PeerConsumerDaemon(ConsumerDaemon):
    """The real ConsumerDaemon, with the peer's handlers bound and a bounded loop."""

    def __init__(self, handler_keys: list[str]) -> None:
        """Bind ``handler_keys`` (graph components registered via ``@handles``)."""
        super().__init__()
        self.handler_keys = handler_keys

    @property
    def name(self) -> str:
        """Object graph name (also the env-var config prefix, MICROBUS_PEER__...)."""
        return GRAPH_NAME

    @property
    def components(self) -> list[str]:
        """ConsumerDaemon's components plus the peer's handlers."""
        return super().components + self.handler_keys


def cmd_consume(args: Namespace) -> int:
    """Consume through SQSConsumer + SQSMessageDispatcher until ``--expect`` handled or timeout."""
    for media_type, field_types in args.schema:
        make_schema(media_type, field_types)
    handler_keys = [register_handler(mt, cls) for mt, cls in REFERENCE_SCHEMAS.items()]
    FAILURES_LEFT[0] = args.fail_first

    config = common_config(args)
    config.update(
        sqs_consumer={
            "endpoint_url": args.endpoint_url,
            "region_name": args.region,
            "sqs_queue_url": args.queue_url,
            "sqs_event": "",
            "wait_seconds": args.wait_seconds,
            "message_retry_visibility_timeout_seconds": args.retry_visibility_timeout,
        },
        sqs_envelope={"strategy_name": args.envelope},
    )
    keys = list(handler_keys)
    if args.relay_media_type:
        RELAY["media_type"] = args.relay_media_type
        config.update(
            sns_producer={"endpoint_url": args.endpoint_url, "region_name": args.region, "skip": "false"},
            sns_topic_arns={"default": args.relay_topic_arn},
        )
        keys += ["sns_topic_arns", "sns_producer"]
    daemon = PeerConsumerDaemon(keys)
    daemon.args = Namespace(
        debug=False,
        testing=False,
        stdin=False,
        sqs_queue_url=args.queue_url,
        envelope=args.envelope,
    )
    daemon.graph = daemon.create_object_graph(daemon.args, loader=load_from_dict(config))
    dispatcher = daemon.graph.sqs_message_dispatcher

    deadline = time.monotonic() + args.timeout
    while len(HANDLED) < args.expect and time.monotonic() < deadline:
        try:
            results = dispatcher.handle_batch(daemon.bound_handlers)
        except Exception as error:  # noqa: BLE001 - report and keep polling, like error_policy
            emit(sys.stderr, {"event": "batch_error", "error": f"{type(error).__name__}: {error}"})
            time.sleep(0.2)
            continue
        for result in results:
            emit(
                sys.stderr,
                {"event": "result", "media_type": result.media_type, "result": str(result.result)},
            )
    ok = len(HANDLED) == args.expect
    emit(sys.stderr, {"event": "done", "handled": len(HANDLED), "expected": args.expect, "ok": ok})
    return 0 if ok else 1


# ---------------------------------------------------------------- cli


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--endpoint-url", required=True)
        p.add_argument("--region", default="us-east-1")
        p.add_argument("--log-level", default="WARNING")
        p.add_argument(
            "--schema",
            action="append",
            type=parse_schema_arg,
            default=[],
            metavar="MT=field:Type,...",
            help="extra media type schema (types: " + ", ".join(FIELD_TYPES) + ")",
        )

    produce = sub.add_parser("produce", help="publish via SNSProducer")
    common(produce)
    produce.add_argument("--topic-arn", required=True)
    produce.add_argument("--media-type", required=True)
    produce.add_argument("--count", type=int, default=1)
    produce.add_argument("--json-content", required=True, help="JSON object of message fields")
    produce.add_argument("--uri", default=None, help="passed as produce(uri=...)")
    produce.add_argument("--opaque-data", default=None, help="JSON object passed as produce(opaque_data=...)")
    produce.set_defaults(func=cmd_produce)

    consume = sub.add_parser("consume", help="consume via SQSConsumer + SQSMessageDispatcher")
    common(consume)
    consume.add_argument("--queue-url", required=True)
    consume.add_argument("--expect", type=int, required=True)
    consume.add_argument("--timeout", type=float, default=30.0)
    consume.add_argument("--wait-seconds", type=int, default=1, help="SQS long-poll seconds")
    consume.add_argument(
        "--retry-visibility-timeout",
        type=int,
        default=5,
        help="sqs_consumer.message_retry_visibility_timeout_seconds (microcosm default: 5)",
    )
    consume.add_argument(
        "--fail-first",
        type=int,
        default=0,
        help="make the handler raise for the first N deliveries (exercises nack/retry)",
    )
    consume.add_argument(
        "--envelope",
        default="CodecSQSEnvelope",
        help="sqs_envelope.strategy_name (microcosm default: CodecSQSEnvelope)",
    )
    consume.add_argument("--relay-media-type", default=None, help="publish each handled message again, as this")
    consume.add_argument("--relay-topic-arn", default=None, help="the topic of --relay-media-type")
    consume.set_defaults(func=cmd_consume)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
