"""Supervision of background activities: an activity that raises is logged, reported down, restarted with backoff.

An activity is a *step* function called in a loop on its own thread until the supervisor stops. A step that
raises is logged (a :class:`~microbus.errors.TransportError` in one line, anything else with its traceback),
the activity is reported down (an ACTIVITY_DOWN event, :attr:`Supervisor.down`) and the step is called
again after a backoff; the first step that returns after that reports it up again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from microbus.consume.lifecycle import EventKind, LifecycleEvent, Observers
from microbus.errors import TransportError

logger = logging.getLogger(__name__)


def restart_backoff_s(failures: int, *, base_s: float = 0.5, max_s: float = 20.0) -> float:
    """Pause before restarting after the ``failures``-th consecutive failure: doubling from ``base_s``, capped."""
    return float(min(max_s, base_s * 2 ** min(max(0, failures - 1), 16)))


class Supervisor:
    """Runs named activities on daemon threads and restarts the ones that raise.

    Parameters:
        queue_url: names the queue in events.
        observers: receive ACTIVITY_DOWN / ACTIVITY_UP.
        max_backoff_s: cap of the pause between restarts.
    """

    def __init__(self, *, queue_url: str, observers: Observers, max_backoff_s: float = 20.0) -> None:
        self.queue_url = queue_url
        self.observers = observers
        self.max_backoff_s = max_backoff_s
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._down: dict[str, float] = {}
        self._lock = threading.Lock()

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called."""
        return self._stop.is_set()

    @property
    def down(self) -> set[str]:
        """The activities that are down (failed, waiting to be restarted)."""
        with self._lock:
            return set(self._down)

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``, waking at :meth:`stop`; True when stopping."""
        return self._stop.wait(max(0.0, seconds))

    def start(self, name: str, step: Callable[[], None]) -> None:
        """Call ``step`` in a loop on a new thread until :meth:`stop`."""
        thread = threading.Thread(target=self._run, args=(name, step), name=f"microbus-{name}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def stop(self) -> None:
        """Ask every activity to stop after its current step."""
        self._stop.set()

    def join(self, timeout_s: float) -> list[str]:
        """Wait at most ``timeout_s`` in all for the activities' threads; return the names still running."""
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return [thread.name for thread in self._threads if thread.is_alive()]

    def run_step(self, name: str, step: Callable[[], None], failures: int) -> int:
        """Run one step under supervision; return the count of consecutive failures after it."""
        try:
            step()
        except Exception as exc:  # everything: an activity must never die silently
            failures += 1
            self._report_down(name, exc, failures)
            self.wait(restart_backoff_s(failures, max_s=self.max_backoff_s))
            return failures
        if failures:
            self._report_up(name, failures)
        return 0

    def _run(self, name: str, step: Callable[[], None]) -> None:
        failures = 0
        while not self.stopping:
            failures = self.run_step(name, step, failures)

    def _report_down(self, name: str, exc: Exception, failures: int) -> None:
        if self.stopping:  # e.g. a long poll that outlived the shutdown, cut off with the endpoint
            logger.debug("%s failed after the stop: %s", name, exc)
            return
        with self._lock:
            first = name not in self._down
            self._down.setdefault(name, time.monotonic())
        if not first:
            return
        if isinstance(exc, TransportError):
            logger.warning("%s failing, retrying with backoff until it recovers: %s", name, exc)
        else:
            logger.error("%s failed unexpectedly; restarting it with backoff", name, exc_info=exc)
        self.observers.emit(
            LifecycleEvent(EventKind.ACTIVITY_DOWN, self.queue_url, at=time.monotonic(), activity=name, error=exc)
        )

    def _report_up(self, name: str, failures: int) -> None:
        with self._lock:
            since = self._down.pop(name, None)
        now = time.monotonic()
        down_s = now - since if since is not None else 0.0
        logger.info("%s recovered after %d failed attempts (%.1fs)", name, failures, down_s)
        self.observers.emit(
            LifecycleEvent(EventKind.ACTIVITY_UP, self.queue_url, at=now, elapsed_s=down_s, activity=name)
        )
