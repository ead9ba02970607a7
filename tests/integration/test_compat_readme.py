"""microcosm-pubsub's README examples (../shared/reference/microcosm-pubsub-readme.txt), with only their imports
changed from ``microcosm_pubsub`` to ``microbus.compat``, run against the emulator. What the README leaves to
the reader (the graph, the media type, ``process``, the collaborator) is supplied around them, marked "glue"."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from microcosm.api import create_object_graph, load_from_dict

from microbus.testing import wait_for

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_validation_producing_and_consuming_examples(make_queue):
    # README "Validation" (imports changed)
    from marshmallow import fields

    from microbus.compat.codecs import PubSubMessageSchema
    from microbus.compat.decorators import schema

    class ExampleSchema(PubSubMessageSchema):
        message = fields.String(required=True)

        def deserialize_media_type(self, obj):
            return "application/vnd.globality.pubsub.example"

    # glue: a media type for it, a graph on the emulator, content
    ExampleSchema.MEDIA_TYPE = "application/vnd.globality.pubsub.example"
    schema(ExampleSchema)

    @schema
    class FooBar(PubSubMessageSchema):
        MEDIA_TYPE = "application/vnd.globality.pubsub.foobar"
        foo = fields.String()
        bar = fields.String()

    queue = make_queue()
    graph = create_object_graph("readme", testing=True, loader=load_from_dict(queue.graph_config()))
    media_type, message_content = ExampleSchema.MEDIA_TYPE, dict(message="hello")
    processed = []
    process = processed.append

    # README "Producing Messages"
    message_id = graph.sns_producer.produce(media_type, message_content)
    assert message_id
    media_type = FooBar.MEDIA_TYPE
    message_id = graph.sns_producer.produce(media_type, dict(foo="bar"), bar="baz")

    # README "Consuming Messages" (twice: explicit ack, then the context manager)
    messages = wait_for(graph.sqs_consumer.consume, what="the first message")
    for message in messages:
        process(message.content)
        message.ack()
    messages = [] if len(processed) == 2 else wait_for(graph.sqs_consumer.consume, what="the second message")
    for message in messages:
        with message:
            process(message.content)

    by_media_type = {content.pop("media_type"): content for content in processed}
    assert set(by_media_type) == {ExampleSchema.MEDIA_TYPE, FooBar.MEDIA_TYPE}
    assert by_media_type[ExampleSchema.MEDIA_TYPE]["message"] == "hello"
    assert {k: by_media_type[FooBar.MEDIA_TYPE][k] for k in ("foo", "bar")} == {"foo": "bar", "bar": "baz"}
    wait_for(lambda: queue.depth() == 0, timeout_s=10, what="both acked")


DAEMON = '''
from marshmallow import fields

from microcosm.api import binding, create_object_graph

from microbus.compat.daemon import ConsumerDaemon
from microbus.compat.decorators import handles, schema

from microbus.compat.codecs import PubSubMessageSchema  # glue: the README uses it without importing it


@schema
class SimpleSchema(PubSubMessageSchema):
    """
    A single schema that just sends a text string.

    """
    MEDIA_TYPE = "application/vnd.globality.pubsub.simple"

    message = fields.String(required=True)
    timestamp = fields.Float(required=True)

    def deserialize_media_type(self, obj):
        return SimpleSchema.MEDIA_TYPE


@binding("collaborator")  # glue: the collaborator the handler is given
class Collaborator:
    def __init__(self, graph):
        pass

    def do_something(self, message):
        with open(__import__("os").environ["HANDLED_FILE"], "a") as handled:
            handled.write(message["message"] + "\\n")


@binding("simple_handler")
@handles(SimpleSchema)
class SimpleHandler(object):
    def __init__(self, graph):
        self.collaborator = graph.collaborator

    def __call__(self, message):
        self.collaborator.do_something(message)
        return True


class SimpleConsumerDaemon(ConsumerDaemon):

    @property
    def name(self):
        return "example"


if __name__ == '__main__':
    daemon = SimpleConsumerDaemon()
    daemon.run()
'''


def test_the_daemon_example_runs_as_the_readme_says(make_queue, tmp_path):
    # Given the README's daemon module (imports changed), run the way the README runs it
    script = tmp_path / "simple_daemon.py"
    script.write_text(textwrap.dedent(DAEMON))
    handled = tmp_path / "handled.txt"
    queue = make_queue()
    env = {**os.environ, **queue.endpoint.environ(), "HANDLED_FILE": str(handled), "PYTHONPATH": str(ROOT)}
    daemon = subprocess.Popen(
        [sys.executable, str(script), "--sqs-queue-url", queue.queue_url, "--debug", "--wait-seconds", "1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # When a message of its schema (and one nobody here handles) is published
        sqs = queue.sqs
        sqs.send_message(
            QueueUrl=queue.queue_url,
            MessageBody='{"mediaType": "application/vnd.globality.pubsub.simple", "message": "hi", "timestamp": 1.5}',
        )
        sqs.send_message(QueueUrl=queue.queue_url, MessageBody='{"mediaType": "application/vnd.other.thing"}')
        # Then the handler ran, and the unknown media type was acked as microcosm-pubsub does
        wait_for(lambda: handled.exists() and handled.read_text() == "hi\n", timeout_s=30, what="the handler")
        wait_for(lambda: queue.depth() == 0, timeout_s=15, what="both messages acked")
    finally:
        daemon.send_signal(signal.SIGTERM)
        output, _ = daemon.communicate(timeout=30)
    assert daemon.returncode == 0, output
    assert "IGNORED application/vnd.other.thing" in output
