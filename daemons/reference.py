"""The reference application's whole topology: the orders flow and order fulfilment (fan-out/fan-in).

`microbus topology apply`, `microbus emulator`, the demo and `localstack/init.sh` create it.
"""

from __future__ import annotations

from microbus.reference.daemons import fulfilment, orders

from microbus.topology import Producer, Topology

# Whoever fans orders out (the demo uses the orders daemon's graph) publishes the targets' media types
# and sends the fan-in's deadline to the callback queue; the targets' reports come from the fulfilment daemon.
TOPOLOGY = orders.TOPOLOGY.merged(
    fulfilment.TOPOLOGY,
    Topology(
        producers=(
            Producer(
                name="fulfilment-invoker",
                produces=fulfilment.TARGET_MEDIA_TYPES,
                sends_to=("fulfilment-callbacks",),
            ),
        )
    ),
)

__all__ = ["TOPOLOGY"]
