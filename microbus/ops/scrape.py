"""Read daemons' Prometheus metrics endpoints: the ``microbus_messages_handled_total`` counter, by media type.

A small parser of the Prometheus text exposition format (version 0.0.4, and the OpenMetrics samples of a
counter), standard library only. Everything read is untrusted: responses are bounded in size and series,
label values are bounded and made printable, and a line that does not parse is counted and skipped.
"""

from __future__ import annotations

import http.client
import math
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from microbus.wire.sanitize import log_text, one_line

HANDLED_METRIC = "microbus_messages_handled_total"
"""The counter of handled messages, labelled ``daemon``, ``queue``, ``media_type``, ``outcome``."""
MAX_RESPONSE_BYTES = 8 * 1024 * 1024
MAX_SERIES = 10_000
"""Series of the handled counter kept per endpoint (the rest is reported as dropped)."""
LABEL_LIMIT = 200
_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\S+)?\s*$")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


class MetricsFormatError(ValueError):
    """A sample line is not in the Prometheus text format."""


@dataclass(frozen=True)
class Sample:
    """One sample: metric name, labels, value."""

    name: str
    labels: dict[str, str]
    value: float


def _labels(text: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    position = 0
    text = text.strip()
    while position < len(text):
        match = _LABEL.match(text, position)
        if match is None:
            raise MetricsFormatError(f"bad labels {log_text(text, 80)!r}")
        raw = re.sub(r"\\.", lambda m: _UNESCAPE.get(m.group(), m.group()), match.group(2))
        labels[match.group(1)] = log_text(raw, LABEL_LIMIT)
        position = match.end()
    return labels


def parse_sample(line: str) -> Sample:
    """Parse one sample line (``name{label="value",...} value [timestamp]``).

    Raises:
        MetricsFormatError: the line is not a sample.
    """
    match = _SAMPLE.match(line.strip())
    if match is None:
        raise MetricsFormatError(f"not a sample: {log_text(line, 80)!r}")
    name, labels, value = match.groups()
    try:
        number = float(value)
    except ValueError as exc:
        raise MetricsFormatError(f"bad value {log_text(value, 40)!r}") from exc
    return Sample(name, _labels(labels or ""), number)


def parse_samples(text: str, names: Iterable[str]) -> tuple[list[Sample], int]:
    """The samples of the metrics ``names`` in an exposition, and the number of lines that did not parse."""
    wanted = set(names)
    samples: list[Sample] = []
    malformed = 0
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            sample = parse_sample(stripped)
        except MetricsFormatError:
            malformed += 1
            continue
        if sample.name in wanted:
            samples.append(sample)
    return samples, malformed


@dataclass
class EndpointReading:
    """What one metrics endpoint answered: ``ok``, or the ``error`` that prevented reading it."""

    url: str
    ok: bool
    error: str | None = None
    series: list[Sample] = field(default_factory=list)
    malformed_lines: int = 0
    dropped_series: int = 0

    def as_json(self) -> dict[str, Any]:
        """The reading for the dashboard's JSON."""
        return {
            "url": self.url,
            "ok": self.ok,
            "error": self.error,
            "series": len(self.series),
            "malformed_lines": self.malformed_lines,
            "dropped_series": self.dropped_series,
        }


def check_metrics_url(url: str) -> str:
    """``url`` when it is an http(s) URL with a host.

    Raises:
        ValueError: it is not (a ``file:`` URL would read local files).
    """
    try:
        parts = urlsplit(url)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        valid = False
    if not valid:
        raise ValueError(f"{log_text(url, 100)!r} is not an http(s) URL such as http://127.0.0.1:9464/metrics")
    return url


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A metrics endpoint answers itself; a redirect is reported as the HTTP status it is."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirects())
"""No proxy from the environment, no redirects: only the given address is called."""


class _TooSlow(Exception):
    pass


def _read_bounded(response: Any, deadline: float) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size <= MAX_RESPONSE_BYTES:
        if time.monotonic() > deadline:
            raise _TooSlow
        chunk = response.read1(65536)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def read_endpoint(url: str, *, timeout_s: float = 2.0) -> EndpointReading:
    """Scrape one endpoint for :data:`HANDLED_METRIC`; failures become ``ok=False`` with the reason.

    The whole answer must arrive within twice ``timeout_s`` (an endpoint that drips stays bounded too).
    """
    deadline = time.monotonic() + 2 * timeout_s
    try:
        request = urllib.request.Request(check_metrics_url(url), headers={"Accept": "text/plain"})
        with _OPENER.open(request, timeout=timeout_s) as response:
            body = _read_bounded(response, deadline)
    except urllib.error.HTTPError as exc:
        return EndpointReading(url, ok=False, error=f"HTTP {exc.code} {one_line(str(exc.reason), 80)}")
    except _TooSlow:
        return EndpointReading(url, ok=False, error=f"too slow: no complete answer within {2 * timeout_s:g} s")
    except (OSError, ValueError, http.client.HTTPException) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        return EndpointReading(url, ok=False, error=f"unreachable: {one_line(str(reason), 120)}")
    if len(body) > MAX_RESPONSE_BYTES:
        return EndpointReading(url, ok=False, error=f"response over {MAX_RESPONSE_BYTES} bytes")
    samples, malformed = parse_samples(body.decode("utf-8", "replace"), [HANDLED_METRIC])
    return EndpointReading(
        url,
        ok=True,
        series=samples[:MAX_SERIES],
        malformed_lines=malformed,
        dropped_series=max(0, len(samples) - MAX_SERIES),
    )


def read_endpoints(urls: Sequence[str], *, timeout_s: float = 2.0) -> list[EndpointReading]:
    """Scrape every endpoint at once (an unreachable one costs at most ``timeout_s``), in the given order."""
    if not urls:
        return []
    with ThreadPoolExecutor(max_workers=min(8, len(urls)), thread_name_prefix="microbus-scrape") as pool:
        return list(pool.map(lambda url: read_endpoint(url, timeout_s=timeout_s), urls))


def _finite(samples: Iterable[Sample]) -> Iterator[Sample]:
    return (s for s in samples if math.isfinite(s.value))


def handled_by_media_type(readings: Iterable[EndpointReading]) -> list[dict[str, Any]]:
    """Rows ``{media_type, outcomes: {outcome: count}, daemons: [...], total}`` summed over every endpoint."""
    rows: dict[str, dict[str, Any]] = {}
    for reading in readings:
        for sample in _finite(reading.series):
            media_type = sample.labels.get("media_type", "")
            row = rows.setdefault(media_type, {"media_type": media_type, "outcomes": {}, "daemons": set()})
            outcome = sample.labels.get("outcome", "")
            row["outcomes"][outcome] = row["outcomes"].get(outcome, 0) + sample.value
            if "daemon" in sample.labels:
                row["daemons"].add(sample.labels["daemon"])
    return [
        {**row, "daemons": sorted(row["daemons"]), "total": sum(row["outcomes"].values())}
        for _, row in sorted(rows.items())
    ]
