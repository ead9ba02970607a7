"""Idempotency against the emulator's DynamoDB: atomic claims, clear errors, one run per message."""

from __future__ import annotations

import threading
import time

import pytest
from microbus.reference.schemas import OrderPlaced
from microcosm.api import create_object_graph, load_from_dict

from microbus import Outcome, Worker
from microbus.consume.dispatch import SQSMessageDispatcher
from microbus.consume.handlers import HandlerRegistry
from microbus.errors import ConfigurationError
from microbus.patterns.idempotency import COMPLETED, DynamoDBIdempotencyStore, IdempotencyGuard
from microbus.testing import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def store(microbus_endpoint, make_table):
    client = microbus_endpoint.settings().client("dynamodb")
    return DynamoDBIdempotencyStore(client=client, table_name=make_table("idem"))


def test_only_one_of_many_concurrent_claims_wins(store):
    # Given eight workers claiming the same key at once
    results = []
    barrier = threading.Barrier(8)

    def claim(i):
        barrier.wait()
        results.append(store.claim("k", token=f"t{i}", now=time.time(), lease_s=60))

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Then exactly one got it, and the others saw its claim
    assert sum(result is None for result in results) == 1
    winners = {result.token for result in results if result is not None}
    assert len(winners) == 1


def test_a_completed_record_survives_and_a_release_by_another_token_is_ignored(store):
    assert store.claim("k", token="a", now=time.time(), lease_s=60) is None
    store.release("k", token="b")
    assert store.claim("k", token="c", now=time.time(), lease_s=60).token == "a"
    store.complete("k", token="a", now=time.time())
    assert store.claim("k", token="d", now=time.time(), lease_s=60).status == COMPLETED


def test_a_missing_table_is_a_clear_configuration_error(microbus_endpoint):
    store = DynamoDBIdempotencyStore(client=microbus_endpoint.settings().client("dynamodb"), table_name="no-such-table")
    with pytest.raises(ConfigurationError, match="does not exist"):
        store.claim("k", token="t", now=time.time(), lease_s=60)


@pytest.mark.parametrize("raw", [False, True], ids=["enveloped", "raw"])
def test_a_message_published_twice_runs_its_idempotent_handler_once(make_queue, store, raw):
    # Given a queue, and one encoded message published twice (as a producer retry after a lost response would)
    queue = make_queue(raw=raw)
    graph = create_object_graph("idem", testing=True, loader=load_from_dict(queue.graph_config()))
    graph.use("microbus_sns_producer", "microbus_sqs_consumer")
    outgoing = graph.microbus_sns_producer.create_message(OrderPlaced.MEDIA_TYPE, {"order_id": "o-1"})
    graph.microbus_sns_producer.publish(outgoing)
    graph.microbus_sns_producer.publish(outgoing)
    seen = []
    registry = HandlerRegistry({OrderPlaced.MEDIA_TYPE: seen.append}, idempotent=[OrderPlaced.MEDIA_TYPE])
    dispatcher = SQSMessageDispatcher(handler_registry=registry, middleware=[IdempotencyGuard(store=store)])
    worker = Worker(consumer=graph.microbus_sqs_consumer, dispatcher=dispatcher)
    # When the worker consumes both copies
    worker.start()
    try:
        wait_for(lambda: sum(worker.stats.outcomes.values()) >= 2 and queue.depth() == 0, timeout_s=20)
    finally:
        worker.stop()
        worker.join()
    # Then the handler ran once; the copy was acked as a duplicate
    assert len(seen) == 1
    assert worker.stats.outcomes[Outcome.SUCCEEDED.label] == 1
    assert worker.stats.outcomes[Outcome.SKIPPED.label] == 1
