"""Wire input is untrusted: bound it before it reaches a log line, sanitise it before it becomes an attribute.

- :func:`log_text` / :func:`log_repr`: a value for a log line or an error message — printable, at most
  ``limit`` characters of it, and when cut, its original length: ``'application/…' (256021 chars)``.
- :func:`attribute_text`: a value for an SQS/SNS message attribute — only characters SQS accepts (valid
  XML characters; the others become ``\\uXXXX``), at most ``limit`` characters *and* UTF-8 bytes.
"""

from __future__ import annotations

import re

LOG_LIMIT = 200
"""Characters of one wire value in a log line."""
ATTRIBUTE_LIMIT = 1024
"""Characters (and UTF-8 bytes) of one attribute value microbus writes from message content."""

# Characters outside XML 1.0's Char production: #x9 | #xA | #xD | [#x20-#xD7FF] | [#xE000-#xFFFD] | [#x10000-#x10FFFF]
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"  # every character outside XML's set is below U+10000


def xml_text(value: str) -> str:
    """``value`` with every character SQS refuses in an attribute (lone surrogates, most control characters,
    U+FFFE/U+FFFF) replaced by its ``\\uXXXX`` escape."""
    return _NOT_XML.sub(_escape, value)


def _cut_suffix(length: int) -> str:
    return f"… ({length} chars)"


def attribute_text(value: str, limit: int = ATTRIBUTE_LIMIT) -> str:
    """``value`` as an attribute may hold it: valid XML characters only, at most ``limit`` characters and
    ``limit`` UTF-8 bytes; when cut, it ends with ``… (N chars)``, N the original length."""
    head = xml_text(value[:limit])
    if len(value) <= limit and len(head) <= limit and len(head.encode("utf-8")) <= limit:
        return head
    suffix = _cut_suffix(len(value))
    room = limit - len(suffix.encode("utf-8"))
    # bytes bound characters (a character is at least one byte); ignore drops a character cut in the middle
    return head.encode("utf-8")[:room].decode("utf-8", "ignore") + suffix


def _printable(value: str) -> str:
    if value.isprintable():
        return value
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in value)


def log_text(value: object, limit: int = LOG_LIMIT) -> str:
    """``str(value)`` for a log line: non-printable characters escaped (no forged lines), at most ``limit``
    characters of it, and when cut, ``… (N chars)`` with its original length."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit and text.isprintable():
        return text
    head = _printable(text[:limit])[:limit]
    return head if len(text) <= limit else head + _cut_suffix(len(text))


def log_repr(value: object, limit: int = LOG_LIMIT) -> str:
    """``repr(value)`` of a wire string for a log line or an error message, at most ``limit`` characters of the
    string: ``'application/…' (256021 chars)`` when cut."""
    if not isinstance(value, str):
        return log_text(repr(value), limit)
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit] + '…'!r} ({len(value)} chars)"


def one_line(text: str, limit: int = LOG_LIMIT) -> str:
    """A server's error text (an emulator may answer with an HTML page) for a one-sentence error: whitespace
    collapsed, at most ``limit`` characters, and when cut, ``… (N chars)`` with its original length."""
    collapsed = _printable(" ".join(text.split()))
    if len(collapsed) <= limit:
        return collapsed
    return collapsed[:limit] + _cut_suffix(len(text))
