"""Runs in the peer virtualenv, where microcosm-pubsub 3.0.0 and microbus are both installed.

Builds a microbus graph the way microbus's documentation says and a microcosm-pubsub graph the way
microcosm-pubsub's does, in one process, and reports which package each component came from; then
produces and handles one message with microbus through the emulator. Prints one JSON object.

Usage: ``side_by_side.py CONFIG_JSON`` (CONFIG_JSON: a microbus graph config; see test_side_by_side.py).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from marshmallow import fields
from microcosm.api import create_object_graph
from microcosm.loaders import load_from_dict

import microbus
from microbus import Outcome, PubSubMessageSchema, handles, schema

MICROBUS_COMPONENTS = ("microbus_sns_producer", "microbus_sqs_consumer", "microbus_sqs_message_dispatcher")
PEER_COMPONENTS = ("sns_producer", "sqs_consumer")  # its sns_topic_arns is a plain dict


@schema
class Ping(PubSubMessageSchema):
    MEDIA_TYPE = "application/vnd.microbus.side-by-side.ping"
    text = fields.String(required=True)


handled: list[dict[str, Any]] = []


@handles(Ping)
def on_ping(content: dict[str, Any]) -> None:
    handled.append(content)


def package_of(component: object) -> str:
    return type(component).__module__.split(".", 1)[0]


def peer_config(config: dict[str, Any]) -> dict[str, Any]:
    """microcosm-pubsub's config for the same endpoint, topic and queue (its own section names)."""
    endpoint = {"endpoint_url": config["aws"]["endpoint_url"], "region_name": config["aws"]["region_name"]}
    return {
        "sns_producer": {**endpoint, "skip": "false"},
        "sns_topic_arns": {"default": config["microbus_sns_topic_arns"]["default"]},
        "sqs_consumer": {
            **endpoint,
            "sqs_queue_url": config["microbus_sqs_consumer"]["sqs_queue_url"],
            "sqs_event": "",
        },
    }


def main(config: dict[str, Any]) -> dict[str, Any]:
    report: dict[str, Any] = {}
    graph = create_object_graph("side_by_side", testing=True, loader=load_from_dict(config))
    report["microbus"] = {name: package_of(getattr(graph, name)) for name in MICROBUS_COMPONENTS}
    peer = create_object_graph("peer", loader=load_from_dict(peer_config(config)))
    report["peer"] = {name: package_of(getattr(peer, name)) for name in PEER_COMPONENTS}
    if set(report["microbus"].values()) != {"microbus"}:
        return report
    producer, consumer, dispatcher = (getattr(graph, name) for name in MICROBUS_COMPONENTS)
    producer.produce(Ping.MEDIA_TYPE, text="hello")
    outcomes = []
    deadline = time.monotonic() + 30
    while not outcomes and time.monotonic() < deadline:  # LocalStack delivers SNS → SQS asynchronously
        outcomes = [dispatcher.handle(message).outcome for message in consumer.consume()]
    report["outcomes"] = [outcome.name for outcome in outcomes]
    report["handled"] = handled
    report["succeeded"] = outcomes == [Outcome.SUCCEEDED]
    try:
        microbus.use_familiar_names()
    except microbus.ConfigurationError as error:
        report["familiar_names"] = str(error)
    else:
        report["familiar_names"] = "accepted"
    return report


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
