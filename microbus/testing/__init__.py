"""Helpers for testing code that uses microbus.

The fixtures (``microbus_endpoint``, ``microbus_queue``, ``microbus_graph``, …) are a pytest plugin that
comes with the package (``pip install 'microbus[testing]'``): no conftest needed. Use :class:`StubQueue` for
fast unit tests without an emulator.
"""

from microbus.testing.helpers import wait_for
from microbus.testing.stub import StubQueue

__all__ = ["StubQueue", "wait_for"]
