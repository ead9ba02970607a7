"""Root conftest: loads the microbus fixtures (and their --emulator option) for the whole suite."""

pytest_plugins = ["microbus.testing.fixtures"]
