// Ballista live page: follows the run's websocket stream (ballista.live/1) and
// draws it with uPlot. No build step: plain script, uPlot loaded before it.
"use strict";

(function () {
  const MAX_POINTS = 3600; // a bounded history, whatever the run length
  const KINDS = ["connect_refused", "connect_timeout", "read_timeout", "write_timeout",
    "pool_timeout", "reset", "protocol", "tls", "dns", "other"];
  const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
    "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];

  const $ = (id) => document.getElementById(id);
  const state = { snapshots: 0, lastSeq: null, hello: null, summary: null, runId: null };
  window.ballista = state; // for people poking in the console, and for tests

  // -- where the stream is ---------------------------------------------------
  const meta = (name) => {
    const tag = document.querySelector(`meta[name="${name}"]`);
    return tag ? tag.content : "";
  };

  function streamUrl() {
    const override = new URLSearchParams(location.search).get("ws");
    if (override) return override;
    // A configured public URL (serve --live-url), resolved against the page's own
    // location: "/live/" behind a reverse proxy, "wss://host/live/" anywhere.
    const configured = meta("ballista-live-url");
    if (configured) {
      const url = new URL(configured, location.href);
      url.protocol = { "http:": "ws:", "https:": "wss:" }[url.protocol] || url.protocol;
      return url.href;
    }
    const port = meta("ballista-live-port");
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const host = location.hostname.includes(":") ? `[${location.hostname}]` : location.hostname;
    return `${scheme}//${host}:${port}/`;
  }

  // -- formatting ------------------------------------------------------------
  const int = (n) => (n == null ? "–" : Math.round(n).toLocaleString("en-US"));
  const num = (n, d = 1) => (n == null ? "–" : n.toLocaleString("en-US",
    { minimumFractionDigits: d, maximumFractionDigits: d }));
  function ms(seconds) {
    if (seconds == null) return "–";
    const v = seconds * 1000;
    if (v >= 10000) return `${(v / 1000).toFixed(1)} s`;
    if (v >= 100) return `${v.toFixed(0)} ms`;
    return `${v.toFixed(v < 10 ? 2 : 1)} ms`;
  }
  const counts = (obj) => Object.entries(obj || {}).filter(([, v]) => v)
    .map(([k, v]) => `${k}: ${int(v)}`).join(", ") || "none";

  // -- charts ----------------------------------------------------------------
  const charts = {};
  state.charts = charts;

  function series(label, color, extra) {
    return Object.assign({ label, stroke: color, width: 2, spanGaps: false }, extra || {});
  }

  function makeChart(id, seriesList, yLabel) {
    const el = $(id);
    const data = [[]].concat(seriesList.map(() => []));
    const opts = {
      width: Math.max(300, el.clientWidth || 560),
      height: 240,
      scales: { x: { time: false } },
      axes: [{ label: "elapsed (s)" }, { label: yLabel, size: 60 }],
      series: [{ label: "t (s)", value: (u, v) => (v == null ? "–" : v.toFixed(1)) }]
        .concat(seriesList),
      legend: { live: true },
    };
    el.textContent = "";
    const plot = new uPlot(opts, data, el);
    charts[id] = { plot, data, el };
    return charts[id];
  }

  function push(id, x, values) {
    const c = charts[id];
    c.data[0].push(x);
    values.forEach((v, i) => c.data[i + 1].push(v));
    if (c.data[0].length > MAX_POINTS) c.data.forEach((a) => a.shift());
    c.plot.setData(c.data);
  }

  let errorKinds = KINDS.slice();
  function buildCharts() {
    makeChart("chart-status", [
      series("2xx", "#2ca02c"), series("3xx", "#1f77b4"), series("4xx", "#ff7f0e"),
      series("5xx", "#d62728"), series("no response", "#7f7f7f"),
    ], "req/s");
    makeChart("chart-latency", [
      series("p50", "#1f77b4"), series("p90", "#2ca02c"), series("p99", "#ff7f0e"),
      series("max", "#d62728", { dash: [4, 4] }),
    ], "ms");
    makeChart("chart-concurrency", [
      series("in flight", "#1f77b4"), series("concurrency limit", "#d62728", { dash: [6, 3] }),
    ], "requests");
    makeChart("chart-rate", [
      series("achieved", "#1f77b4"), series("target", "#d62728", { dash: [6, 3] }),
    ], "req/s");
    makeErrorsChart();
  }
  function makeErrorsChart(old) {
    const c = makeChart("chart-errors",
      errorKinds.map((k, i) => series(k, PALETTE[i % PALETTE.length])), "errors/s");
    if (old) { // keep the history when a new kind appears
      old.data.forEach((a, i) => { c.data[i] = a.slice(); });
      while (c.data.length < errorKinds.length + 1) c.data.push(c.data[0].map(() => 0));
      c.plot.setData(c.data);
    }
  }

  function resize() {
    Object.values(charts).forEach((c) => {
      c.plot.setSize({ width: Math.max(300, c.el.clientWidth), height: 240 });
    });
  }
  window.addEventListener("resize", resize);

  // -- messages ---------------------------------------------------------------
  function onHello(h) {
    if (state.runId !== null && state.runId !== h.run_id) {
      state.lastSeq = null; state.snapshots = 0; errorKinds = KINDS.slice(); buildCharts();
    }
    state.runId = h.run_id;
    state.hello = h;
    $("target").textContent = h.target;
    $("model").textContent = h.model;
    $("protocol").textContent = h.protocol || "–";
    $("started").textContent = h.started_at;
    $("duration").textContent = h.duration_s ? ` of ${h.duration_s}s` : "";
    document.title = `Ballista – ${h.target}`;
  }

  function classCounts(byStatus) {
    const out = [0, 0, 0, 0];
    Object.entries(byStatus || {}).forEach(([code, n]) => {
      const cls = Math.floor(Number(code) / 100);
      if (cls >= 2 && cls <= 5) out[cls - 2] += n;
      else if (cls === 1) out[0] += n;
    });
    return out;
  }

  function onSnapshot(s) {
    if (state.lastSeq !== null && s.seq <= state.lastSeq) return; // re-sent after a reconnect
    state.lastSeq = s.seq;
    state.snapshots += 1;
    state.last = s;
    const il = s.interval_latency_s || {};
    $("elapsed").textContent = s.elapsed.toFixed(1);
    $("requests").textContent = int(s.requests);
    $("rps").textContent = num(s.rps);
    $("failed").textContent = int(s.failed);
    $("error-rate").textContent = `${(100 * s.error_rate).toFixed(2)} %`;
    $("failed").classList.toggle("fail", s.failed > 0);
    $("p50").textContent = ms(il.p50);
    $("p99").textContent = ms(il.p99);
    $("in-flight").textContent = int(s.in_flight);
    $("limit").textContent = s.concurrency_limit == null ? "–" : int(s.concurrency_limit);
    $("target-rate").textContent = s.target_rate == null ? "–" : num(s.target_rate);
    // Ballista's own event loop running late: the generator, not the target, is the limit.
    const lag = s.loop_lag_s || 0;
    $("generator").textContent = lag > 0.010 ? `generator-bound: event loop ${Math.round(lag * 1000)} ms late` : "";
    fillTable("status-table", s.status_codes);
    fillTable("errors-table", s.errors_by_kind);

    // The final snapshot usually covers a sliver of an interval: its rate is noise.
    const tick = (state.hello && state.hello.interval) || s.interval;
    if (s.final && s.interval < tick / 2) return;
    const per = s.interval > 0 ? 1 / s.interval : 0;
    const x = s.elapsed;
    const cls = classCounts(s.interval_status_codes).map((n) => n * per);
    push("chart-status", x, cls.concat([s.interval_errors * per]));
    const lat = (k) => (il && il.count ? il[k] * 1000 : null);
    push("chart-latency", x, [lat("p50"), lat("p90"), lat("p99"), lat("max")]);
    push("chart-concurrency", x, [s.in_flight, s.concurrency_limit]);
    push("chart-rate", x, [s.rps, s.target_rate]);
    const kinds = s.interval_errors_by_kind || {};
    const fresh = Object.keys(kinds).filter((k) => !errorKinds.includes(k));
    if (fresh.length) { errorKinds = errorKinds.concat(fresh); makeErrorsChart(charts["chart-errors"]); }
    push("chart-errors", x, errorKinds.map((k) => (kinds[k] || 0) * per));
  }

  function fillTable(id, obj) {
    const body = $(id);
    body.textContent = "";
    Object.entries(obj || {}).forEach(([k, v]) => {
      if (!v) return;
      const tr = document.createElement("tr");
      [k, int(v)].forEach((t) => { const td = document.createElement("td"); td.textContent = t; tr.appendChild(td); });
      body.appendChild(tr);
    });
  }

  function onSummary(doc) {
    state.summary = doc;
    $("summary").hidden = false;
    $("summary-requests").textContent = int(doc.requests);
    $("summary-requests").dataset.value = String(doc.requests);
    $("summary-responses").textContent = int(doc.responses);
    $("summary-errors").textContent = int(doc.errors);
    $("summary-failed").textContent = `${int(doc.failed)} (${(100 * doc.error_rate).toFixed(2)} %)`;
    $("summary-duration").textContent = `${doc.duration_s.toFixed(2)} s`;
    $("summary-rps").textContent = num(doc.rps);
    const l = doc.latency_s || {};
    $("summary-latency").textContent = ["min", "mean", "p50", "p90", "p95", "p99", "p999", "max"]
      .map((k) => `${k} ${ms(l[k])}`).join(" · ");
    $("summary-status").textContent = counts(doc.status_codes);
    $("summary-errors-by-kind").textContent = counts(doc.errors_by_kind);
    const th = doc.thresholds || [];
    $("summary-thresholds").textContent = th.length
      ? th.map((t) => `${t.expr}: ${t.ok ? "ok" : "FAILED"}`).join(", ") : "none";
    $("requests").textContent = int(doc.requests);
    $("rps").textContent = num(doc.rps);
    $("p50").textContent = ms(l.p50);
    $("p99").textContent = ms(l.p99);
    setState("finished");
  }

  function setState(name) {
    const el = $("state");
    el.textContent = name;
    el.className = `state ${name}`;
  }

  // -- the connection -----------------------------------------------------------
  let backoff = 250;
  function connect() {
    const url = streamUrl();
    $("ws-url").textContent = url;
    const ws = new WebSocket(url);
    ws.onopen = () => { backoff = 250; setState("live"); };
    ws.onmessage = (ev) => {
      const m = JSON.parse(ev.data);
      if (m.type === "hello") onHello(m);
      else if (m.type === "snapshot") onSnapshot(m);
      else if (m.type === "summary") onSummary(m);
    };
    ws.onclose = () => {
      if (state.summary) return; // the run is over: nothing more will come
      setState("reconnecting");
      setTimeout(connect, backoff);
      backoff = Math.min(5000, backoff * 2);
    };
  }

  buildCharts();
  connect();
})();
