"""Consuming: handler registry, dispatch, the message lifecycle, settling, heartbeat, workers and daemons."""
