"""Helpers for testing code that uses microbus.

Add ``pytest_plugins = ["microbus.testing.fixtures"]`` to your ``conftest.py`` for the fixtures
(``microbus_endpoint``, ``microbus_queue``, ``microbus_graph``); use :class:`StubQueue` for fast
unit tests without an emulator.
"""

from microbus.testing.helpers import wait_for
from microbus.testing.stub import StubQueue

__all__ = ["StubQueue", "wait_for"]
