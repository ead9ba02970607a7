"""pytest fixtures: an emulator endpoint, a fresh topic + queue (+ DLQ) per test, a configured graph.

Installed as a pytest plugin (the ``pytest11`` entry point ``microbus.testing.fixtures``; ``-p
no:microbus.testing.fixtures`` turns it off). Choose the emulator with
``--emulator moto|localstack`` or ``MICROBUS_TEST_EMULATOR`` (default moto, the embedded server).
``MICROBUS_TEST_ENDPOINT_URL`` points the tests at an emulator already running. For LocalStack without
one, the fixture starts ``localstack/localstack.sh`` (or ``MICROBUS_LOCALSTACK_SCRIPT``) for the session;
when LocalStack is unavailable the tests skip with the reason, except under CI (``CI=true``), where they fail.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from microcosm.api import create_object_graph, load_from_dict
from microcosm.object_graph import ObjectGraph

from microbus.testing.emulator import EmbeddedEmulator, Endpoint
from microbus.topology import Queue, Subscription, Table, Topic, Topology, apply_topology

ENDPOINT_VARIABLE = "MICROBUS_TEST_ENDPOINT_URL"
EMULATOR_VARIABLE = "MICROBUS_TEST_EMULATOR"
SCRIPT_VARIABLE = "MICROBUS_LOCALSTACK_SCRIPT"
EMULATORS = ("moto", "localstack")


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--emulator moto|localstack``."""
    parser.addoption(
        "--emulator",
        choices=EMULATORS,
        default=None,
        help=f"emulator of the integration tests (default: ${EMULATOR_VARIABLE}, else moto)",
    )


def emulator_kind(config: pytest.Config) -> str:
    """The emulator chosen by ``--emulator`` or ``MICROBUS_TEST_EMULATOR`` (default moto)."""
    kind = config.getoption("--emulator", default=None) or os.environ.get(EMULATOR_VARIABLE) or "moto"
    if kind not in EMULATORS:
        raise pytest.UsageError(f"{EMULATOR_VARIABLE}={kind!r}: expected one of {', '.join(EMULATORS)}")
    return str(kind)


def unavailable(reason: str) -> None:
    """Skip with ``reason`` locally; fail under CI (``CI=true``), where a silent skip would hide a gap."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: not skipping)", pytrace=False)
    pytest.skip(reason)


@dataclass
class TestQueue:
    """A topic and a subscribed queue (with a DLQ) made for one test."""

    __test__ = False

    endpoint: Endpoint
    topic_arn: str
    queue_url: str
    dlq_url: str | None
    sns: Any
    sqs: Any

    def graph_config(self, **extra: Any) -> dict[str, Any]:
        """Graph config pointing the producer at the topic and the consumer at the queue."""
        config: dict[str, Any] = {
            **self.endpoint.config(),
            "microbus_sns_topic_arns": {"default": self.topic_arn},
            "microbus_sqs_consumer": {"sqs_queue_url": self.queue_url, "wait_seconds": 1},
        }
        for key, value in extra.items():
            config[key] = {**config.get(key, {}), **value}
        return config

    def depth(self, url: str | None = None) -> int:
        """Visible plus in-flight messages of the queue (or of ``url``)."""
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=url or self.queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attributes["ApproximateNumberOfMessages"]) + int(attributes["ApproximateNumberOfMessagesNotVisible"])

    def drain_dlq(self) -> list[dict[str, Any]]:
        """Receive (and delete) everything in the DLQ, with message attributes."""
        assert self.dlq_url is not None
        out: list[dict[str, Any]] = []
        while True:
            batch = self.sqs.receive_message(
                QueueUrl=self.dlq_url, MaxNumberOfMessages=10, WaitTimeSeconds=0, MessageAttributeNames=["All"]
            ).get("Messages", [])
            if not batch:
                return out
            out.extend(batch)
            self.sqs.delete_message_batch(
                QueueUrl=self.dlq_url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(batch)],
            )


@pytest.fixture(scope="session")
def microbus_endpoint(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    """The emulator every integration test talks to, over HTTP on loopback; ``.kind`` says which."""
    kind = emulator_kind(request.config)
    url = os.environ.get(ENDPOINT_VARIABLE)
    if url:
        yield Endpoint(url, kind=kind)
    elif kind == "moto":
        with EmbeddedEmulator() as emulator:
            yield emulator
    else:
        yield from _localstack(str(request.config.rootpath), str(tmp_path_factory.mktemp("localstack")))


def _python313_available() -> bool:
    """Whether localstack.sh can find a Python 3.13 (same places: the variable, PATH, pyenv)."""
    pyenv_root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    candidates = [os.environ.get("MICROBUS_LOCALSTACK_PYTHON"), shutil.which("python3.13")]
    candidates += sorted(glob.glob(os.path.join(pyenv_root, "versions", "3.13*", "bin", "python3.13")))
    check = "import sys; sys.exit(sys.version_info[:2] != (3, 13))"
    for candidate in filter(None, candidates):
        if subprocess.run([candidate, "-c", check], capture_output=True, timeout=30).returncode == 0:
            return True
    return False


def _localstack(rootdir: str, state_dir: str) -> Iterator[Endpoint]:
    script = os.environ.get(SCRIPT_VARIABLE) or os.path.join(rootdir, "localstack", "localstack.sh")
    if not os.path.isfile(script):
        unavailable(f"LocalStack tests need {script} (or {ENDPOINT_VARIABLE}) and it is missing")
    if not _python313_available():
        unavailable(
            "LocalStack needs Python 3.13, which was not found (install it, e.g. `pyenv install 3.13`, "
            "or set MICROBUS_LOCALSTACK_PYTHON)"
        )
    env = {**os.environ, "MICROBUS_LOCALSTACK_STATE": state_dir}
    started = subprocess.run(["bash", script, "start"], env=env, capture_output=True, text=True, timeout=300)
    if started.returncode != 0:
        reason = (started.stderr.strip().splitlines() or ["no output"])[-1]
        unavailable(f"LocalStack could not start ({reason})")
    try:
        yield Endpoint(started.stdout.strip().splitlines()[-1], kind="localstack")
    finally:
        subprocess.run(["bash", script, "stop"], env=env, capture_output=True, timeout=120)


@pytest.fixture
def make_queue(microbus_endpoint: Endpoint) -> Callable[..., TestQueue]:
    """Factory of fresh, uniquely named topic + queue pairs: ``make_queue(raw=False, max_receive_count=5)``."""

    def make(
        *, raw: bool = False, max_receive_count: int | None = 5, visibility_timeout_s: int = 30, media_types: Any = None
    ) -> TestQueue:
        name = f"t-{uuid.uuid4().hex[:12]}"
        settings = microbus_endpoint.settings()
        sns, sqs = settings.client("sns"), settings.client("sqs")
        topology = Topology(
            topics=(Topic(name=name),),
            queues=(
                Queue(
                    name=name,
                    visibility_timeout_s=visibility_timeout_s,
                    max_receive_count=max_receive_count,
                    subscriptions=(Subscription(topic=name, raw=raw, media_types=media_types),),
                ),
            ),
        )
        applied = apply_topology(topology, sns=sns, sqs=sqs)
        dlq_url = sqs.get_queue_url(QueueName=f"{name}-dlq")["QueueUrl"] if max_receive_count else None
        return TestQueue(microbus_endpoint, applied.topic_arns[name], applied.queue_urls[name], dlq_url, sns, sqs)

    return make


@pytest.fixture
def make_table(microbus_endpoint: Endpoint) -> Callable[[str], str]:
    """Factory of fresh DynamoDB tables (keyed by ``pk``, with TTL): ``make_table("idem")`` returns the name."""

    def make(prefix: str = "t") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        client = microbus_endpoint.settings().client("dynamodb")
        apply_topology(Topology(tables=(Table(name=name),)), sns=None, sqs=None, dynamodb=client)
        return name

    return make


@pytest.fixture
def microbus_queue(make_queue: Callable[..., TestQueue]) -> TestQueue:
    """A fresh topic and subscribed queue (enveloped delivery, DLQ after 5 receives)."""
    return make_queue()


@pytest.fixture
def microbus_graph(microbus_queue: TestQueue) -> ObjectGraph:
    """A microcosm graph whose producer and consumer use ``microbus_queue``."""
    graph = create_object_graph("microbus-test", testing=True, loader=load_from_dict(microbus_queue.graph_config()))
    graph.use("microbus_sns_producer", "microbus_sqs_consumer", "microbus_sqs_message_dispatcher")
    return graph
