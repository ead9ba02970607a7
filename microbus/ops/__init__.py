"""Operating microbus: inspect queues and topics, peek at messages, handle dead letters; log formats, the
metrics and health endpoint and tracing, as observers of the lifecycle events.

The core never imports this layer; the package root registers :class:`microbus.ops.daemon.DaemonOperations`
with the daemon command line. prometheus-client (``microbus[metrics]``) and OpenTelemetry (``microbus[otel]``)
are imported only when used.
"""
