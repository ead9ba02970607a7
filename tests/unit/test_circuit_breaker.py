"""The circuit breaker's decisions, on a test clock: what opens it, what it lets receive, what closes it."""

from __future__ import annotations

import logging
import threading

import pytest
from click.testing import CliRunner

from microbus import ConfigurationError, ConsumerDaemon, EventKind, LifecycleEvent, Outcome
from microbus.consume.breaker import (
    CircuitBreaker,
    CircuitBreakerSettings,
    CircuitState,
    circuit_breaker_from_config,
)
from microbus.consume.daemon import daemon_command
from microbus.consume.lifecycle import Tracked
from microbus.consume.message import SQSMessage
from microbus.consume.scheduling import Scheduler


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def finished(outcome, message_id="m"):
    return LifecycleEvent(kind=EventKind.FINISHED, queue_url="q", at=0.0, message_id=message_id, outcome=outcome)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def breaker(clock):
    breaker = CircuitBreaker(CircuitBreakerSettings(threshold=0.5, window=4, cooldown_s=10), clock=clock)
    breaker.transitions = []
    breaker.bind(lambda state, why: breaker.transitions.append(state))
    return breaker


def test_half_of_the_window_failing_opens_it_and_poison_does_not_count(breaker):
    # Given successes, failures, poison and a handler's own Nack
    for outcome in (Outcome.SUCCEEDED, Outcome.REJECTED, Outcome.FAILED, Outcome.RETRIED, Outcome.SUCCEEDED):
        breaker.on_event(finished(outcome))
    # Then three counted outcomes (one failure) do not open it
    assert breaker.state is CircuitState.CLOSED
    # When the fourth counted one fails (2 of 4)
    breaker.on_event(finished(Outcome.EXPIRED))
    # Then it opens, once
    assert breaker.state is CircuitState.OPEN
    assert breaker.transitions == [CircuitState.OPEN]


def test_it_never_opens_before_the_window_is_full(breaker):
    for _ in range(3):
        breaker.on_event(finished(Outcome.FAILED))
    assert breaker.state is CircuitState.CLOSED
    assert breaker.permit().limit is None


def open_it(breaker):
    for _ in range(4):
        breaker.on_event(finished(Outcome.FAILED))
    assert breaker.state is CircuitState.OPEN


def test_open_it_lets_nothing_receive_until_the_cool_down_ends_then_one_trial(breaker, clock):
    stale = breaker.permit()
    open_it(breaker)
    # Then nothing may receive, and a receive that was in flight is not admitted
    assert breaker.permit() is None
    assert 0 < breaker.wait_s() <= 1
    assert not breaker.admit(stale, ["late-1", "late-2"])
    # When the cool-down is over
    clock.now += 10
    trial = breaker.permit()
    # Then one receive of one message may go; the others wait
    assert trial.limit == 1 and breaker.state is CircuitState.HALF_OPEN
    assert breaker.permit() is None
    assert not breaker.admit(stale, ["late-3"])
    assert breaker.admit(trial, ["t-1"])
    # And an outcome of another message decides nothing
    breaker.on_event(finished(Outcome.SUCCEEDED, "other"))
    assert breaker.state is CircuitState.HALF_OPEN
    # When the trial succeeds it closes, and receiving is unlimited again
    breaker.on_event(finished(Outcome.SUCCEEDED, "t-1"))
    assert breaker.state is CircuitState.CLOSED
    assert breaker.permit().limit is None
    assert breaker.transitions == [CircuitState.OPEN, CircuitState.HALF_OPEN, CircuitState.CLOSED]


def test_a_failed_trial_opens_it_for_another_cool_down_and_logs_it_quietly(breaker, clock, caplog):
    open_it(breaker)
    clock.now += 10
    trial = breaker.permit()
    assert breaker.admit(trial, ["t-1"])
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="microbus.consume.breaker"):
        breaker.on_event(finished(Outcome.FAILED, "t-1"))
    assert breaker.state is CircuitState.OPEN
    assert breaker.permit() is None
    assert [r.levelno for r in caplog.records] == [logging.INFO]  # the WARNING was the first opening


def test_an_empty_or_inconclusive_trial_lets_the_next_receive_try(breaker, clock):
    open_it(breaker)
    clock.now += 10
    # An empty trial receive gives the trial back
    assert not breaker.admit(breaker.permit(), [])
    # A trial that was poison (not counted) too
    trial = breaker.permit()
    assert breaker.admit(trial, ["poison"])
    breaker.on_event(finished(Outcome.REJECTED, "poison"))
    assert breaker.state is CircuitState.HALF_OPEN
    assert breaker.permit().limit == 1


class _HeldLock:
    """The breaker's notify lock, held back for the thread that first takes it: the moment between a transition
    and its notice, stretched."""

    def __init__(self):
        self._lock = threading.Lock()
        self.waiting = threading.Event()
        self.go = threading.Event()
        self._first: int | None = None

    def __enter__(self):
        if self._first is None:
            self._first = threading.get_ident()
        if self._first == threading.get_ident():
            self.waiting.set()
            assert self.go.wait(10)
        return self._lock.__enter__()

    def __exit__(self, *exc):
        return self._lock.__exit__(*exc)


def test_an_opening_noticed_after_the_half_open_does_not_undo_it(breaker, clock):
    # Given a handler thread whose failure opens the circuit, held between the transition and its notice
    for _ in range(3):
        breaker.on_event(finished(Outcome.FAILED))
    held = breaker._notify_lock = _HeldLock()
    opener = threading.Thread(target=breaker.on_event, args=(finished(Outcome.FAILED),))
    opener.start()
    assert held.waiting.wait(10)
    assert breaker.state is CircuitState.OPEN
    # When the cool-down ends and the trial is received before that notice goes out
    clock.now += 10
    trial = breaker.permit()
    assert breaker.admit(trial, ["t-1"])
    held.go.set()
    opener.join(10)
    # Then the late opening does not tell the worker to stop (it would return the trial, and nothing would ever
    # decide it): the worker's last notice is the breaker's state
    assert breaker.state is CircuitState.HALF_OPEN
    assert breaker.transitions == [CircuitState.HALF_OPEN]
    # And the trial still decides
    breaker.on_event(finished(Outcome.SUCCEEDED, "t-1"))
    assert breaker.transitions == [CircuitState.HALF_OPEN, CircuitState.CLOSED]


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"threshold": 0}, "threshold must be in"),
        ({"threshold": 1.5}, "threshold must be in"),
        ({"window": 0}, "window must be at least 1"),
        ({"cooldown_s": 0.5}, "cooldown_s must be 1 second or more"),
        ({"cooldown_s": "inf"}, "cooldown_s must be 1 second or more"),
        ({"threshold": "nan"}, "threshold must be in"),
        ({"window": "many"}, "needs numbers"),
        ({"cooldown_s": None}, "needs numbers"),
    ],
)
def test_bad_settings_fail_with_one_sentence(config, match):
    with pytest.raises(ConfigurationError, match=match):
        circuit_breaker_from_config({"enabled": True, **config})


def test_a_value_instead_of_a_section_fails_with_one_sentence():
    # e.g. ORDERS__WORKER__CIRCUIT_BREAKER=true instead of ORDERS__WORKER__CIRCUIT_BREAKER__ENABLED=true
    with pytest.raises(ConfigurationError, match="must be a section .* set worker.circuit_breaker.enabled"):
        circuit_breaker_from_config("true")


def test_it_is_off_unless_asked_for():
    assert circuit_breaker_from_config(None) is None
    assert circuit_breaker_from_config({"enabled": "false"}) is None
    assert circuit_breaker_from_config({"enabled": False}, enabled=True) is not None
    assert circuit_breaker_from_config({"enabled": "true", "window": "5"}).settings.window == 5


def test_a_paused_scheduler_starts_nothing_and_gives_back_what_waits():
    # Given a scheduler with one running and two waiting
    scheduler = Scheduler(1)
    batch = [Tracked(SQSMessage(None, f"m-{i}", f"r-{i}", "{}")) for i in range(3)]
    started, _ = scheduler.add(batch)
    assert started == batch[:1]
    # When it pauses, the waiting ones come back, and nothing more is taken or started
    assert scheduler.pause() == batch[1:]
    extra = Tracked(SQSMessage(None, "m-x", "r-x", "{}"))
    assert scheduler.add([extra]) == ([], [extra])
    assert scheduler.finished(batch[0], retried=True) == ([], [])
    # When it resumes, it takes messages again
    scheduler.resume()
    assert scheduler.add([extra]) == ([extra], [])


class NamedDaemon(ConsumerDaemon):
    name = "named-daemon"


@pytest.mark.parametrize(("args", "expected"), [([], None), (["--circuit-breaker"], True)])
def test_the_daemon_command_passes_the_circuit_breaker_option(monkeypatch, args, expected):
    # Given a daemon command whose run is recorded
    runs = []
    monkeypatch.setattr(NamedDaemon, "run", lambda self, **options: runs.append(options))
    # When it is run with or without --circuit-breaker
    result = CliRunner().invoke(daemon_command(NamedDaemon), args)
    # Then the option reaches the daemon (None: the configuration decides)
    assert result.exit_code == 0, result.output
    assert runs[0]["circuit_breaker"] in ((None, False) if expected is None else (True,))
