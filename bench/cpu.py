"""Framework CPU per message, with the in-memory stub transport (no network, no emulator).

    .venv/bin/python bench/cpu.py [--n 20000] [--rounds 3] [--repeat 3] [--concurrency 1,4] [--no-worker]

0. reference: a fixed workload without microbus (JSON parse and encode of a body, a dict, a short loop), the
   machine's speed at the time: on a loaded machine every figure rises with it.
1. decode: ``consumer.consume()`` on a StubQueue (JSON parse, schema decode, SQSMessage), the stubs sharing one
   schema registry as a daemon's consumers do — µs/message.
2. dispatch: ``dispatcher.handle(message)`` + ``dispatcher.apply(...)`` over pre-decoded messages with a
   no-op handler and a no-op ack, with the ``microbus`` loggers at WARNING (the per-message INFO line
   is skipped), at INFO to a ``NullHandler`` (record built, not formatted) and at INFO formatted to
   /dev/null — µs/message.
3. worker: a Worker on a StubQueue preloaded with N messages, concurrency 1 and 4, until the queue is
   empty (acks included): process CPU time (``time.process_time``, all threads) per message, and the
   wall time. The stub's own work (a dict and a lock) is included; logging at INFO to a NullHandler.

Each round measures the reference, decode and dispatch ``--repeat`` times in turn and keeps each one's best
(the least disturbed by other processes); the median and the minimum over ``--rounds`` rounds are printed. The
machine may be shared: compare two trees by running them alternately, each with its reference line.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import statistics
import sys
import time
from typing import Any

from microbus.reference.schemas import OrderPlaced

from microbus import HandlerRegistry, SQSMessageDispatcher, Worker
from microbus.testing import StubQueue, wait_for
from microbus.wire.schemas import SchemaRegistry


def body(i: int) -> dict[str, Any]:
    return {"mediaType": OrderPlaced.MEDIA_TYPE, "order_id": f"order-{i}"}


def set_logging(mode: str) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    if mode == "warning":
        root.addHandler(logging.NullHandler())
        root.setLevel(logging.WARNING)
    elif mode == "null":
        root.addHandler(logging.NullHandler())
        root.setLevel(logging.INFO)
    else:  # formatted to /dev/null, the cost of a real INFO log line minus the I/O
        stream = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)


def reference_us(n: int) -> float:
    """CPU µs of a fixed framework-free workload per message (parse and re-encode a body, build a dict, 50 loop
    turns): the machine's speed now, to compare figures taken under different loads."""
    text = json.dumps(body(0))
    began = time.process_time()
    for i in range(n):
        parsed = json.loads(text)
        json.dumps({**parsed, "i": i, "s": sum(range(50))})
    return (time.process_time() - began) / n * 1e6


def decoded_messages(n: int) -> tuple[list[Any], Any, float]:
    """n decoded messages (received 10 at a time from small stubs) and the decode CPU µs/message.

    The stubs share one schema registry, as the consumers of a daemon do: a registry builds each schema's codec
    once, and one registry per 10 messages would count that build in every tenth message.
    """
    messages: list[Any] = []
    consumer = None
    spent = 0.0
    registry = SchemaRegistry()
    for start in range(0, n, 10):
        stub = StubQueue()
        for i in range(start, min(n, start + 10)):
            stub.put(body(i))
        consumer = stub.consumer(registry)
        began = time.process_time()
        batch = consumer.consume(limit=10)
        spent += time.process_time() - began
        messages += batch
    assert all(m.error is None for m in messages), messages[0].error
    return messages, consumer, spent / n * 1e6


def apply_kwargs(dispatcher: Any, consumer: Any, ack: Any) -> dict[str, Any]:
    """The keyword arguments this dispatcher's ``apply`` takes (today: consumer=, ack=)."""
    params = inspect.signature(dispatcher.apply).parameters
    offered = {"consumer": consumer, "ack": ack}
    return {name: value for name, value in offered.items() if name in params}


def dispatch_us(messages: list[Any], consumer: Any) -> float:
    dispatcher = SQSMessageDispatcher(handler_registry=HandlerRegistry({OrderPlaced.MEDIA_TYPE: lambda content: None}))
    kwargs = apply_kwargs(dispatcher, consumer, lambda message: None)
    began = time.process_time()
    for message in messages:
        result = dispatcher.handle(message)
        dispatcher.apply(result, message, **kwargs)
    return (time.process_time() - began) / len(messages) * 1e6


def worker_run(n: int, concurrency: int) -> tuple[float, float]:
    """CPU µs/message and wall msg/s of a Worker draining a preloaded StubQueue."""
    stub = StubQueue()
    for i in range(n):
        stub.put(body(i))
    worker = Worker(
        consumer=stub.consumer(),
        dispatcher=SQSMessageDispatcher(handler_registry=HandlerRegistry({OrderPlaced.MEDIA_TYPE: lambda c: None})),
        concurrency=concurrency,
    )
    cpu0, wall0 = time.process_time(), time.perf_counter()
    worker.start()
    wait_for(lambda: stub.depth == 0, timeout_s=300, interval_s=0.002, what="the stub queue to drain")
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    worker.stop()
    worker.join()
    return cpu / n * 1e6, n / wall


def _keep_best(best: dict[str, float], name: str, value: float) -> None:
    best[name] = min(value, best.get(name, value))


def _figures(values: list[float]) -> str:
    return f"{statistics.median(values):6.1f} µs/msg (min {min(values):5.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description="microbus CPU per message on the stub transport")
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each section per round (its best counts)")
    parser.add_argument("--concurrency", default="1,4")
    parser.add_argument("--no-worker", action="store_true", help="leave out the Worker section")
    args = parser.parse_args()
    concurrencies = [] if args.no_worker else [int(c) for c in args.concurrency.split(",") if c]
    reference: list[float] = []
    decode: list[float] = []
    dispatch: dict[str, list[float]] = {mode: [] for mode in ("warning", "null", "devnull")}
    worker: dict[int, list[tuple[float, float]]] = {c: [] for c in concurrencies}
    for _ in range(args.rounds):
        best: dict[str, float] = {}
        for _ in range(max(1, args.repeat)):
            set_logging("warning")
            _keep_best(best, "reference", reference_us(args.n))
            messages, consumer, decode_us = decoded_messages(args.n)
            _keep_best(best, "decode", decode_us)
            for mode in dispatch:
                set_logging(mode)
                _keep_best(best, mode, dispatch_us(messages, consumer))
        reference.append(best["reference"])
        decode.append(best["decode"])
        for mode, values in dispatch.items():
            values.append(best[mode])
        set_logging("null")
        for concurrency in concurrencies:
            worker[concurrency].append(worker_run(args.n, concurrency))
    set_logging("warning")
    print(
        f"microbus CPU per message, stub transport, N={args.n}, median and min of {args.rounds} rounds "
        f"(each the best of {max(1, args.repeat)} runs), Python {sys.version.split()[0]}"
    )
    print(f"  reference no microbus (the machine's speed now)  {_figures(reference)}")
    print(f"  decode   consumer.consume() (JSON + schema)      {_figures(decode)}")
    labels = {
        "warning": "WARNING (INFO line skipped)",
        "null": "INFO -> NullHandler",
        "devnull": "INFO formatted -> /dev/null",
    }
    for mode, values in dispatch.items():
        print(f"  dispatch handle+apply, {labels[mode]:28}{_figures(values)}")
    for concurrency, values in worker.items():
        cpu = statistics.median(v[0] for v in values)
        rate = statistics.median(v[1] for v in values)
        print(
            f"  worker   concurrency={concurrency:<2} INFO -> NullHandler      {cpu:7.1f} µs/msg CPU"
            f"  ({rate:,.0f} msg/s wall)"
        )


if __name__ == "__main__":
    main()
