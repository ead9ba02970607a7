"""Reading daemons' Prometheus endpoints for the dashboard: the parser, the sums, and hostile endpoints."""

from __future__ import annotations

import math
import time

import pytest

from microbus.ops.scrape import (
    HANDLED_METRIC,
    LABEL_LIMIT,
    EndpointReading,
    MetricsFormatError,
    Sample,
    check_metrics_url,
    handled_by_media_type,
    parse_sample,
    parse_samples,
    read_endpoint,
)
from tests.integration.dashboard_helpers import EXPOSITION, ORDER, answer, closed_port_url, metrics_endpoint


def test_a_sample_with_escaped_label_values_and_a_timestamp_parses():
    sample = parse_sample(r'm_total{a="x\"y",b="back\\slash",c="new\nline",} 3.5 1700000000000')
    assert sample == Sample("m_total", {"a": 'x"y', "b": "back\\slash", "c": "new\\nline"}, 3.5)


def test_special_values_and_samples_without_labels_parse():
    assert parse_sample("up 1").labels == {}
    assert math.isnan(parse_sample('m{a="b"} NaN').value)
    assert parse_sample("m +Inf").value == math.inf


@pytest.mark.parametrize(
    "line",
    ["m_total{a=b} 1", 'm_total{a="b"}', 'm_total{a="b" 1', "1abc 2", "m_total abc", 'm{="x"} 1', 'm{a="x\\"} 1'],
)
def test_malformed_lines_raise_a_format_error(line):
    with pytest.raises(MetricsFormatError):
        parse_sample(line)


def test_an_exposition_gives_the_wanted_samples_and_counts_malformed_lines():
    samples, malformed = parse_samples(EXPOSITION, [HANDLED_METRIC])
    assert [(s.labels["media_type"], s.labels["outcome"], s.value) for s in samples][:2] == [
        (ORDER, "succeeded", 7.0),
        (ORDER, "failed", 2.0),
    ]
    assert len(samples) == 3  # the _created companion is another metric
    assert malformed == 1


def test_label_values_from_the_wire_are_bounded_and_printable():
    sample = parse_sample('m{a="' + "x" * 5000 + '",b="\x1b[31mred"} 1')
    assert len(sample.labels["a"]) < LABEL_LIMIT + 30 and sample.labels["a"].endswith("(5000 chars)")
    assert sample.labels["b"] == "\\x1b[31mred"


def test_handled_counts_are_summed_by_media_type_over_endpoints_and_daemons():
    first = EndpointReading("a", ok=True, series=parse_samples(EXPOSITION, [HANDLED_METRIC])[0])
    second = EndpointReading(
        "b",
        ok=True,
        series=[
            Sample(HANDLED_METRIC, {"daemon": "orders-2", "media_type": ORDER, "outcome": "succeeded"}, 3),
            Sample(HANDLED_METRIC, {"daemon": "x", "media_type": ORDER, "outcome": "succeeded"}, math.nan),
        ],
    )
    rows = {row["media_type"]: row for row in handled_by_media_type([first, second, EndpointReading("c", ok=False)])}
    assert rows[ORDER] == {
        "media_type": ORDER,
        "outcomes": {"succeeded": 10.0, "failed": 2.0},
        "daemons": ["orders", "orders-2"],
        "total": 12.0,
    }


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/x", "127.0.0.1:9464", "http://", "http://[::1"])
def test_only_http_urls_are_scraped(url):
    with pytest.raises(ValueError, match="is not an http"):
        check_metrics_url(url)
    assert read_endpoint(url).ok is False


def test_an_unreachable_endpoint_is_a_reading_with_the_reason():
    reading = read_endpoint(closed_port_url(), timeout_s=1)
    assert reading.ok is False and reading.error.startswith("unreachable")


def test_a_redirect_is_not_followed():
    def redirect(handler):
        handler.send_response(302)
        handler.send_header("Location", "http://127.0.0.2:1/elsewhere")
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    with metrics_endpoint(respond=redirect) as url:
        reading = read_endpoint(url)
    assert (reading.ok, reading.error) == (False, "HTTP 302 Found")


def test_an_endpoint_that_drips_is_given_up_at_the_deadline():
    def drip(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", "1000000")
        handler.end_headers()
        try:
            for _ in range(100):
                handler.wfile.write(b"#")
                handler.wfile.flush()
                time.sleep(0.1)
        except OSError:
            pass

    with metrics_endpoint(respond=drip) as url:
        started = time.monotonic()
        reading = read_endpoint(url, timeout_s=0.5)
        assert time.monotonic() - started < 3
    assert reading.ok is False and reading.error.startswith("too slow")


def test_an_oversized_answer_is_refused(monkeypatch):
    monkeypatch.setattr("microbus.ops.scrape.MAX_RESPONSE_BYTES", 1000)
    with metrics_endpoint(respond=lambda handler: answer(handler, "#" * 5000)) as url:
        reading = read_endpoint(url)
    assert (reading.ok, reading.error) == (False, "response over 1000 bytes")


@pytest.mark.parametrize("openmetrics", [False, True], ids=["prometheus-text", "openmetrics"])
def test_what_prometheus_client_exposes_is_read(openmetrics):
    prometheus_client = pytest.importorskip("prometheus_client")
    from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

    # Given the counter as the daemons' metrics expose it, with a label value that needs escaping
    registry = prometheus_client.CollectorRegistry()
    counter = prometheus_client.Counter(
        "microbus_messages_handled", "Messages handled", ["daemon", "queue", "media_type", "outcome"], registry=registry
    )
    counter.labels("orders", "orders", ORDER, "SUCCEEDED").inc(5)
    counter.labels("orders", "orders", 'a "quoted"\\type', "FAILED").inc()
    text = (generate_openmetrics if openmetrics else prometheus_client.generate_latest)(registry).decode()
    # When it is parsed, then both series are read with their labels, and nothing is malformed
    samples, malformed = parse_samples(text, [HANDLED_METRIC])
    assert malformed == 0
    assert {(s.labels["media_type"], s.labels["outcome"], s.value) for s in samples} == {
        (ORDER, "SUCCEEDED", 5.0),
        ('a "quoted"\\type', "FAILED", 1.0),
    }
