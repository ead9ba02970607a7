"""`microbus produce MEDIA_TYPE [JSON | -]`: validate against the registered schema, publish, print the ids."""

from __future__ import annotations

import importlib
import json
import sys
from typing import IO, Any

import click

from microbus.cli.common import CONTEXT_SETTINGS, REFERENCE_TOPOLOGY, TOPOLOGY_HELP, InputError, aws_options
from microbus.errors import CodecError, ConfigurationError, MicrobusError, TransportError
from microbus.ops import inspect
from microbus.produce.producer import OutgoingMessage, SNSProducer, TopicArns
from microbus.topology import resolve_topology
from microbus.wire.sanitize import log_repr
from microbus.wire.schemas import SchemaRegistry
from microbus.wire.transport import AWSSettings, SNSTransport


@click.command(context_settings=CONTEXT_SETTINGS)
@click.argument("media_type")
@click.argument("content", required=False)
@click.option("--file", "file_", type=click.File("r", encoding="utf-8"), help="One JSON object per line ('-': stdin).")
@click.option("--schemas", "schema_modules", multiple=True, help="Import this module to register schemas (repeatable).")
@click.option("--topic", help="Topic name or ARN; default: the topology's topic for the media type.")
@click.option("--topology", "reference", default=REFERENCE_TOPOLOGY, show_default=True, help=TOPOLOGY_HELP)
@click.option("--message-group-id", help="Message group of a FIFO topic.")
@aws_options
def produce(
    media_type: str,
    content: str | None,
    file_: IO[str] | None,
    schema_modules: tuple[str, ...],
    topic: str | None,
    reference: str,
    message_group_id: str | None,
    settings: AWSSettings,
) -> None:
    """Publish a MEDIA_TYPE message with CONTENT (a JSON object, or - to read one from stdin); print its id.

    Every message is validated against the schema registered for MEDIA_TYPE before any is published.
    """
    contents = _contents(content, file_)
    for module in schema_modules:
        _import(module)
    topology = None if topic else resolve_topology(reference)  # a module topology registers its schemas
    registry = SchemaRegistry()
    if media_type not in registry:
        raise InputError(
            f"No schema is registered for media type {log_repr(media_type)}: import the module that declares it "
            "with --schemas MODULE"
        )
    codec = registry.find(media_type)
    for where, fields in contents:
        _validated(lambda fields=fields: codec.encode(fields), where)
    sns = settings.client("sns")
    if topology is not None:
        topic = topology.topic_for(media_type)
        if topic is None:
            raise InputError(f"The topology {reference!r} has no topic for {media_type!r}: pass --topic")
    assert topic is not None
    arn = topic if topic.startswith("arn:") else inspect.topic_arn(sns, topic)
    producer = SNSProducer(transport=SNSTransport(client=sns), schema_registry=registry, topic_arns=TopicArns(arn))
    messages = [
        _validated(lambda f=f: producer.create_message(media_type, f, message_group_id=message_group_id), where)
        for where, f in contents
    ]
    _publish(producer, messages)


def _contents(content: str | None, file_: IO[str] | None) -> list[tuple[str, dict[str, Any]]]:
    """The messages' fields, each with where it came from (for errors)."""
    if (content is None) == (file_ is None):
        raise click.UsageError("give the message as a JSON argument, '-' for stdin, or --file (one of them)")
    if file_ is not None:
        name = "standard input" if file_.name == "<stdin>" else file_.name
        try:
            lines = file_.read().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"Cannot read {name}: {exc}") from exc
        parsed = [
            (f"line {n} of {name}", _object(line, f"line {n} of {name}"))
            for n, line in enumerate(lines, 1)
            if line.strip()
        ]
        if not parsed:
            raise InputError(f"{name} has no messages: give one JSON object per line")
        return parsed
    assert content is not None
    if content == "-":
        return [("standard input", _object(sys.stdin.read(), "standard input"))]
    return [("the JSON argument", _object(content, "the JSON argument"))]


def _object(text: str, where: str) -> dict[str, Any]:
    if not text.strip():
        raise InputError(f"{where[0].upper()}{where[1:]} is empty: give a JSON object")
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InputError(f"{where[0].upper()}{where[1:]} is not JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise InputError(f"{where[0].upper()}{where[1:]} is a JSON {type(value).__name__}, not an object")
    return value


def _import(module: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise InputError(f"Cannot import the schemas module {module!r} ({exc})") from exc


def _validated(build: Any, where: str) -> Any:
    try:
        return build()
    except (CodecError, ConfigurationError) as exc:  # invalid, too large, no group id for a FIFO topic
        raise InputError(f"The message in {where} is not valid: {str(exc).rstrip('.')}; nothing was published") from exc


def _publish(producer: SNSProducer, messages: list[OutgoingMessage]) -> None:
    """Publish one by one, printing each id as SNS confirms it."""
    for done, message in enumerate(messages):
        try:
            click.echo(producer.publish(message))
        except TransportError as exc:
            if not done:
                raise
            raise MicrobusError(
                f"{done} of {len(messages)} message(s) published (their ids above); message {done + 1} failed: {exc}"
            ) from exc
