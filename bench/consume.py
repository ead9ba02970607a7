"""Consume throughput: microbus's Worker against a bare boto3 loop, draining the same pre-filled queue.

Each run fills a fresh SQS queue with N OrderPlaced messages (SendMessageBatch, straight to the
emulator, never through the proxy), then times draining it until N messages are deleted:

* bare: T threads sharing one boto3 client, each looping receive 10 (long poll 1 s), json-decode,
  (sleep per message), delete_message_batch;
* microbus: ``Worker(concurrency=C)`` with a no-op (or sleeping) handler; the clock stops when the
  worker's batched deletes have removed N messages (seen by a botocore ``after-call`` hook).

Sides alternate (bare, microbus, bare, ...) over ``--rounds`` rounds and each concurrency; the
medians are printed. Examples (from the repository root)::

    .venv/bin/python bench/consume.py --n 300 --concurrency 1,4                  # embedded moto
    .venv/bin/python bench/consume.py --n 1000 --concurrency 4 --proxy-delay-ms 20
    .venv/bin/python bench/consume.py --endpoint $(localstack/localstack.sh endpoint) --n 3000
    .venv/bin/python bench/consume.py --endpoint ... --n 2000 --rss --sides microbus --rounds 1
    .venv/bin/python bench/consume.py --proxy-delay-ms 1000 --delay-actions DeleteMessageBatch ...
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"

import boto3  # noqa: E402
from botocore.config import Config  # noqa: E402
from microbus.reference.schemas import OrderPlaced  # noqa: E402

from microbus import (  # noqa: E402
    AWSSettings,
    HandlerRegistry,
    SchemaRegistry,
    SQSConsumer,
    SQSMessageDispatcher,
    SQSTransport,
    Worker,
)

try:
    from microbus.testing.emulator import EmbeddedEmulator
except ImportError:  # before the move to microbus.testing
    from microbus.emulator import EmbeddedEmulator  # type: ignore[no-redef]

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from latency_proxy import LatencyProxy  # noqa: E402

REGION = "us-east-1"
# AWSSettings' defaults: connect 5 s, read 30 s, 3 attempts in standard retry mode (the bare side's client).
CLIENT_CONFIG = {"connect_timeout": 5, "read_timeout": 30, "retries": {"max_attempts": 3, "mode": "standard"}}


def make_client(endpoint: str, pool: int) -> Any:
    session = boto3.session.Session(region_name=REGION)
    return session.client("sqs", endpoint_url=endpoint, config=Config(max_pool_connections=pool, **CLIENT_CONFIG))


def microbus_client(endpoint: str, concurrency: int, receivers: int | None = None) -> tuple[Any, str]:
    """The Worker's SQS client, from AWSSettings with a pool of ``Worker.connections_for(C) + 4``."""
    pool = Worker.connections_for(concurrency, receivers) + 4
    settings = AWSSettings(
        endpoint_url=endpoint,
        region_name=REGION,
        access_key_id="testing",
        secret_access_key="testing",
        max_pool_connections=pool,
    )
    note = f"AWSSettings(max_pool_connections=Worker.connections_for(C)+4) = {pool} at C={concurrency}"
    return settings.client("sqs"), note


class PoolFullCounter(logging.Handler):
    """Counts urllib3's "Connection pool is full, discarding connection" warnings (a pool too small)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "Connection pool is full" in record.getMessage():
            self.count += 1


# --- one drain ------------------------------------------------------------------------------------


def rss_mb() -> float:
    """Peak RSS of this process, MiB: VmHWM on Linux, else ru_maxrss.

    ru_maxrss is not used on Linux because a child's ru_maxrss starts at its parent's peak: exec folds
    the high-water mark of the replaced memory map (the parent's, when subprocess vforks) into it.
    VmHWM belongs to the current memory map, which exec creates afresh.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux, bytes on macOS


def drain(spec: dict[str, Any]) -> dict[str, Any]:
    """Drain spec["queue_url"] of spec["n"] messages with one side; return the measurements."""
    side, n, concurrency = spec["side"], spec["n"], spec["concurrency"]
    sleep_s = spec["handler_sleep_ms"] / 1000.0
    timeout_s = spec["timeout_s"]
    rss_start = rss_mb()
    pool_full = PoolFullCounter()
    logging.getLogger("urllib3.connectionpool").addHandler(pool_full)
    cpu_start = time.process_time()
    if side == "bare":
        result = drain_bare(spec["endpoint"], spec["queue_url"], n, concurrency, sleep_s, timeout_s)
    else:
        result = drain_microbus(
            spec["endpoint"],
            spec["queue_url"],
            n,
            concurrency,
            sleep_s,
            timeout_s,
            spec["async_handler"],
            spec.get("prefetch"),
            spec.get("receivers"),
        )
    logging.getLogger("urllib3.connectionpool").removeHandler(pool_full)
    result["pool_full"] = pool_full.count
    result["cpu_s"] = time.process_time() - cpu_start  # all threads of this process (fill excluded)
    result["rss_start_mb"] = rss_start
    result["rss_peak_mb"] = rss_mb()
    result["ru_maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return result


class CallStats:
    """Per SQS operation on a client: calls, items (messages received / entries deleted), mean latency."""

    def __init__(self, client: Any) -> None:
        self._lock = threading.Lock()
        self._started: dict[int, float] = {}
        self.ops: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0, 0.0, 0])  # calls, items, secs, max
        client.meta.events.register("before-call.sqs.*", self._before)
        client.meta.events.register("after-call.sqs.*", self._after)

    def _before(self, model: Any, params: Any, **_: Any) -> None:
        with self._lock:
            self._started[threading.get_ident()] = time.monotonic()

    def _after(self, model: Any, parsed: dict[str, Any], **_: Any) -> None:
        now = time.monotonic()
        with self._lock:
            started = self._started.pop(threading.get_ident(), now)
            op = self.ops[model.name]
            op[0] += 1
            op[1] += len(parsed.get("Messages", parsed.get("Successful", [])))
            op[2] += now - started
            op[3] = max(op[3], now - started)

    def summary(self) -> str:
        parts = []
        for name in ("ReceiveMessage", "DeleteMessageBatch", "ChangeMessageVisibilityBatch"):
            if name in self.ops:
                calls, items, secs, worst = self.ops[name]
                parts.append(
                    f"{name.replace('Message', '')} {calls:.0f}x{items / calls:.1f} {secs / calls * 1000:.0f}ms"
                    f"(max {worst * 1000:.0f})"
                )
        return " ".join(parts)


def drain_bare(endpoint: str, url: str, n: int, threads: int, sleep_s: float, timeout_s: float) -> dict[str, Any]:
    client = make_client(endpoint, max(10, threads + 8))
    calls = CallStats(client)
    lock = threading.Lock()
    done = threading.Event()
    state = {"deleted": 0, "received": 0, "end": 0.0}

    def loop() -> None:
        while not done.is_set():
            messages = client.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get(
                "Messages", []
            )
            if not messages:
                continue
            for message in messages:
                json.loads(message["Body"])
                if sleep_s:
                    time.sleep(sleep_s)
            response = client.delete_message_batch(
                QueueUrl=url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)],
            )
            with lock:
                state["received"] += len(messages)
                state["deleted"] += len(response.get("Successful", []))
                if state["deleted"] >= n and not done.is_set():
                    state["end"] = time.monotonic()
                    done.set()

    started = time.monotonic()
    workers = [threading.Thread(target=loop, daemon=True) for _ in range(threads)]
    for thread in workers:
        thread.start()
    timed_out = not done.wait(timeout_s)
    end = state["end"] if not timed_out else time.monotonic()
    done.set()
    for thread in workers:
        thread.join(5)
    return {
        "elapsed_s": end - started,
        "deleted": state["deleted"],
        "timed_out": timed_out,
        "duplicates": state["received"] - state["deleted"],
        "note": "",
        "calls": calls.summary(),
    }


def drain_microbus(
    endpoint: str,
    url: str,
    n: int,
    concurrency: int,
    sleep_s: float,
    timeout_s: float,
    async_handler: bool,
    prefetch: int | None = None,
    receivers: int | None = None,
) -> dict[str, Any]:
    client, client_note = microbus_client(endpoint, concurrency, receivers)
    lock = threading.Lock()
    done = threading.Event()
    state = {"deleted": 0, "end": 0.0, "first_call": 0.0, "last_call": 0.0}
    invocations: collections.Counter[str] = collections.Counter()

    def after_delete(parsed: dict[str, Any], **_: Any) -> None:
        with lock:
            state["deleted"] += len(parsed.get("Successful", []))
            if state["deleted"] >= n and not done.is_set():
                state["end"] = time.monotonic()
                done.set()

    client.meta.events.register("after-call.sqs.DeleteMessageBatch", after_delete)
    calls = CallStats(client)

    if async_handler:
        import asyncio

        async def handler(content: dict[str, Any]) -> None:
            with lock:
                invocations[content["order_id"]] += 1
                state["last_call"] = time.monotonic()
                state["first_call"] = state["first_call"] or state["last_call"]
            await asyncio.sleep(sleep_s)

    else:

        def handler(content: dict[str, Any]) -> None:  # type: ignore[misc]
            with lock:
                invocations[content["order_id"]] += 1
                state["last_call"] = time.monotonic()
                state["first_call"] = state["first_call"] or state["last_call"]
            if sleep_s:
                time.sleep(sleep_s)

    consumer = SQSConsumer(
        transport=SQSTransport(client=client, queue_url=url), schema_registry=SchemaRegistry(), wait_seconds=1
    )
    dispatcher = SQSMessageDispatcher(handler_registry=HandlerRegistry({OrderPlaced.MEDIA_TYPE: handler}))
    worker = Worker(
        consumer=consumer, dispatcher=dispatcher, concurrency=concurrency, prefetch=prefetch, receivers=receivers
    )
    client_note += f"; receivers={worker.receivers} prefetch={worker.prefetch} capacity={worker.capacity}"
    started = time.monotonic()
    worker.start()
    timed_out = not done.wait(timeout_s)
    end = state["end"] if not timed_out else time.monotonic()
    worker.stop()
    worker.join()
    note = client_note
    if async_handler and not invocations:
        note = "ASYNC HANDLER NEVER AWAITED (coroutine discarded); " + note
    return {
        "elapsed_s": end - started,
        "deleted": state["deleted"],
        "timed_out": timed_out,
        "duplicates": sum(count - 1 for count in invocations.values() if count > 1),
        "distinct_handled": len(invocations),
        # from the start: the first and the last handler call (where the drain's wall time goes)
        "first_call_s": state["first_call"] - started if state["first_call"] else None,
        "last_call_s": state["last_call"] - started if state["last_call"] else None,
        "note": note,
        "calls": calls.summary(),
    }


def drain_in_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run :func:`drain` in a fresh interpreter that does nothing else (for its peak RSS)."""
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)],
        check=True,
        capture_output=True,
        text=True,
        timeout=spec["timeout_s"] + 120,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- setup ----------------------------------------------------------------------------------------


def fill(client: Any, url: str, n: int, threads: int, envelope: bool) -> float:
    """Send n messages in batches of 10; return msg/s."""

    def body(i: int) -> str:
        message = json.dumps({"mediaType": OrderPlaced.MEDIA_TYPE, "order_id": f"order-{i}"})
        if not envelope:
            return message
        return json.dumps(
            {
                "Type": "Notification",
                "MessageId": str(uuid.uuid4()),
                "TopicArn": "arn:aws:sns:us-east-1:000000000000:bench",
                "Message": message,
            }
        )

    def send(start: int) -> None:
        entries = [{"Id": str(i), "MessageBody": body(start + i)} for i in range(min(10, n - start))]
        response = client.send_message_batch(QueueUrl=url, Entries=entries)
        if response.get("Failed"):
            raise RuntimeError(f"SendMessageBatch failed: {response['Failed'][:1]}")

    started = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(send, range(0, n, 10)))
    return n / (time.monotonic() - started)


@contextlib.contextmanager
def proxy_in_front(target: str, delay_ms: float | None, actions: list[str] | None, mode: str) -> Any:
    """Yield the endpoint the drains use: the target, or a latency proxy in front of it."""
    if delay_ms is None:
        yield target
        return
    if mode == "thread":
        with LatencyProxy(target, delay_ms=delay_ms, actions=actions) as proxy:
            yield proxy.url
        return
    command = [sys.executable, os.path.join(HERE, "latency_proxy.py"), "--target", target, "--delay-ms", str(delay_ms)]
    if actions:
        command += ["--actions", ",".join(actions)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        yield process.stdout.readline().strip()
    finally:
        process.terminate()
        process.wait(10)


@contextlib.contextmanager
def emulator(endpoint: str | None) -> Any:
    if endpoint:
        yield endpoint, endpoint
        return
    with EmbeddedEmulator() as embedded:
        yield embedded.endpoint_url, "embedded moto"


@dataclass
class Runs:
    rates: list[float] = field(default_factory=list)
    duplicates: list[int] = field(default_factory=list)
    rss: list[float] = field(default_factory=list)
    rss_start: list[float] = field(default_factory=list)
    elapsed: list[float] = field(default_factory=list)
    pool_full: int = 0
    timeouts: int = 0
    notes: set[str] = field(default_factory=set)


def run_one(
    args: argparse.Namespace,
    setup: Any,
    drain_endpoint: str,
    side: str,
    concurrency: int,
    round_: int,
    run: Runs,
    fill_rates: list[float],
) -> None:
    """One drain of a fresh, filled queue by one side; its figures go into ``run``."""
    name = f"bench-{side}-{uuid.uuid4().hex[:8]}"
    url = setup.create_queue(QueueName=name)["QueueUrl"]
    try:
        fill_rates.append(fill(setup, url, args.n, args.fill_threads, args.envelope))
        spec = {
            "side": side,
            "n": args.n,
            "concurrency": concurrency,
            "endpoint": drain_endpoint,
            "queue_url": url,
            "handler_sleep_ms": args.handler_sleep_ms,
            "timeout_s": args.timeout,
            "async_handler": args.async_handler and side == "microbus",
            "prefetch": args.prefetch,
            "receivers": args.receivers,
        }
        result = drain_in_child(spec) if args.rss else drain(spec)
    finally:
        setup.delete_queue(QueueUrl=url)
    run.rates.append(result["deleted"] / result["elapsed_s"])
    run.duplicates.append(result["duplicates"])
    run.rss.append(result["rss_peak_mb"])
    run.rss_start.append(result["rss_start_mb"])
    run.elapsed.append(result["elapsed_s"])
    run.pool_full += result.get("pool_full", 0)
    run.timeouts += result["timed_out"]
    if result["note"]:
        run.notes.add(result["note"])
    print(
        f"  round {round_ + 1} {side:8} c={concurrency:<3} {run.rates[-1]:8.0f} msg/s"
        f"  {result['elapsed_s']:6.2f}s  cpu={result['cpu_s'] / result['elapsed_s']:.0%}"
        f"  dup={result['duplicates']}"
        + ("  TIMEOUT" if result["timed_out"] else "")
        + (f"  POOL FULL x{result['pool_full']}" if result.get("pool_full") else "")
        + (
            f"  calls {result['first_call_s']:.2f}-{result['last_call_s']:.2f}s"
            if result.get("first_call_s") is not None
            else ""
        )
        + (f"  [{result['calls']}]" if result.get("calls") else "")
        + (f"  rss={result['rss_peak_mb']:.0f}MB" if args.rss else ""),
        file=sys.stderr,
        flush=True,
    )


def report(
    args: argparse.Namespace,
    runs: dict[tuple[str, int], Runs],
    concurrencies: list[int],
    sides: list[str],
    actions: list[str] | None,
    where: str,
    fill_rates: list[float],
    started: float,
) -> None:
    """Print the table: medians, ranges, microbus/bare ratios, duplicates (and RSS with ``--rss``)."""
    proxy = "no proxy"
    if args.proxy_delay_ms is not None:
        proxy = f"proxy {args.proxy_delay_ms:g} ms ({args.proxy_mode})" + (
            f" on {','.join(actions)}" if actions else ""
        )
    handler = f"handler sleep {args.handler_sleep_ms:g} ms" + (" (async def)" if args.async_handler else "")
    print(
        f"\n{args.n} messages x {args.rounds} rounds, {where}, {proxy}, {handler}, "
        f"{'enveloped' if args.envelope else 'raw'} bodies; fill {statistics.median(fill_rates):.0f} msg/s; "
        f"total {time.monotonic() - started:.0f}s"
    )
    header = f"{'side':9} {'conc':>4} {'msg/s med':>10} {'min-max':>13} {'mb/bare':>8} {'dups':>6} {'wall s':>7}"
    if args.rss:
        header += f" {'RSS start':>10} {'RSS peak':>9}  (child VmHWM: before / after draining)"
    print(header)
    for concurrency in concurrencies:
        for side in sides:
            run = runs[(side, concurrency)]
            median = statistics.median(run.rates)
            ratio = ""
            if side == "microbus" and ("bare", concurrency) in runs:
                ratio = f"{median / statistics.median(runs[('bare', concurrency)].rates):.2f}"
            line = (
                f"{side:9} {concurrency:4} {median:10.0f} {min(run.rates):6.0f}-{max(run.rates):<6.0f} {ratio:>8}"
                f" {sum(run.duplicates):6} {statistics.median(run.elapsed):7.2f}"
            )
            if args.rss:
                line += f" {statistics.median(run.rss_start):8.1f}MB {statistics.median(run.rss):7.1f}MB"
            if run.timeouts:
                line += f"  ({run.timeouts} timed out)"
            if run.pool_full:
                line += f"  ({run.pool_full} 'Connection pool is full' warnings)"
            print(line)
    notes = sorted({note for run in runs.values() for note in run.notes})
    for note in notes:
        print(f"note (microbus): {note}")


def main() -> None:
    parser = argparse.ArgumentParser(description="Consume throughput: microbus Worker vs a bare boto3 loop.")
    parser.add_argument("--endpoint", help="emulator endpoint URL (default: start an embedded moto server)")
    parser.add_argument("--proxy-delay-ms", type=float, default=None, help="put the latency proxy in between")
    parser.add_argument("--delay-actions", default="", help="only delay these actions, e.g. DeleteMessageBatch")
    parser.add_argument(
        "--proxy-mode",
        choices=("process", "thread"),
        default="process",
        help="proxy in its own process (default; no GIL shared with the clients) or a thread here",
    )
    parser.add_argument("--n", type=int, default=3000, help="messages per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", default="1,4", help="comma list; bare uses the same thread counts")
    parser.add_argument("--sides", default="bare,microbus")
    parser.add_argument("--handler-sleep-ms", type=float, default=0.0)
    parser.add_argument("--async-handler", action="store_true", help="microbus handler is async def (asyncio.sleep)")
    parser.add_argument("--prefetch", type=int, default=None, help="Worker(prefetch=) (default: the Worker's)")
    parser.add_argument("--receivers", type=int, default=None, help="Worker(receivers=) (default: the Worker's)")
    parser.add_argument("--envelope", action="store_true", help="wrap bodies in an SNS notification envelope")
    parser.add_argument("--rss", action="store_true", help="drain in a child process and report its peak RSS")
    parser.add_argument("--fill-threads", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=120.0, help="per drain, seconds")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="coroutine .* was never awaited")
    if args.child:
        print(json.dumps(drain(json.loads(args.child))))
        return

    concurrencies = [int(c) for c in args.concurrency.split(",") if c]
    sides = [s for s in args.sides.split(",") if s]
    actions = [a for a in args.delay_actions.split(",") if a] or None
    runs: dict[tuple[str, int], Runs] = collections.defaultdict(Runs)
    fill_rates: list[float] = []
    started = time.monotonic()
    with (
        emulator(args.endpoint) as (target, where),
        proxy_in_front(target, args.proxy_delay_ms, actions, args.proxy_mode) as drain_endpoint,
    ):
        setup = make_client(target, args.fill_threads + 8)
        for round_ in range(args.rounds):
            for concurrency in concurrencies:
                for side in sides:
                    run_one(
                        args, setup, drain_endpoint, side, concurrency, round_, runs[(side, concurrency)], fill_rates
                    )

    report(args, runs, concurrencies, sides, actions, where, fill_rates, started)


if __name__ == "__main__":
    main()
