"""Circuit breaker: stop receiving while most handlers fail (a downstream outage), then try one message.

The breaker is a lifecycle observer of handler outcomes. Of the last ``window`` counted outcomes (FAILED and
EXPIRED count as failures; SUCCEEDED, SKIPPED and IGNORED as successes; REJECTED poison and RETRIED, a
handler's own ``Nack``, are not counted), when at least ``threshold`` failed, it opens: the worker stops
receiving for ``cooldown_s`` and returns what it holds unstarted. Then it is half-open: one receive of one
message (the trial). The trial's success closes it (receiving resumes); its failure opens it again.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from microbus.consume.dispatch import Outcome
from microbus.consume.dispatch import _truthy as truthy
from microbus.consume.lifecycle import EventKind, LifecycleEvent
from microbus.errors import ConfigurationError

logger = logging.getLogger(__name__)

_FAILURES = frozenset({Outcome.FAILED, Outcome.EXPIRED})
_SUCCESSES = frozenset({Outcome.SUCCEEDED, Outcome.SKIPPED, Outcome.IGNORED})
_TRIAL_PAUSE_S = 0.2
"""How often a receiver looks again while the trial message is out."""


class CircuitState(Enum):
    """Where the breaker is."""

    CLOSED = "closed"
    """Receiving as usual."""
    OPEN = "open"
    """Not receiving, until the cool-down ends."""
    HALF_OPEN = "half-open"
    """One trial message is received and handled; its outcome decides."""


@dataclass(frozen=True)
class CircuitBreakerSettings:
    """When the breaker opens and for how long.

    Raises:
        ConfigurationError: ``threshold`` is not in (0, 1], ``window`` is below 1, or ``cooldown_s`` below 1.
    """

    threshold: float = 0.5
    """Fraction of failures among the last ``window`` counted outcomes that opens the circuit."""
    window: int = 20
    """Counted outcomes looked at; the circuit opens only once that many were seen since it last closed."""
    cooldown_s: float = 30.0
    """Seconds without receiving before the trial message."""

    def __post_init__(self) -> None:
        if not 0 < self.threshold <= 1:
            raise ConfigurationError(f"circuit_breaker.threshold must be in (0, 1], not {self.threshold!r}")
        if self.window < 1:
            raise ConfigurationError(f"circuit_breaker.window must be at least 1, not {self.window!r}")
        if not 1 <= self.cooldown_s < math.inf:
            raise ConfigurationError(f"circuit_breaker.cooldown_s must be 1 second or more, not {self.cooldown_s!r}")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> CircuitBreakerSettings:
        """Settings from a ``worker.circuit_breaker`` config section (missing keys take the defaults).

        Raises:
            ConfigurationError: a value is not a number, or out of range.
        """
        defaults = cls()
        try:
            return cls(
                threshold=float(config.get("threshold", defaults.threshold)),
                window=int(config.get("window", defaults.window)),
                cooldown_s=float(config.get("cooldown_s", defaults.cooldown_s)),
            )
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(
                f"worker.circuit_breaker needs numbers for threshold, window and cooldown_s: {exc}"
            ) from exc


@dataclass(frozen=True)
class ReceivePermit:
    """What one receive may take: ``limit`` None as many as fit, 1 for the trial."""

    limit: int | None
    generation: int


Transition = Callable[[CircuitState, str], None]
"""Called with the new state and a sentence saying why, after each transition, one at a time."""
_Transition = tuple[CircuitState, str, int, int]
"""The new state, why, the level of its log line, and the generation it began."""


class CircuitBreaker:
    """Decides when a worker receives; a :class:`~microbus.LifecycleObserver` of handler outcomes. Thread-safe.

    Parameters:
        settings: threshold, window and cool-down.
        clock: ``time.monotonic`` (tests pass their own).
    """

    def __init__(self, settings: CircuitBreakerSettings | None = None, *, clock: Callable[[], float] = time.monotonic):
        self.settings = settings or CircuitBreakerSettings()
        self.clock = clock
        self._state = CircuitState.CLOSED
        self._window: deque[bool] = deque(maxlen=self.settings.window)
        self._open_until = 0.0
        self._generation = 0
        self._trial_out = False
        self._trial_id: str | None = None
        self._lock = threading.Lock()
        self._notify_lock = threading.Lock()
        self._noticed = 0
        """The generation of the last transition the worker was told of."""
        self._on_change: Transition | None = None

    @property
    def state(self) -> CircuitState:
        """The current state."""
        with self._lock:
            return self._state

    @property
    def is_open(self) -> bool:
        """True unless closed (open, or half-open with the trial)."""
        return self.state is not CircuitState.CLOSED

    def bind(self, on_change: Transition) -> None:
        """Set the callback of transitions (the worker's)."""
        self._on_change = on_change

    observed_kinds = frozenset({EventKind.FINISHED})
    """The events the breaker counts (see :class:`~microbus.consume.lifecycle.LifecycleObserver`)."""

    def on_event(self, event: LifecycleEvent) -> None:
        """Count a handler's outcome; open, close or reopen the circuit when it decides."""
        if event.kind is not EventKind.FINISHED or event.outcome is None:
            return
        failed = event.outcome in _FAILURES
        counted = failed or event.outcome in _SUCCESSES
        with self._lock:
            if self._state is CircuitState.CLOSED:
                transition = self._count(failed) if counted else None
            elif self._state is CircuitState.HALF_OPEN and event.message_id == self._trial_id:
                transition = self._decide(failed if counted else None)
            else:
                transition = None
        if transition is not None:
            self._notify(*transition)

    def permit(self) -> ReceivePermit | None:
        """May a receive start now, and for how many messages; None: not now (see :meth:`wait_s`)."""
        transition = None
        with self._lock:
            if self._state is CircuitState.CLOSED:
                return ReceivePermit(None, self._generation)
            if self._state is CircuitState.OPEN:
                if self.clock() < self._open_until:
                    return None
                self._state, self._generation = CircuitState.HALF_OPEN, self._generation + 1
                transition = (
                    CircuitState.HALF_OPEN,
                    "cool-down over: trying one message",
                    logging.INFO,
                    self._generation,
                )
            elif self._trial_out:
                return None
            self._trial_out = True
            permit = ReceivePermit(1, self._generation)
        if transition is not None:
            self._notify(*transition)
        return permit

    def admit(self, permit: ReceivePermit, message_ids: list[str]) -> bool:
        """Whether the messages a receive got under ``permit`` may run (else: return them unstarted).

        Closed: all are admitted. Half-open: the trial receive's one message is, and becomes the trial (an
        empty trial receive lets the next receive try). Anything else (a receive that started before the
        circuit opened) is not.
        """
        with self._lock:
            if self._state is CircuitState.CLOSED:
                return True
            trial = (
                self._state is CircuitState.HALF_OPEN
                and permit.limit == 1
                and permit.generation == self._generation
                and self._trial_out
                and self._trial_id is None
            )
            if not trial:
                return False
            if len(message_ids) != 1:
                self._trial_out = False  # nothing (or more than asked) came: the next receive tries
                return False
            self._trial_id = message_ids[0]
            return True

    def wait_s(self) -> float:
        """Seconds a receiver should wait before asking again (at most 1)."""
        with self._lock:
            if self._state is CircuitState.OPEN:
                return max(0.0, min(1.0, self._open_until - self.clock()))
            return _TRIAL_PAUSE_S

    def _count(self, failed: bool) -> _Transition | None:
        """(Under the lock, closed.) Add an outcome; open when the window is full and too many failed."""
        self._window.append(failed)
        failures = sum(self._window)
        if len(self._window) < self.settings.window or failures < self.settings.threshold * len(self._window):
            return None
        return self._open(
            f"{failures} of the last {len(self._window)} messages failed: receiving stops for "
            f"{self.settings.cooldown_s:g}s"
        )

    def _decide(self, failed: bool | None) -> _Transition | None:
        """(Under the lock, half-open.) The trial's outcome: closed, open again, or (not counted) try again."""
        if failed is None:
            self._trial_out, self._trial_id = False, None
            return None
        if failed:
            why = f"the trial message failed: receiving stops for another {self.settings.cooldown_s:g}s"
            return self._open(why, level=logging.INFO)  # logged at WARNING once, when it first opened
        self._state, self._generation = CircuitState.CLOSED, self._generation + 1
        self._window.clear()
        self._trial_out, self._trial_id = False, None
        return CircuitState.CLOSED, "the trial message succeeded: receiving resumes", logging.INFO, self._generation

    def _open(self, why: str, *, level: int = logging.WARNING) -> _Transition:
        """(Under the lock.) Open for the cool-down."""
        self._state, self._generation = CircuitState.OPEN, self._generation + 1
        self._open_until = self.clock() + self.settings.cooldown_s
        self._window.clear()
        self._trial_out, self._trial_id = False, None
        return CircuitState.OPEN, why, level, self._generation

    def _notify(self, state: CircuitState, why: str, level: int, generation: int) -> None:
        """Tell the worker of the transition, then log it (one line), one transition at a time, in their order.

        The worker first: it stops starting messages before the line is written (a slow log handler let every held
        one start). A transition noticed after a later one was (its thread paused between the two locks) is only
        logged: telling the worker would undo the later state (an opening after the half-open would return the trial).
        """
        with self._notify_lock:
            current = generation >= self._noticed
            self._noticed = max(self._noticed, generation)
            try:
                if current and self._on_change is not None:
                    self._on_change(state, why)
            finally:
                logger.log(level, "Circuit breaker %s: %s", state.value, why)


def circuit_breaker_from_config(
    config: Mapping[str, Any] | None, *, enabled: bool | None = None
) -> CircuitBreaker | None:
    """The breaker a ``worker.circuit_breaker`` config section asks for; None when it is off.

    ``enabled`` (the ``--circuit-breaker`` option) turns it on whatever the section says; None leaves it to
    the section's ``enabled`` (default off).

    Raises:
        ConfigurationError: a setting is not a number, or out of range.
    """
    if config is not None and not isinstance(config, Mapping):
        raise ConfigurationError(
            f"worker.circuit_breaker must be a section (enabled, threshold, window, cooldown_s), not {config!r}: "
            "set worker.circuit_breaker.enabled, or pass --circuit-breaker"
        )
    section = config or {}
    if not (enabled or truthy(section.get("enabled", False))):
        return None
    return CircuitBreaker(CircuitBreakerSettings.from_config(section))
