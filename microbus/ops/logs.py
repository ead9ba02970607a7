"""Log formats of a daemon: human lines (the default) or one JSON object per line, and the level setup."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from microbus.consume.dispatch import RECORD_FIELDS
from microbus.wire.sanitize import log_text

LOG_FORMATS = ("human", "json")
HUMAN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_QUIET = {"botocore": logging.WARNING, "boto3": logging.WARNING, "urllib3": logging.WARNING}
"""Libraries whose INFO lines are noise in a daemon's log (e.g. botocore's "Found credentials in …")."""
_QUIET_AT_DEBUG = {"botocore": logging.INFO, "boto3": logging.INFO, "urllib3": logging.INFO}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (UTC, ISO 8601), ``level``, ``logger``, ``message``, the record's
    microbus fields (an outcome line's daemon, queue, media type, ids, cid, attempt, outcome, elapsed), and
    ``traceback`` when the record has an exception. Never more than one line, whatever the message holds."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, RECORD_FIELDS, None)
        if isinstance(fields, dict):
            line.update({key: value for key, value in fields.items() if value is not None and key not in line})
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["traceback"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=_text)  # ASCII: no U+2028 or other line separator in a line


def _text(value: object) -> str:
    return log_text(value)


def configure_logging(*, debug: bool = False, log_format: str = "human", stream: Any = None) -> logging.Handler:
    """Configure the root logger for a daemon: INFO (DEBUG with ``debug``), human or JSON lines on stderr.

    Libraries' chatter is held back (botocore, boto3 and urllib3 at WARNING; INFO with ``debug``): their INFO
    lines ("Found credentials in environment variables") say nothing an operator needs. Returns the handler.

    Raises:
        ValueError: ``log_format`` is not one of :data:`LOG_FORMATS`.
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"Unknown log format {log_format!r}: expected one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(HUMAN_FORMAT))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    for name, level in (_QUIET_AT_DEBUG if debug else _QUIET).items():
        logging.getLogger(name).setLevel(level)
    logging.getLogger("botocore.credentials").setLevel(logging.WARNING)
    return handler
