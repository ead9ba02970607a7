pytest_plugins = ["microbus.testing.fixtures"]
