"""The dashboard in a real headless Chromium (Debian's package, driven by playwright) against the emulator.

Where Chromium or playwright is missing the tests skip with the reason, except under ``CI=true``, where they
fail. Playwright's own browser download is never used: the browser is ``/usr/bin/chromium``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
from microbus.reference.schemas import OrderPlaced
from microcosm.api import create_object_graph, load_from_dict

from microbus.ops.dashboard import Dashboard, DashboardServer, LiveSource
from microbus.testing import wait_for
from microbus.testing.emulator import Endpoint
from microbus.testing.fixtures import unavailable
from tests.integration.dashboard_helpers import EVIL, ORDER, closed_port_url, metrics_endpoint, serving
from tests.integration.test_observability import WORK_MT, Daemon, endpoint_of
from tests.integration.test_observability import producer as observe_producer

pytestmark = pytest.mark.integration
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCRIPT_BODY = "<script>window.__pwned = 1</script><img src=x onerror='window.__pwned = 2'>"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium from /usr/bin/chromium."""
    if not os.access(CHROMIUM, os.X_OK):
        unavailable(f"the dashboard's browser test needs Debian's chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("the dashboard's browser test needs playwright (pip install -e '.[dashboard-test]')")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh page; console errors and uncaught exceptions fail the test."""
    context = browser.new_context()
    opened = context.new_page()
    problems: list[str] = []
    opened.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    opened.on("pageerror", lambda error: problems.append(str(error)))
    try:
        yield opened
        assert problems == []
    finally:
        context.close()


def name_of(url: str) -> str:
    return url.rsplit("/", 1)[-1]


def shown(page: Any, queue: str, field: str) -> str:
    """The cell's text; "" while the row is not on the page yet (the caller polls)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

    cell = page.locator(f'tr[data-queue="{queue}"] td[data-field="{field}"]')
    try:
        return str(cell.text_content(timeout=1000) or "")
    except PlaywrightTimeoutError:
        return ""


def wait_shown(page: Any, queue: str, expected: dict[str, str]) -> None:
    wait_for(
        lambda: all(shown(page, queue, field) == value for field, value in expected.items()),
        timeout_s=30,
        what=f"{queue} showing {expected} (shows {[shown(page, queue, f) for f in expected]})",
    )


def produce(queue: Any, contents: list[dict[str, Any]]) -> None:
    graph = create_object_graph("dashboard-browser", testing=True, loader=load_from_dict(queue.graph_config()))
    graph.microbus_sns_producer.produce_batch(OrderPlaced.MEDIA_TYPE, contents)


def test_the_page_shows_queue_counts_after_producing_and_consuming(make_queue, page):
    # Given the dashboard of a fresh topic, queue and DLQ, open in the browser
    queue = make_queue()
    name, dlq = name_of(queue.queue_url), name_of(queue.dlq_url)
    with serving(queue) as server:
        page.goto(server.url)
        wait_shown(page, name, {"visible": "0", "in_flight": "0", "dlq_name": dlq, "dlq_visible": "0"})
        assert page.locator(f'tr[data-topic="{name}"] li[data-subscription="{name}"]').count() == 1
        # When four messages are produced, then the page shows them visible
        produce(queue, [{"order_id": f"o-{i}"} for i in range(4)])
        wait_shown(page, name, {"visible": "4", "in_flight": "0"})
        # When three are received and held, then they show in flight
        held = queue.sqs.receive_message(QueueUrl=queue.queue_url, MaxNumberOfMessages=3, VisibilityTimeout=120)
        assert len(held["Messages"]) == 3
        wait_shown(page, name, {"visible": "1", "in_flight": "3"})
        # When they are consumed (deleted) and one message is dead-lettered, the page follows
        for message in held["Messages"]:
            queue.sqs.delete_message(QueueUrl=queue.queue_url, ReceiptHandle=message["ReceiptHandle"])
        queue.sqs.send_message(QueueUrl=queue.dlq_url, MessageBody="{}")
        wait_shown(page, name, {"visible": "1", "in_flight": "0", "dlq_visible": "1"})
        wait_shown(page, dlq, {"visible": "1"})
        assert page.locator("#status").text_content() == "live"


def test_peek_lists_messages_with_bodies_hidden_until_clicked(make_queue, page):
    queue = make_queue()
    name = name_of(queue.queue_url)
    produce(queue, [{"order_id": "o-secret-1"}, {"order_id": "o-secret-2"}])
    wait_for(lambda: queue.depth() == 2, what="two messages")
    with serving(queue) as server:
        page.goto(server.url)
        wait_shown(page, name, {"visible": "2"})
        page.locator(f'tr[data-queue="{name}"] button').click()
        items = page.locator("#peek-messages > li")
        wait_for(lambda: items.count() == 2, timeout_s=30, what="two peeked messages")
        listing = page.locator("#peek-messages").inner_text()
        assert listing.count(OrderPlaced.MEDIA_TYPE) == 2
        assert "o-secret" not in page.locator("body").inner_text()  # bodies are hidden
        assert "o-secret" not in page.content()  # and not even in the document until asked for
        # When one body is clicked, it alone is shown, pretty-printed
        items.nth(0).locator("button.toggle-body").click()
        shown_body = items.nth(0).locator("pre.body")
        assert shown_body.is_visible()
        body = json.loads(shown_body.inner_text())
        assert body["mediaType"] == OrderPlaced.MEDIA_TYPE and body["order_id"].startswith("o-secret-")
        assert not items.nth(1).locator("pre.body").is_visible()
        # Peeking consumed nothing: both are visible again at once
        wait_shown(page, name, {"visible": "2", "in_flight": "0"})


def test_a_malicious_body_and_media_type_are_shown_as_text_and_never_run(make_queue, page):
    # Given a queue holding a JSON message with markup in a field, and a body that is markup only
    queue = make_queue()
    name = name_of(queue.queue_url)
    produce(queue, [{"order_id": SCRIPT_BODY}])
    queue.sqs.send_message(
        QueueUrl=queue.queue_url,
        MessageBody=SCRIPT_BODY,
        MessageAttributes={"media_type": {"DataType": "String", "StringValue": EVIL}},
    )
    wait_for(lambda: queue.depth() == 2, what="two messages")
    with metrics_endpoint() as metrics, serving(queue, metrics_urls=(metrics,)) as server:
        page.goto(server.url)
        # When the page shows a metric labelled with markup, and both messages are peeked and opened
        wait_for(lambda: page.locator(f'tr[data-media-type="{ORDER}"]').count() == 1, timeout_s=30, what="metrics")
        page.locator(f'tr[data-queue="{name}"] button').click()
        items = page.locator("#peek-messages > li")
        wait_for(lambda: items.count() == 2, timeout_s=30, what="two peeked messages")
        for index in range(2):
            items.nth(index).locator("button.toggle-body").click()
        # Then the markup is text: shown literally, no element made of it, nothing ran
        bodies = [items.nth(i).locator("pre.body").text_content() for i in range(2)]
        assert SCRIPT_BODY in bodies
        [structured] = [json.loads(text or "") for text in bodies if text != SCRIPT_BODY]
        assert structured["order_id"] == SCRIPT_BODY
        assert EVIL in page.locator("#peek-messages").inner_text()
        assert EVIL in page.locator("#media-types").inner_text()
        assert page.locator("main script, main img").count() == 0
        assert page.evaluate("window.__pwned") is None


def test_metrics_show_handled_counts_and_unreachable_endpoints(make_queue, page):
    down = closed_port_url()
    with metrics_endpoint() as metrics, serving(make_queue(), metrics_urls=(metrics, down)) as server:
        page.goto(server.url)
        row = page.locator(f'tr[data-media-type="{ORDER}"]')
        wait_for(lambda: row.count() == 1, timeout_s=30, what="the order.placed row")
        assert row.locator('td[data-field="total"]').text_content() == "9"
        assert row.locator('span[data-outcome="succeeded"]').text_content().strip() == "succeeded 7"
        assert row.locator('span[data-outcome="failed"]').text_content().strip() == "failed 2"
        assert page.locator(f'li[data-url="{metrics}"]').get_attribute("data-ok") == "true"
        unreachable = page.locator(f'li[data-url="{down}"]')
        assert unreachable.get_attribute("data-ok") == "false"
        assert "unreachable" in unreachable.inner_text()


def test_the_page_says_when_the_dashboard_server_is_gone(make_queue, browser):
    queue = make_queue()
    context = browser.new_context()
    try:
        opened = context.new_page()
        with serving(queue) as server:
            opened.goto(server.url)
            wait_for(lambda: opened.locator("#status").text_content() == "live", timeout_s=30, what="live")
        wait_for(
            lambda: opened.locator("#status").text_content() == "dashboard server unreachable",
            timeout_s=30,
            what="the page noticing the server stopped",
        )
        assert opened.locator("#error").is_visible()
    finally:
        context.close()


def test_peek_warns_when_the_next_receive_moves_a_message_to_the_dead_letter_queue(make_queue, page):
    queue = make_queue(max_receive_count=2)
    name = name_of(queue.queue_url)
    produce(queue, [{"order_id": "o-tired"}])
    first = wait_for(lambda: queue.sqs.receive_message(QueueUrl=queue.queue_url).get("Messages"), what="a receive")
    queue.sqs.change_message_visibility(
        QueueUrl=queue.queue_url, ReceiptHandle=first[0]["ReceiptHandle"], VisibilityTimeout=0
    )
    with serving(queue) as server:
        page.goto(server.url)
        wait_shown(page, name, {"visible": "1", "max_receive_count": "2"})
        page.locator(f'tr[data-queue="{name}"] button').click()
        items = page.locator("#peek-messages > li")
        wait_for(lambda: items.count() == 1, timeout_s=30, what="the peeked message")
        assert "2 of 2: its next receive moves it to the dead-letter queue" in items.nth(0).inner_text()


def test_an_unreachable_endpoint_shows_a_banner(browser):
    endpoint = Endpoint(closed_port_url().rsplit("/", 1)[0])
    settings = endpoint.settings()
    source = LiveSource(sqs=settings.client("sqs"), sns=settings.client("sns"), endpoint=endpoint.endpoint_url or "")
    context = browser.new_context()
    try:
        opened = context.new_page()
        with DashboardServer(Dashboard(source=source, refresh_s=0.5), port=0).running() as server:
            opened.goto(server.url)
            wait_for(
                lambda: opened.locator("#status").text_content() == "endpoint unreachable", timeout_s=30, what="status"
            )
            banner = opened.locator("#error")
            assert banner.is_visible()
            assert banner.inner_text().startswith(f"Cannot read {endpoint.endpoint_url}: Cannot reach SQS")
    finally:
        context.close()


@pytest.fixture
def metered_daemon(microbus_queue: Any) -> Iterator[Daemon]:
    """A daemon (the observability tests' one) on ``microbus_queue``, serving metrics on a free port."""
    daemon = Daemon(microbus_queue, "--metrics-port", "0")
    yield daemon
    daemon.close()


def test_a_running_daemons_handled_counts_and_its_queue_show_on_the_page(microbus_queue, metered_daemon, page):
    # Given a daemon serving metrics, and the dashboard reading them
    daemon = metered_daemon
    metrics_url = endpoint_of(daemon) + "/metrics"
    name = name_of(microbus_queue.queue_url)
    with serving(microbus_queue, metrics_urls=(metrics_url,)) as server:
        page.goto(server.url)
        # When the daemon handles three messages, one of them failing
        for n in (1, 2, -1):
            observe_producer(microbus_queue).produce(WORK_MT, n=n)
        daemon.wait_for_line("FAILED")
        # Then the page shows its handled counts by media type and outcome, read from its endpoint
        row = page.locator(f'tr[data-media-type="{WORK_MT}"]')
        wait_for(
            lambda: (
                row.count() == 1
                and row.locator('span[data-outcome="SUCCEEDED"]').text_content().strip() == "SUCCEEDED 2"
            ),
            timeout_s=30,
            what="SUCCEEDED 2 on the page",
        )
        assert row.locator('span[data-outcome="FAILED"]').text_content().strip().startswith("FAILED ")
        assert row.locator("td").nth(3).text_content() == "observe-test"
        assert page.locator(f'li[data-url="{metrics_url}"]').get_attribute("data-ok") == "true"
        # and the failing message, waiting for its retry, is the only one left in the queue
        wait_for(
            lambda: int(shown(page, name, "visible") or 0) + int(shown(page, name, "in_flight") or 0) == 1,
            timeout_s=30,
            what="one message left",
        )
