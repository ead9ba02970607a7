"""The Worker on the stub queue: bad messages don't hold up good ones, bounded prefetch,
batched acks, shutdown returns unstarted messages."""

from __future__ import annotations

import threading
import time

from microbus.reference.schemas import OrderPlaced

from microbus import Outcome, Worker
from microbus.consume.dispatch import SQSMessageDispatcher
from microbus.consume.handlers import HandlerRegistry
from microbus.errors import EndpointUnreachableError
from microbus.testing import StubQueue, wait_for
from microbus.wire.schemas import SchemaRegistry


class CountingQueue(StubQueue):
    """Records the size of every delete batch and the most messages ever held by the worker."""

    def __post_init__(self):
        super().__post_init__()
        self.delete_calls = []

    def delete_entries(self, receipt_handles):
        self.delete_calls.append(len(receipt_handles))
        return super().delete_entries(receipt_handles)


def order(i):
    return {"mediaType": OrderPlaced.MEDIA_TYPE, "order_id": f"o-{i}"}


def make_worker(queue, handler, **options):
    dispatcher = SQSMessageDispatcher(handler_registry=HandlerRegistry({OrderPlaced.MEDIA_TYPE: handler}))
    return Worker(consumer=queue.consumer(SchemaRegistry()), dispatcher=dispatcher, **options)


def test_bad_messages_in_a_batch_do_not_hold_up_the_good_ones():
    # Given a batch where every third message is poison
    queue = CountingQueue()
    for i in range(30):
        queue.put("{{{" if i % 3 == 0 else order(i))
    handled = []
    worker = make_worker(queue, lambda content: handled.append(content["order_id"]), concurrency=2)
    # When the worker runs
    worker.start()
    wait_for(lambda: queue.depth == 0, timeout_s=10, what="the queue to drain")
    worker.stop()
    worker.join()
    # Then every good message was handled and every poison message dead-lettered
    assert sorted(handled) == sorted(f"o-{i}" for i in range(30) if i % 3)
    assert len(queue.dead_letters) == 10
    assert worker.stats.outcomes[Outcome.REJECTED.label] == 10


def test_acks_are_deleted_in_batches():
    queue = CountingQueue()
    for i in range(40):
        queue.put(order(i))
    worker = make_worker(queue, lambda content: None, concurrency=4, prefetch=10)
    worker.start()
    wait_for(lambda: queue.depth == 0, timeout_s=10, what="the queue to drain")
    worker.stop()
    worker.join()
    assert sum(queue.delete_calls) == 40
    assert len(queue.delete_calls) < 40 / 2


def test_prefetch_is_bounded_whatever_the_backlog():
    queue = StubQueue()
    for i in range(200):
        queue.put(order(i))
    release = threading.Event()
    worker = make_worker(queue, lambda content: release.wait(10), concurrency=2, prefetch=3)
    worker.start()
    wait_for(lambda: worker.stats.received >= 5, timeout_s=5, what="prefetch to fill")
    # While the handlers are blocked, no more than concurrency + prefetch messages were received
    assert worker.stats.received == 5
    worker.stop()
    release.set()
    worker.join()


def test_shutdown_finishes_in_flight_handlers_and_returns_unstarted_messages_at_once():
    queue = StubQueue()
    for i in range(10):
        queue.put(order(i))
    started, release = threading.Event(), threading.Event()
    done = []

    def slow(content):
        started.set()
        release.wait(10)
        done.append(content["order_id"])

    worker = make_worker(queue, slow, concurrency=1, prefetch=5)
    worker.start()
    started.wait(5)
    wait_for(lambda: worker.stats.received == 6, timeout_s=5, what="prefetch to fill")
    # When the worker is stopped while one handler runs and five messages wait
    worker.stop()
    release.set()
    worker.join()
    # Then the running handler finished and was acked, and the five others are visible again at once
    assert len(done) == 1
    assert worker.stats.released == 5
    assert queue.depth == 9
    assert len(queue.receive(max_messages=10, wait_time_seconds=0)) == 9


def test_transport_failures_back_off_and_recover():
    class FlakyQueue(StubQueue):
        failures = 3

        def receive(self, **kwargs):
            if self.failures:
                self.failures -= 1
                raise EndpointUnreachableError("down")
            return super().receive(**kwargs)

    queue = FlakyQueue()
    queue.put(order(1))
    worker = make_worker(queue, lambda content: None)
    worker.max_transport_backoff_s = 0.2
    worker.start()
    wait_for(lambda: queue.depth == 0, timeout_s=10, what="recovery")
    worker.stop()
    worker.join()
    assert queue.failures == 0
    assert worker.stats.outcomes["SUCCEEDED"] == 1


def test_an_unexpected_error_in_dispatch_does_not_stall_the_worker():
    queue = StubQueue()
    for i in range(3):
        queue.put(order(i))
    worker = make_worker(queue, lambda content: None)
    original = worker.dispatcher.handle
    calls = []

    def broken_once(message, **kwargs):
        calls.append(message.message_id)
        if len(calls) == 1:
            raise KeyError("bug")
        return original(message, **kwargs)

    worker.dispatcher.handle = broken_once
    worker.start()
    wait_for(lambda: worker.stats.outcomes["SUCCEEDED"] == 2, timeout_s=5, what="the other messages")
    worker.stop()
    worker.join()
    # The message that hit the bug was neither acked nor lost: it is still in the queue
    assert queue.depth == 1


def test_a_deeply_nested_body_is_dead_lettered_and_does_not_take_its_batch_down():
    queue = StubQueue()
    queue.put("[" * 5000 + "]" * 5000)
    for i in range(5):
        queue.put(order(i))
    handled = []
    worker = make_worker(queue, lambda content: handled.append(content["order_id"]))
    worker.start()
    wait_for(lambda: queue.depth == 0, timeout_s=10, what="the queue to drain")
    worker.stop()
    worker.join()
    assert sorted(handled) == [f"o-{i}" for i in range(5)]
    assert queue.dead_letters[0][1]["microbus.reason"]["StringValue"] == "malformed-body"


def test_a_handler_raising_system_exit_fails_its_message_and_the_worker_goes_on():
    queue = StubQueue()
    queue.put(order(0))
    queue.put(order(1))

    def handler(content):
        if content["order_id"] == "o-0":
            raise SystemExit(3)

    worker = make_worker(queue, handler)
    worker.start()
    wait_for(lambda: worker.stats.outcomes["SUCCEEDED"] == 1, timeout_s=5, what="the second message")
    worker.stop()
    worker.join()
    assert worker.stats.outcomes["FAILED"] == 1
    assert queue.depth == 1  # the failed message waits for its retry


def test_shutdown_does_not_wait_forever_for_deletes_that_cannot_be_flushed():
    class UnreachableDeletes(StubQueue):
        def delete_batch(self, receipt_handles):
            threading.Event().wait(30)
            return []

    queue = UnreachableDeletes()
    queue.put(order(0))
    worker = make_worker(queue, lambda content: None, grace_period_s=0.1)
    worker.start()
    wait_for(lambda: worker.stats.outcomes["SUCCEEDED"] == 1, timeout_s=5, what="the handler")
    worker.stop()
    stopping = time.monotonic()
    worker.join()
    assert time.monotonic() - stopping < 15
