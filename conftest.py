"""Root conftest: guards the network (a test that opens a connection to anything but loopback fails), and on
LocalStack skips the integration tests that do not use the emulator under test.

The guard patches this process's sockets; daemons started as subprocesses are not covered by it.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from microbus.testing.fixtures import emulator_kind

# The microbus fixtures (and their --emulator option) come from the installed package's pytest11 plugin.


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On LocalStack, an integration test that does not use ``microbus_endpoint`` (it starts the embedded emulator
    itself, or needs none) is skipped: the moto run checks it, and LocalStack would only repeat it."""
    if emulator_kind(config) != "localstack":
        return
    skip = pytest.mark.skip(reason="does not use the emulator under test (microbus_endpoint): the moto run checks it")
    for item in items:
        if item.get_closest_marker("integration") and "microbus_endpoint" not in getattr(item, "fixturenames", ()):
            item.add_marker(skip)


class NonLoopbackConnectionError(RuntimeError):
    """A test tried to connect to an address that is not loopback (the network guard of conftest.py).

    Not an OSError on purpose: a client's retries and "unreachable" handling must not swallow it.
    """


class SocketGuard:
    """Refuses connections to non-loopback addresses and records each attempt in ``violations``."""

    def __init__(self) -> None:
        self.violations: list[str] = []

    @staticmethod
    def allowed(family: int, address: Any) -> bool:
        """AF_UNIX always; IP only to 127.0.0.0/8, ::1 (or ::ffff:127.x) and the name ``localhost``."""
        if family == getattr(socket, "AF_UNIX", object()) or not isinstance(address, tuple):
            return True
        host = str(address[0]).strip("[]").split("%", 1)[0]
        if host.lower() == "localhost":
            return True
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False  # a name other than localhost: resolving it is already a network call
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return ip.is_loopback

    def check(self, family: int, address: Any) -> None:
        """Raise :class:`NonLoopbackConnectionError` (and record it) unless ``address`` is allowed."""
        if not self.allowed(family, address):
            message = f"network guard: connection to {address!r} refused (tests may only reach loopback)"
            self.violations.append(message)
            raise NonLoopbackConnectionError(message)


_guard = SocketGuard()


@pytest.fixture(scope="session", autouse=True)
def socket_guard() -> Iterator[SocketGuard]:
    """Patch socket.connect / connect_ex / create_connection for the whole session (this process only)."""
    connect, connect_ex, create_connection = socket.socket.connect, socket.socket.connect_ex, socket.create_connection

    def refuse(sock: socket.socket, address: Any) -> None:
        try:
            _guard.check(sock.family, address)
        except NonLoopbackConnectionError:
            sock.close()  # the caller's cleanup expects an OSError and would leave the socket open
            raise

    def guarded_connect(self: socket.socket, address: Any) -> None:
        refuse(self, address)
        connect(self, address)

    def guarded_connect_ex(self: socket.socket, address: Any) -> int:
        refuse(self, address)
        return connect_ex(self, address)

    def guarded_create_connection(address: Any, *args: Any, **kwargs: Any) -> socket.socket:
        _guard.check(socket.AF_INET, address)
        return create_connection(address, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", guarded_connect)
        patch.setattr(socket.socket, "connect_ex", guarded_connect_ex)
        patch.setattr(socket, "create_connection", guarded_create_connection)
        yield _guard


@pytest.fixture(autouse=True)
def _no_foreign_connections(socket_guard: SocketGuard) -> Iterator[None]:
    """Fail a test that tried a non-loopback connection, even when the code under test swallowed the error."""
    before = len(socket_guard.violations)
    yield
    tried = socket_guard.violations[before:]
    if tried:
        del socket_guard.violations[before:]
        pytest.fail(f"{len(tried)} non-loopback connection(s): {tried[0]}", pytrace=False)
