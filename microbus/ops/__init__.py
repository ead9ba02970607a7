"""Operating microbus: inspect queues and topics, peek at messages, handle dead letters."""
