"""Which responses publish the messages of their request."""

from __future__ import annotations


def succeeded(status: int) -> bool:
    """The default: publish for 1xx, 2xx and 3xx responses, not for 4xx and 5xx."""
    return status < 400
