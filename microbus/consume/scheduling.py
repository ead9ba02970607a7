"""Scheduling: which waiting messages may start — at most ``concurrency`` running, FIFO groups one at a time.

Messages start in order of receipt. On a FIFO queue a message whose group has one running waits (the ones
behind it of other groups go ahead); when a message of a group fails and will be retried, the group's later
waiting messages are taken out, to be returned to the queue unstarted, so the group's order holds when the
failed one comes back. Thread-safe; every method returns at once except :meth:`wait_idle`.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from microbus.consume.lifecycle import MessageState, Tracked


class Scheduler:
    """The waiting and running messages of one worker."""

    def __init__(self, concurrency: int) -> None:
        self.concurrency = max(1, concurrency)
        self._waiting: deque[Tracked] = deque()
        self._running: set[Tracked] = set()
        self._busy_groups: set[str] = set()
        self._closed = False
        self._paused = False
        self._cond = threading.Condition()

    @property
    def waiting(self) -> int:
        """Messages waiting for a handler."""
        with self._cond:
            return len(self._waiting)

    def add(self, batch: list[Tracked]) -> tuple[list[Tracked], list[Tracked]]:
        """Queue received messages; return the ones to start now, and the ones refused (closed: release them)."""
        with self._cond:
            if self._closed or self._paused:
                return [], batch
            for tracked in batch:
                tracked.advance(MessageState.WAITING)
            self._waiting.extend(batch)
            return self._pick(), []

    def finished(self, tracked: Tracked, *, retried: bool) -> tuple[list[Tracked], list[Tracked]]:
        """A handler ended (``retried``: its message will come back); return the messages to start now, and
        the group's later messages to return unstarted."""
        with self._cond:
            self._running.discard(tracked)
            later: list[Tracked] = []
            if tracked.group is not None:
                self._busy_groups.discard(tracked.group)
                if retried:
                    later = [t for t in self._waiting if t.group == tracked.group]
                    for t in later:
                        self._waiting.remove(t)
            startable = self._pick()
            if not self._running:  # wait_idle's condition
                self._cond.notify_all()
            return startable, later

    def close(self) -> list[Tracked]:
        """Start nothing more; return every waiting message (to be returned to the queue unstarted)."""
        with self._cond:
            self._closed = True
            return self._take_waiting()

    def pause(self) -> list[Tracked]:
        """Start nothing and take nothing until :meth:`resume`; return every waiting message (to release)."""
        with self._cond:
            self._paused = True
            return self._take_waiting()

    def resume(self) -> None:
        """Take and start messages again after :meth:`pause`."""
        with self._cond:
            self._paused = False

    def wait_idle(self, timeout_s: float) -> int:
        """Wait at most ``timeout_s`` for the running handlers to end; return how many still run."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._cond.wait_for(lambda: not self._running, timeout=max(0.0, deadline - time.monotonic()))
            return len(self._running)

    def _take_waiting(self) -> list[Tracked]:
        """(Under the lock.) Take every waiting message out."""
        waiting = list(self._waiting)
        self._waiting.clear()
        return waiting

    def _pick(self) -> list[Tracked]:
        """(Under the lock.) Take the waiting messages that may start, and mark them running."""
        picked: list[Tracked] = []
        if self._closed or self._paused:
            return picked
        skipped: list[Tracked] = []
        while len(self._running) < self.concurrency and self._waiting:
            tracked = self._waiting.popleft()
            if tracked.group is not None and tracked.group in self._busy_groups:
                skipped.append(tracked)
                continue
            tracked.advance(MessageState.RUNNING)
            self._running.add(tracked)
            if tracked.group is not None:
                self._busy_groups.add(tracked.group)
            picked.append(tracked)
        self._waiting.extendleft(reversed(skipped))
        return picked
