"""Patterns on top of consuming and producing: parallel execution, fan-in, idempotency."""
