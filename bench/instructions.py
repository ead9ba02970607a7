"""Instructions per message under valgrind: the CPU figures of ``cpu.py`` without a loaded machine's noise.

    .venv/bin/python bench/instructions.py [--n 1000] [--concurrency 1,4] [--parts reference,decode,dispatch,worker]
        [--pythonpath DIR]

On a shared machine ``cpu.py``'s µs move by 2× from one minute to the next (its reference line shows it); the
number of instructions a part executes does not. Each part runs in a child under ``valgrind --tool=callgrind``
twice, with 0 and with N messages, and the difference divided by N is printed: the start-up (imports, the
stub's set-up) cancels out. The parts are those of ``cpu.py``: the framework-free reference, decode, decode +
dispatch at INFO to a NullHandler, and a Worker at each concurrency (the stub's queue fill included, as in
``cpu.py``). ``--pythonpath`` measures another tree (e.g. a ``git archive`` of main) with the same bench.

What instructions miss: under valgrind the threads run one at a time, so the cost of handing the GIL from core
to core (a Worker's threads on a multi-core machine) is not counted; ``cpu.py`` shows it.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

_CHILD = """
import sys
sys.path.insert(0, {bench!r})
import cpu
cpu.set_logging("null")
n, part, concurrency = {n}, {part!r}, {concurrency}
if part == "reference":
    cpu.reference_us(n) if n else None
elif part == "worker":
    cpu.worker_run(n, concurrency) if n else None
elif n:
    messages, consumer, _ = cpu.decoded_messages(n)
    if part == "dispatch":
        cpu.dispatch_us(messages, consumer)
"""


def instructions(n: int, part: str, concurrency: int, pythonpath: str | None) -> int:
    """Instructions valgrind counted for one child run."""
    code = _CHILD.format(bench=str(Path(__file__).parent), n=n, part=part, concurrency=concurrency)
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    run = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd="/",  # not the checkout: --pythonpath must win over the working directory
        check=True,
    )
    found = re.search(r"Collected\s*:\s*(\d+)", run.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count from valgrind: {run.stderr[-500:]}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description="microbus instructions per message, under valgrind")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--concurrency", default="1,4")
    parser.add_argument("--parts", default="reference,decode,dispatch,worker")
    parser.add_argument("--pythonpath", default=None, help="the tree to measure (default: the installed one)")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (apt-get install valgrind)")
    runs: list[tuple[str, str, int]] = []
    for part in args.parts.split(","):
        if part == "worker":
            runs += [(f"worker concurrency={c}", part, int(c)) for c in args.concurrency.split(",")]
        else:
            runs.append((part, part, 1))
    print(f"instructions per message (valgrind), N={args.n}, Python {sys.version.split()[0]}")
    for label, part, concurrency in runs:
        base = instructions(0, part, concurrency, args.pythonpath)
        full = instructions(args.n, part, concurrency, args.pythonpath)
        print(f"  {label:22} {(full - base) / args.n:10,.0f}", flush=True)
    print("decode includes the stub's fill; dispatch = decode + dispatch; worker = fill + decode + dispatch + runtime")


if __name__ == "__main__":
    main()
