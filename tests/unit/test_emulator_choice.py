"""Choosing the emulator of the integration tests, and what happens when LocalStack is unavailable."""

from __future__ import annotations

import pytest

from microbus.testing.fixtures import emulator_kind, unavailable


class Config:
    def __init__(self, option=None):
        self.option = option

    def getoption(self, name, default=None):
        return self.option


def test_the_option_wins_over_the_variable_and_moto_is_the_default(monkeypatch):
    monkeypatch.delenv("MICROBUS_TEST_EMULATOR", raising=False)
    assert emulator_kind(Config()) == "moto"
    monkeypatch.setenv("MICROBUS_TEST_EMULATOR", "localstack")
    assert emulator_kind(Config()) == "localstack"
    assert emulator_kind(Config("moto")) == "moto"
    monkeypatch.setenv("MICROBUS_TEST_EMULATOR", "elasticmq")
    with pytest.raises(pytest.UsageError, match="expected one of moto, localstack"):
        emulator_kind(Config())


def test_an_unavailable_emulator_skips_locally_and_fails_under_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no Python 3.13"):
        unavailable("no Python 3.13")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"no Python 3.13 \(CI=true: not skipping\)"):
        unavailable("no Python 3.13")
