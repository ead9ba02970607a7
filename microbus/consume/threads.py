"""A pool of daemon threads for calls whose outcome the caller handles itself: no futures, no exit join.

The standard ThreadPoolExecutor's threads are joined at interpreter exit, so a call still out after the grace
period would keep a stopped daemon alive; these threads end with the process. A submitted call reports its own
outcome (the settler's batch calls do); one that raises anyway is logged with its traceback and the thread goes
on.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

_Work = tuple[Callable[..., object], tuple[Any, ...]]


class DaemonThreadPool:
    """Runs submitted calls on up to ``size`` daemon threads, started on demand."""

    def __init__(self, size: int, *, name: str) -> None:
        self.size = max(1, size)
        self.name = name
        self._work: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._lock = threading.Lock()
        self._shutdown = False

    def submit(self, fn: Callable[..., object], /, *args: Any) -> None:
        """Schedule ``fn(*args)``; a thread is started when none is idle and fewer than ``size`` run.

        Raises:
            RuntimeError: the pool is shut down.
        """
        with self._lock:
            if self._shutdown:
                raise RuntimeError(f"{self.name} is shut down")
            self._work.put((fn, args))
            if self._idle == 0 and len(self._threads) < self.size:
                thread = threading.Thread(target=self._run, name=f"{self.name}-{len(self._threads)}", daemon=True)
                self._threads.append(thread)
                thread.start()
            else:
                self._idle = max(0, self._idle - 1)

    def shutdown(self, *, cancel_pending: bool = True) -> None:
        """Take no more work and drop what has not started (``cancel_pending``); never waits for a running call."""
        with self._lock:
            self._shutdown = True
            threads = list(self._threads)
        while cancel_pending:
            try:
                self._work.get_nowait()
            except queue.Empty:
                break
        for _ in threads:
            self._work.put(None)

    def _run(self) -> None:
        while (item := self._work.get()) is not None:
            fn, args = item
            try:
                fn(*args)
            except Exception:  # the call reports its own outcome: this is a bug, and the thread must go on
                logger.exception("%s: a call raised", self.name)
            with self._lock:
                self._idle += 1
