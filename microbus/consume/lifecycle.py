"""The message lifecycle: one state holder per received message, and the events observers receive.

A message goes ``received → waiting → running → settling → settled``; a message that is returned to the
queue unstarted goes ``waiting → settling → settled`` (released). Each transition is one
:class:`LifecycleEvent`, delivered to every :class:`LifecycleObserver`; logs, counters and (later)
metrics and traces are observers, never counters of their own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from microbus.consume.dispatch import Outcome, Result
    from microbus.consume.message import SQSMessage

logger = logging.getLogger(__name__)


class MessageState(Enum):
    """Where a received message is in its lifecycle."""

    RECEIVED = "received"
    WAITING = "waiting"
    RUNNING = "running"
    SETTLING = "settling"
    SETTLED = "settled"


class EventKind(Enum):
    """The kinds of lifecycle events."""

    RECEIVED = "received"
    """Received from the queue (now held, under the heartbeat)."""
    STARTED = "started"
    """Its handler started."""
    FINISHED = "finished"
    """Its handler returned or raised; ``outcome`` says how."""
    SETTLED = "settled"
    """Deleted, or its retry visibility set, as SQS confirmed; no longer held."""
    RELEASED = "released"
    """Returned to the queue unstarted (visibility 0); no longer held."""
    RESENT = "re-sent"
    """Not due yet: a fresh copy was sent to the queue and the original deleted (its receive count starts
    again); not handled. No longer held."""
    DEAD_LETTERED = "dead-lettered"
    """Its copy is in the dead-letter queue and the original was deleted; no longer held."""
    SETTLE_FAILED = "settle-failed"
    """Settling was given up on (e.g. a stale receipt handle); the message will reappear. No longer held."""
    ACTIVITY_DOWN = "activity-down"
    """A background activity (``activity``) failed and is being restarted."""
    ACTIVITY_UP = "activity-up"
    """A background activity recovered."""
    CIRCUIT_OPENED = "circuit-opened"
    """The circuit breaker opened (``detail`` says why): receiving stops for the cool-down."""
    CIRCUIT_HALF_OPENED = "circuit-half-opened"
    """The cool-down is over: one trial message is received."""
    CIRCUIT_CLOSED = "circuit-closed"
    """The trial message succeeded: receiving resumes."""


@dataclass(frozen=True, slots=True)
class LifecycleEvent:
    """One transition of one message (or of one background activity).

    ``at`` is ``time.monotonic()`` at the transition; ``elapsed_s`` the time since the message was received
    (for ACTIVITY_UP: how long the activity was down).
    """

    kind: EventKind
    queue_url: str
    at: float
    elapsed_s: float = 0.0
    message_id: str | None = None
    media_type: str | None = None
    receive_count: int = 0
    outcome: Outcome | None = None
    result: Result | None = None
    activity: str | None = None
    error: BaseException | None = None
    detail: str | None = None
    message: SQSMessage | None = None
    """The message itself (its ids, cid, attributes and publish time); None for activity events."""


# The slots' setters: a frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``, which
# made a message's four events cost 8 µs; Tracked.event builds the same immutable event through these.
_new_event = object.__new__


def _setter(name: str) -> Callable[[LifecycleEvent, object], None]:
    setter: Callable[[LifecycleEvent, object], None] = getattr(LifecycleEvent, name).__set__
    return setter


_set_kind, _set_queue_url, _set_at, _set_elapsed_s = map(_setter, ("kind", "queue_url", "at", "elapsed_s"))
_set_message_id, _set_media_type, _set_receive_count = map(_setter, ("message_id", "media_type", "receive_count"))
_set_outcome, _set_result, _set_activity = map(_setter, ("outcome", "result", "activity"))
_set_error, _set_detail, _set_message = map(_setter, ("error", "detail", "message"))


class LifecycleObserver(Protocol):
    """Receives lifecycle events; must be fast and must not raise (a raising observer is logged).

    An observer with an ``observed_kinds`` attribute (a set of :class:`EventKind`) receives only the events of
    those kinds; without one it receives every event.
    """

    def on_event(self, event: LifecycleEvent) -> None:
        """Called once per transition, from the thread that made it."""


class Observers:
    """Delivers each event to the observers of its kind; one that raises is logged (once per observer) and
    skipped. An event of a kind no observer takes is not built at all (see :meth:`wants`)."""

    def __init__(self, observers: Iterable[LifecycleObserver] = ()) -> None:
        self._observers: list[LifecycleObserver] = []
        self._by_kind: dict[str, tuple[LifecycleObserver, ...]] = {}
        self._failed: set[int] = set()
        for observer in observers:
            self.add(observer)

    def add(self, observer: LifecycleObserver) -> None:
        """Add an observer."""
        self._observers.append(observer)
        by_kind: dict[str, tuple[LifecycleObserver, ...]] = {}
        for kind in EventKind:
            by_kind[kind._name_] = tuple(o for o in self._observers if _takes(o, kind))
        self._by_kind = by_kind  # replaced whole: a concurrent emit sees the old table or the new one

    def wants(self, kind: EventKind) -> bool:
        """True when some observer takes events of ``kind``."""
        return bool(self._by_kind[kind._name_])

    def emit(self, event: LifecycleEvent) -> None:
        """Deliver ``event`` to the observers that take its kind."""
        for observer in self._by_kind[event.kind._name_]:
            try:
                observer.on_event(event)
            except Exception:
                if id(observer) not in self._failed:
                    self._failed.add(id(observer))
                    logger.exception("Lifecycle observer %s failed (logged once)", type(observer).__name__)


def _takes(observer: LifecycleObserver, kind: EventKind) -> bool:
    kinds = getattr(observer, "observed_kinds", None)
    return not isinstance(kinds, set | frozenset) or kind in kinds


_NEXT: dict[MessageState, tuple[MessageState, ...]] = {
    MessageState.RECEIVED: (MessageState.WAITING, MessageState.SETTLING),
    MessageState.WAITING: (MessageState.RUNNING, MessageState.SETTLING),
    MessageState.RUNNING: (MessageState.SETTLING,),
    MessageState.SETTLING: (MessageState.SETTLED,),
    MessageState.SETTLED: (),
}
_NEXT_BY_NAME = {state.name: allowed for state, allowed in _NEXT.items()}  # by name: Enum hashing is slow


_STATE_LOCK = threading.Lock()
"""Guards every Tracked's state and wire claim: each hold is a few bytecodes, and one lock for all saves a lock
per received message."""


@dataclass(eq=False, slots=True)
class Tracked:
    """The state holder of one received message; every transition goes through :meth:`advance`."""

    message: SQSMessage
    received_at: float = field(default_factory=time.monotonic)
    state: MessageState = MessageState.RECEIVED
    result: Result | None = None
    _on_wire: bool = field(default=False, repr=False)

    @property
    def group(self) -> str | None:
        """The FIFO message group, if any."""
        return self.message.message_group_id

    def advance(self, to: MessageState) -> bool:
        """Move to ``to``; False (and no change) when that is not a legal next state."""
        with _STATE_LOCK:
            if to not in _NEXT_BY_NAME[self.state._name_]:
                return False
            self.state = to
            return True

    def claim_wire(self) -> bool:
        """Claim the message for one visibility call; False while another one (heartbeat or settling) is out.

        Two visibility calls for one message must not race: a heartbeat extension landing after a release
        would hide the message again.
        """
        with _STATE_LOCK:
            if self._on_wire:
                return False
            self._on_wire = True
            return True

    def release_wire(self) -> None:
        """End the claim of :meth:`claim_wire`."""
        with _STATE_LOCK:
            self._on_wire = False

    @property
    def settled(self) -> bool:
        """True once settled (however it ended)."""
        return self.state is MessageState.SETTLED

    def event(
        self,
        kind: EventKind,
        queue_url: str,
        *,
        outcome: Outcome | None = None,
        result: Result | None = None,
        detail: str | None = None,
    ) -> LifecycleEvent:
        """An event about this message, timed now (the same as ``LifecycleEvent(...)``, built field by field)."""
        now = time.monotonic()
        message = self.message
        event = _new_event(LifecycleEvent)
        _set_kind(event, kind)
        _set_queue_url(event, queue_url)
        _set_at(event, now)
        _set_elapsed_s(event, now - self.received_at)
        _set_message_id(event, message.message_id)
        _set_media_type(event, message.media_type)
        _set_receive_count(event, message.approximate_receive_count)
        _set_outcome(event, outcome)
        _set_result(event, result)
        _set_activity(event, None)
        _set_error(event, None)
        _set_detail(event, detail)
        _set_message(event, message)
        return event
