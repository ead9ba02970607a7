"""``async def`` handlers on the emulator: they overlap on one event loop, mix with sync handlers, retry,
shut down within the grace period, run async middleware hooks, and never take the worker's loop down."""

from __future__ import annotations

import asyncio
import dataclasses
import http.server
import json
import logging
import threading
import time
import uuid

import pytest
from marshmallow import fields

from microbus import (
    EventKind,
    HandlerRegistry,
    Middleware,
    Outcome,
    PubSubMessageSchema,
    SchemaRegistry,
    SQSConsumer,
    SQSMessageDispatcher,
    Worker,
    schema,
)
from microbus.consume.dispatch import RetryPolicy
from microbus.testing import wait_for
from microbus.wire.transport import SQSTransport

pytestmark = pytest.mark.integration


@schema
class AsyncJob(PubSubMessageSchema):
    """A throwaway contract for async handlers."""

    MEDIA_TYPE = f"application/vnd.microbus.test.async-job.{uuid.uuid4().hex}"

    job = fields.Integer(required=True)


@schema
class SyncJob(PubSubMessageSchema):
    """A throwaway contract for the sync handler beside them."""

    MEDIA_TYPE = f"application/vnd.microbus.test.sync-job.{uuid.uuid4().hex}"

    job = fields.Integer(required=True)


class Events:
    """A lifecycle observer that keeps every event."""

    def __init__(self):
        self.events = []
        self._lock = threading.Lock()

    def on_event(self, event):
        with self._lock:
            self.events.append(event)

    def of(self, kind):
        with self._lock:
            return [e for e in self.events if e.kind is kind]


def send(queue, media_type, jobs):
    for start in range(0, len(jobs), 10):
        queue.sqs.send_message_batch(
            QueueUrl=queue.queue_url,
            Entries=[
                {"Id": str(i), "MessageBody": json.dumps({"mediaType": media_type, "job": job})}
                for i, job in enumerate(jobs[start : start + 10])
            ],
        )


def make_worker(queue, handlers, *, concurrency=4, middleware=(), observers=(), **options):
    settings = dataclasses.replace(queue.endpoint.settings(), max_pool_connections=64)
    consumer = SQSConsumer(
        transport=SQSTransport(client=settings.client("sqs"), queue_url=queue.queue_url),
        schema_registry=SchemaRegistry(),
        wait_seconds=1,
    )
    dispatcher = SQSMessageDispatcher(
        handler_registry=HandlerRegistry(handlers),
        retry_policy=RetryPolicy(base_s=1, jitter=False),
        middleware=middleware,
    )
    return Worker(consumer=consumer, dispatcher=dispatcher, concurrency=concurrency, observers=observers, **options)


class SlowHTTP(http.server.BaseHTTPRequestHandler):
    """Answers every GET after 0.2 s."""

    def do_GET(self):  # noqa: N802 - the http.server protocol
        threading.Event().wait(0.2)  # the server's latency, not a wait of the test
        payload = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format, *args):  # noqa: A002 - quiet
        pass


@pytest.fixture
def slow_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlowHTTP)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


async def http_get(host, port, path):
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
        await writer.wait_closed()
    return response.split(b" ", 2)[1].decode()


@pytest.mark.timeout(60)
def test_async_handlers_doing_real_io_overlap_on_one_event_loop(make_queue, slow_server):
    # Given 20 messages whose async handler does a 0.2 s HTTP GET to a local server
    queue = make_queue()
    send(queue, AsyncJob.MEDIA_TYPE, list(range(20)))
    host, port = slow_server
    calls = []

    async def fetch(content):
        start = time.monotonic()
        status = await http_get(host, port, f"/job/{content['job']}")
        calls.append((content["job"], status, threading.get_ident(), start, time.monotonic()))

    worker = make_worker(queue, {AsyncJob.MEDIA_TYPE: fetch}, concurrency=20)
    # When a worker with concurrency 20 consumes them
    worker.start()
    try:
        wait_for(lambda: len({c[0] for c in calls}) == 20, timeout_s=30, what="20 handled")
        wait_for(lambda: queue.depth() == 0, timeout_s=10, what="all deleted")
    finally:
        worker.stop()
        worker.join()
    # Then all were handled and deleted, the GETs overlapped, and every coroutine ran on one thread
    assert {c[0] for c in calls} == set(range(20))
    assert {c[1] for c in calls} == {"200"}
    wall = max(c[4] for c in calls) - min(c[3] for c in calls)
    assert wall < 20 * 0.2 / 2, f"20 GETs of 0.2 s took {wall:.2f}s: they did not overlap"
    assert len({c[2] for c in calls}) == 1
    assert calls[0][2] != threading.main_thread().ident
    assert worker.stats.outcomes[Outcome.SUCCEEDED.label] >= 20
    assert worker.stats.failed == 0


@pytest.mark.timeout(60)
def test_sync_and_async_handlers_in_one_registry_are_both_handled(make_queue):
    # Given one registry with a sync handler and an async handler, and messages for both
    queue = make_queue()
    send(queue, SyncJob.MEDIA_TYPE, list(range(5)))
    send(queue, AsyncJob.MEDIA_TYPE, list(range(5)))
    handled = []

    def sync_handler(content):
        handled.append(("sync", content["job"], threading.current_thread().name))

    async def async_handler(content):
        await asyncio.sleep(0.01)
        handled.append(("async", content["job"], threading.current_thread().name))

    worker = make_worker(queue, {SyncJob.MEDIA_TYPE: sync_handler, AsyncJob.MEDIA_TYPE: async_handler})
    # When a worker consumes them
    worker.start()
    try:
        wait_for(lambda: len({h[:2] for h in handled}) == 10, timeout_s=30, what="10 handled")
        wait_for(lambda: queue.depth() == 0, timeout_s=10, what="all deleted")
    finally:
        worker.stop()
        worker.join()
    # Then each kind was handled, the sync ones on handler threads, the async ones on the loop's one thread
    assert {h[:2] for h in handled} == {(kind, job) for kind in ("sync", "async") for job in range(5)}
    assert all(h[2].startswith("microbus-handler") for h in handled if h[0] == "sync")
    assert len({h[2] for h in handled if h[0] == "async"}) == 1
    assert not any(h[2].startswith("microbus-handler") for h in handled if h[0] == "async")


@pytest.mark.timeout(60)
def test_an_async_handler_that_raises_after_an_await_is_retried_then_succeeds(make_queue):
    # Given an async handler whose first attempt raises after an await
    queue = make_queue()
    send(queue, AsyncJob.MEDIA_TYPE, [1])
    attempts = []

    async def flaky(content):
        await asyncio.sleep(0.01)
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            raise RuntimeError("first attempt fails after an await")

    events = Events()
    worker = make_worker(queue, {AsyncJob.MEDIA_TYPE: flaky}, observers=[events])
    # When a worker consumes it
    worker.start()
    try:
        wait_for(lambda: worker.stats.outcomes[Outcome.SUCCEEDED.label] == 1, timeout_s=30, what="the retry")
        wait_for(lambda: queue.depth() == 0, timeout_s=10, what="the delete")
    finally:
        worker.stop()
        worker.join()
    # Then the first attempt failed and was not deleted, and the second (receive count 2) succeeded
    finished = [(e.receive_count, e.outcome) for e in events.of(EventKind.FINISHED)]
    assert finished == [(1, Outcome.FAILED), (2, Outcome.SUCCEEDED)]
    assert attempts[1] - attempts[0] >= 0.9  # after the 1 s backoff


@pytest.mark.timeout(60)
def test_an_async_handler_that_never_returns_does_not_hold_up_the_shutdown_and_its_message_is_kept(make_queue, caplog):
    # Given an async handler that awaits forever, on a queue with a 5 s visibility timeout (the heartbeat has
    # 2.5 s to extend it: under a loaded CI machine a 1 s margin let the message reappear while it was held)
    queue = make_queue(visibility_timeout_s=5)
    send(queue, AsyncJob.MEDIA_TYPE, [1])
    started = threading.Event()

    async def forever(content):
        started.set()
        await asyncio.Event().wait()

    events = Events()
    worker = make_worker(queue, {AsyncJob.MEDIA_TYPE: forever}, grace_period_s=1, observers=[events])
    worker.start()
    caplog.set_level(logging.WARNING)
    try:
        assert started.wait(20), "the handler did not start"
    finally:
        # When the worker is stopped with a 1 s grace period
        stopping = time.monotonic()
        worker.stop()
        worker.join()
        took = time.monotonic() - stopping
    # Then join returned within a few seconds, and the message was not deleted: it comes back
    assert took < 4, f"join took {took:.1f}s"
    assert worker.stats.outcomes[Outcome.SUCCEEDED.label] == 0
    assert queue.depth() == 1
    back = wait_for(
        lambda: queue.sqs.receive_message(QueueUrl=queue.queue_url, WaitTimeSeconds=1, AttributeNames=["All"]).get(
            "Messages"
        ),
        timeout_s=20,
        what="the message to reappear",
    )
    assert len(events.of(EventKind.RECEIVED)) == 1, "the worker received the message more than once"
    assert back[0]["Attributes"]["ApproximateReceiveCount"] == "2"
    # And no error escaped (no traceback logged)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
    # And the handler's task was cancelled and finished (FAILED), not left pending on the closed loop, where
    # it is destroyed later ("Task was destroyed but it is pending!") and finishes from the garbage collector
    finished = [e.outcome for e in events.of(EventKind.FINISHED)]
    assert finished == [Outcome.FAILED], finished


@pytest.mark.timeout(60)
def test_async_middleware_hooks_are_awaited_around_an_async_handler(make_queue):
    # Given middleware whose before_handle and after_handle are coroutines, and an async handler
    queue = make_queue()
    send(queue, AsyncJob.MEDIA_TYPE, [1])
    calls = []

    class Recording(Middleware):
        async def before_handle(self, message):
            await asyncio.sleep(0)
            calls.append(("before", message.message_id))

        async def after_handle(self, message, result):
            await asyncio.sleep(0)
            calls.append(("after", message.message_id, result.outcome))

    async def handler(content):
        await asyncio.sleep(0)
        calls.append(("handler", content["job"]))

    worker = make_worker(queue, {AsyncJob.MEDIA_TYPE: handler}, middleware=[Recording()])
    # When a worker handles a message
    worker.start()
    try:
        wait_for(lambda: queue.depth() == 0, timeout_s=30, what="the message to be handled and deleted")
    finally:
        worker.stop()
        worker.join()
    # Then both hooks ran to completion (past their awaits), before and after the handler
    assert [c[0] for c in calls] == ["before", "handler", "after"]
    assert calls[0][1] == calls[2][1]
    assert calls[2][2] is Outcome.SUCCEEDED


@pytest.mark.timeout(60)
def test_a_sync_handler_that_returns_a_coroutine_is_awaited_not_counted_as_success(make_queue):
    # Given sync handlers that return coroutines: one that does its work after an await, one that raises
    queue = make_queue()
    send(queue, SyncJob.MEDIA_TYPE, [1, 2])
    done = []
    raised = []

    async def work(job):
        await asyncio.sleep(0.01)
        if job == 2 and not raised:
            raised.append(job)
            raise RuntimeError("the coroutine fails")
        done.append(job)

    def returns_a_coroutine(content):
        return work(content["job"])

    events = Events()
    worker = make_worker(queue, {SyncJob.MEDIA_TYPE: returns_a_coroutine}, observers=[events])
    # When a worker consumes them
    worker.start()
    try:
        wait_for(lambda: worker.stats.outcomes[Outcome.SUCCEEDED.label] == 2, timeout_s=30, what="both handled")
        wait_for(lambda: queue.depth() == 0, timeout_s=10, what="both deleted")
    finally:
        worker.stop()
        worker.join()
    # Then the coroutines were run to completion: the failing one failed once (and was retried)
    assert sorted(done) == [1, 2]
    assert worker.stats.outcomes[Outcome.FAILED.label] == 1
    (failed,) = [e for e in events.of(EventKind.FINISHED) if e.outcome is Outcome.FAILED]
    assert isinstance(failed.result.error, RuntimeError)


@pytest.mark.timeout(60)
def test_keyboard_interrupt_raised_by_an_async_handler_fails_its_message_and_the_worker_goes_on(make_queue):
    # Given an async handler that raises KeyboardInterrupt for job 1 (once)
    queue = make_queue()
    send(queue, AsyncJob.MEDIA_TYPE, [1])
    handled = []

    async def handler(content):
        await asyncio.sleep(0)
        if content["job"] == 1 and 1 not in handled:
            handled.append(1)
            raise KeyboardInterrupt
        handled.append(content["job"])

    worker = make_worker(queue, {AsyncJob.MEDIA_TYPE: handler})
    worker.start()
    try:
        wait_for(lambda: worker.stats.failed == 1, timeout_s=30, what="the interrupted message")
        # When more messages come after it
        send(queue, AsyncJob.MEDIA_TYPE, [2, 3])
        wait_for(lambda: worker.stats.outcomes[Outcome.SUCCEEDED.label] >= 3, timeout_s=30, what="the rest")
    finally:
        worker.stop()
        worker.join()
    # Then the interrupted message failed and was retried, and the worker's loop kept running the others
    assert sorted(set(handled)) == [1, 2, 3]
    assert worker.healthy


@pytest.mark.timeout(60)
@pytest.mark.parametrize("exception", [KeyboardInterrupt, SystemExit], ids=["KeyboardInterrupt", "SystemExit"])
def test_an_interrupt_raised_in_a_task_an_async_handler_awaits_does_not_kill_the_event_loop(make_queue, exception):
    """asyncio re-raises KeyboardInterrupt/SystemExit out of the loop when a *task* raises them; a handler that
    awaits ``asyncio.gather``/``create_task``/``wait_for`` (3.11) of a call that raises one must not end the
    worker's event loop (after which every async message fails with "event loop closed" until it is
    dead-lettered, the message in flight is never settled, and the shutdown waits out the whole grace period).
    Re-entering ``run_forever`` after such an escape lets the awaiting handler see the exception (FAILED)."""
    # Given an async handler whose first message awaits a task that raises ``exception``
    queue = make_queue()
    send(queue, AsyncJob.MEDIA_TYPE, [1])
    handled = []

    async def inner():
        await asyncio.sleep(0)
        raise exception

    async def handler(content):
        if content["job"] == 1 and 1 not in handled:
            handled.append(1)
            await asyncio.gather(inner())
        await asyncio.sleep(0)
        handled.append(content["job"])

    events = Events()
    worker = make_worker(queue, {AsyncJob.MEDIA_TYPE: handler}, observers=[events], grace_period_s=2)
    worker.start()
    try:
        wait_for(lambda: 1 in handled, timeout_s=30, what="the first message")
        # When more messages come after it
        send(queue, AsyncJob.MEDIA_TYPE, [2, 3])
        wait_for(lambda: len(events.of(EventKind.FINISHED)) >= 3, timeout_s=30, what="the others to finish")
        # Then they are handled, and the first message finished (failed) too and was settled
        wait_for(lambda: {2, 3} <= set(handled), timeout_s=10, what="the others to succeed")
        first = wait_for(
            lambda: [e for e in events.of(EventKind.SETTLED) if e.receive_count == 1], timeout_s=10, what="settled"
        )
        assert first
        assert worker.healthy
    finally:
        worker.stop()
        worker.join()
