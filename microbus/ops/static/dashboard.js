// microbus dashboard: polls the JSON endpoints and renders them. Every value from the server came from the
// wire (queue names, media types, bodies, label values): it is inserted as text (textContent, text nodes,
// attribute values), never as HTML.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  let refreshMs = 2000;
  let peeking = null;
  let timer = null;
  let polling = false;
  const maxReceives = new Map();

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (key === "dataset") Object.assign(node.dataset, value);
      else if (key === "className") node.className = value;
      else node.setAttribute(key, value);
    }
    node.append(...children.map((child) => (child instanceof Node ? child : String(child ?? ""))));
    return node;
  }

  function button(label, onClick) {
    const node = el("button", { type: "button" }, label);
    node.addEventListener("click", onClick);
    return node;
  }

  function number(value) {
    if (value === null || value === undefined) return "—";
    return Number.isInteger(value) ? value.toLocaleString("en-US") : value.toFixed(2);
  }

  function numberCell(field, value, warn) {
    return el("td", { className: warn ? "number warn" : "number", dataset: { field } }, number(value));
  }

  async function request(path, options) {
    const response = await fetch(path, { ...options, signal: AbortSignal.timeout(15000) });
    let data = null;
    try {
      data = await response.json();
    } catch (error) {
      throw new Error(`${response.status} ${response.statusText}`);
    }
    if (!response.ok) throw new Error(data && data.error ? data.error : `${response.status}`);
    return data;
  }

  function setStatus(text, ok) {
    $("status").textContent = text;
    $("status").className = ok ? "status ok" : "status bad";
  }

  function showError(text) {
    $("error").hidden = !text;
    $("error").textContent = text || "";
  }

  function renderQueues(queues) {
    maxReceives.clear();
    for (const queue of queues) maxReceives.set(queue.name, queue.max_receive_count);
    const rows = queues.map((queue) => {
      const name = el("td", { dataset: { field: "name" } }, queue.name);
      if (queue.dead_letter_queue_for && queue.dead_letter_queue_for.length) {
        name.append(el("span", { className: "muted" }, ` (dead letters of ${queue.dead_letter_queue_for.join(", ")})`));
      }
      return el("tr", { dataset: { queue: queue.name } },
        name,
        numberCell("visible", queue.visible),
        numberCell("in_flight", queue.in_flight),
        numberCell("delayed", queue.delayed),
        el("td", { dataset: { field: "dlq_name" } },
          queue.dlq_missing ? `${queue.dlq_name} (missing)` : queue.dlq_name ?? "—"),
        numberCell("dlq_visible", queue.dlq_visible, queue.dlq_visible > 0),
        numberCell("max_receive_count", queue.max_receive_count),
        el("td", {}, button("peek", () => peek(queue.name))));
    });
    $("queues").tBodies[0].replaceChildren(...rows);
    $("no-queues").hidden = queues.length > 0;
  }

  function renderTopics(topics) {
    const rows = topics.map((topic) => {
      const list = el("ul", {}, ...topic.subscriptions.map((s) => {
        const target = s.queue_name ?? `${s.protocol}: ${s.endpoint}`;
        const details = [s.raw === null || s.raw === undefined ? "" : (s.raw ? "raw" : "enveloped")];
        if (s.filter_policy) details.push(`filter ${JSON.stringify(s.filter_policy)}`);
        return el("li", { dataset: { subscription: target } }, target, " ",
          el("span", { className: "muted" }, details.filter(Boolean).join(", ")));
      }));
      return el("tr", { dataset: { topic: topic.name } }, el("td", {}, topic.name),
        el("td", {}, topic.subscriptions.length ? list : el("span", { className: "muted" }, "none")));
    });
    $("topics").tBodies[0].replaceChildren(...rows);
    $("no-topics").hidden = topics.length > 0;
  }

  function renderMetrics(metrics) {
    $("no-metrics").hidden = metrics.endpoints.length > 0;
    $("endpoints").replaceChildren(...metrics.endpoints.map((endpoint) => el("li",
      { dataset: { url: endpoint.url, ok: String(endpoint.ok) }, className: endpoint.ok ? "" : "endpoint-bad" },
      endpoint.url, ": ",
      endpoint.ok ? `read, ${endpoint.series} series` : endpoint.error,
      endpoint.malformed_lines ? `, ${endpoint.malformed_lines} malformed lines skipped` : "")));
    const rows = metrics.media_types.map((row) => el("tr", { dataset: { mediaType: row.media_type } },
      el("td", {}, row.media_type || "(none)"),
      numberCell("total", row.total),
      el("td", {}, ...Object.entries(row.outcomes).map(([outcome, count]) =>
        el("span", { dataset: { outcome }, className: "outcome" }, `${outcome} ${number(count)}  `))),
      el("td", {}, row.daemons.join(", "))));
    $("media-types").tBodies[0].replaceChildren(...rows);
    $("media-types").hidden = metrics.endpoints.length === 0;
  }

  function bodyText(message) {
    if (message.body !== null && message.body !== undefined) return JSON.stringify(message.body, null, 2);
    const cut = message.body_truncated ? `\n… (cut: ${number(message.body_truncated)} characters in all)` : "";
    return (message.raw_body ?? "") + cut;
  }

  function renderMessage(message, limit) {
    const meta = el("dl", { className: "meta" });
    const atLimit = limit && message.receive_count >= limit;
    const sent = message.sent_at ? new Date(message.sent_at * 1000).toISOString() : null;
    const reason = message.dead_letter ? message.dead_letter.reason : null;
    for (const [label, value] of [
      ["media type", message.media_type], ["message id", message.message_id],
      ["SNS message id", message.sns_message_id],
      ["receive count", atLimit ? `${message.receive_count} of ${limit}: its next receive moves it to the dead-letter queue`
        : message.receive_count],
      ["size", `${number(message.size)} bytes`], ["sent", sent], ["group", message.message_group_id],
      ["dead-letter reason", reason], ["body", message.body_error],
    ]) {
      if (value !== null && value !== undefined && value !== "") meta.append(el("dt", {}, label), el("dd", {}, value));
    }
    const body = el("pre", { className: "body" });
    body.hidden = true;
    const toggle = button("show body", () => {
      if (!body.textContent) body.textContent = bodyText(message);
      body.hidden = !body.hidden;
      toggle.textContent = body.hidden ? "show body" : "hide body";
    });
    toggle.className = "toggle-body";
    return el("li", { dataset: { messageId: message.message_id } }, meta, toggle, body);
  }

  async function peek(name) {
    peeking = name;
    $("peek").hidden = false;
    $("peek-queue").textContent = name;
    $("peek-status").textContent = "peeking…";
    $("peek-messages").replaceChildren();
    try {
      const answer = await request("/api/peek", {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ queue: name, count: 10 }),
      });
      if (peeking !== name) return;
      const count = answer.messages.length;
      $("peek-status").textContent = count ? `${count} message${count === 1 ? "" : "s"} (peeked at ${answer.peeked_at})`
        : `no visible message (peeked at ${answer.peeked_at})`;
      const limit = maxReceives.get(name);
      $("peek-messages").replaceChildren(...answer.messages.map((message) => renderMessage(message, limit)));
    } catch (error) {
      if (peeking === name) $("peek-status").textContent = `peek failed: ${error.message}`;
    }
  }

  async function refresh() {
    try {
      const overview = await request("/api/overview");
      refreshMs = Math.max(500, overview.refresh_s * 1000);
      document.querySelector("main").classList.toggle("stale", !overview.ok);
      if (overview.ok) {
        renderQueues(overview.queues);
        renderTopics(overview.topics);
      }
      showError(overview.ok ? "" : `Cannot read ${overview.endpoint ?? "the endpoint"}: ${overview.error}`);
      setStatus(overview.ok ? "live" : "endpoint unreachable", overview.ok);
      $("updated").textContent = `updated ${overview.generated_at}`;
      renderMetrics(await request("/api/metrics"));
    } catch (error) {
      setStatus("dashboard server unreachable", false);
      showError(`The dashboard server did not answer: ${error.message}`);
    }
  }

  // One poll at a time; a hidden tab makes no calls (visibilitychange starts polling again).
  async function poll() {
    clearTimeout(timer);
    timer = null;
    if (polling || document.hidden) return;
    polling = true;
    try {
      await refresh();
    } finally {
      polling = false;
    }
    timer = setTimeout(poll, refreshMs);
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("peek-close").addEventListener("click", () => { peeking = null; $("peek").hidden = true; });
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && timer === null && !polling) poll();
    });
    poll();
  });
})();
