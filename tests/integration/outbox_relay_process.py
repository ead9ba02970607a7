"""``microbus outbox relay`` with each PublishBatch call slowed down, so a test can SIGKILL it mid-batch.

Usage: python outbox_relay_process.py DELAY_S ARGS... (the arguments of ``microbus outbox relay``).
"""

from __future__ import annotations

import sys
import time

from microbus.cli import main
from microbus.wire.transport import SNSTransport


def slowed(delay_s: float):
    publish_batch = SNSTransport.publish_batch

    def publish_batch_slowly(self, *args, **kwargs):
        time.sleep(delay_s)
        return publish_batch(self, *args, **kwargs)

    return publish_batch_slowly


if __name__ == "__main__":
    SNSTransport.publish_batch = slowed(float(sys.argv[1]))
    main(["outbox", "relay", *sys.argv[2:]])
