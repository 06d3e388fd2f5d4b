// Ballista's page, one code base for both places it is served:
// - `ballista run --live-port`: one run, followed on its websocket stream;
// - `ballista serve`: every run of the daemon (the API's list, polled), and the
//   chosen run's charts from its start: its stored points first (the API's
//   `?points`), then its live snapshots, joined on the same clock without a gap
//   or a double point at the seam.
// No build step: plain script, uPlot loaded before it. Every URL is relative to
// the page (works behind a port mapping or a reverse proxy); the token, when the
// daemon has one, lives in sessionStorage and travels as a header (or, for the
// websocket, as a subprotocol), never in a URL.
"use strict";

(function () {
  const MAX_POINTS = 3600; // points per chart, whatever the run length
  const HISTORY_POINTS = 1500; // asked of the API for a view: downsampled beyond
  const RECENT_S = 900; // the last 15 min at the store's own resolution, the rest coarser
  const KINDS = ["connect_refused", "connect_timeout", "read_timeout", "write_timeout",
    "pool_timeout", "reset", "protocol", "tls", "dns", "other"];
  const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
    "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
  const ACTIVE = ["running", "stopping"];
  const TOKEN_KEY = "ballista.token";
  const RUNS_LISTED = 50; // the newest runs listed, besides every active one

  const $ = (id) => document.getElementById(id);
  const meta = (name) => {
    const tag = document.querySelector(`meta[name="${name}"]`);
    return tag ? tag.content : "";
  };
  // "{{API}}" unreplaced (the file opened as it is) counts as no API.
  const apiBase = /^\{\{/.test(meta("ballista-api")) ? "" : meta("ballista-api");
  const daemon = apiBase !== "";

  const state = {
    mode: daemon ? "daemon" : "run",
    snapshots: 0, lastSeq: null, hello: null, summary: null, runId: null,
    runs: [], run: null, historyPoints: 0, historyEnd: null, historyLoads: 0,
    streamDrops: 0, reconnects: 0, range: 0, zoom: null, plotted: [],
  };
  window.ballista = state; // for people poking in the console, and for tests

  // -- the token ---------------------------------------------------------------
  const token = () => sessionStorage.getItem(TOKEN_KEY) || "";
  function askToken(why) {
    $("token-form").hidden = false;
    banner(why, "warn");
    $("token-input").focus();
  }
  $("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token-input").value.trim());
    $("token-input").value = "";
    $("token-form").hidden = true;
    banner("");
    refreshRuns();
    if (state.runId) openRun(state.runId);
  });
  $("token-button").addEventListener("click", () => { $("token-form").hidden = !$("token-form").hidden; });

  class AuthError extends Error {}

  async function api(path, options) {
    const opts = Object.assign({ headers: {}, cache: "no-store" }, options || {});
    if (token()) opts.headers.authorization = `Bearer ${token()}`;
    const res = await fetch(new URL(path, new URL(apiBase, location.href)), opts);
    if (res.status === 401) {
      askToken(token() ? "The token was refused: enter it again." : "The daemon asks for its token.");
      throw new AuthError("token");
    }
    return res;
  }
  async function apiJson(path, options) {
    const res = await api(path, options);
    const doc = await res.json();
    if (!res.ok) throw new Error(doc.error || `HTTP ${res.status}`);
    return doc;
  }

  // -- where the stream is ------------------------------------------------------
  function streamBase() {
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
  function streamUrl(runId) {
    const base = streamBase();
    if (!daemon || new URLSearchParams(location.search).get("ws")) return base;
    return new URL(`runs/${encodeURIComponent(runId)}`, base.endsWith("/") ? base : `${base}/`).href;
  }
  function subprotocols() {
    if (!daemon) return undefined;
    // A stream named in the page's own URL (?ws=) may be anyone's: never hand it the token.
    const t = new URLSearchParams(location.search).get("ws") ? "" : token();
    if (!t) return ["ballista.live"];
    const b64 = btoa(String.fromCharCode(...new TextEncoder().encode(t)))
      .replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
    return ["ballista.live", `ballista.bearer.${b64}`];
  }

  // -- formatting ---------------------------------------------------------------
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
  function duration(s) {
    if (s == null) return "–";
    if (s < 120) return `${s.toFixed(1)} s`;
    if (s < 7200) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
    return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
  }
  const clock = (unix) => new Date(unix * 1000).toISOString().replace("T", " ").slice(0, 19);
  const counts = (obj) => Object.entries(obj || {}).filter(([, v]) => v)
    .map(([k, v]) => `${k}: ${int(v)}`).join(", ") || "none";

  function banner(text, kind) {
    const el = $("banner");
    el.textContent = text || "";
    el.hidden = !text;
    el.className = `banner ${kind || ""}`;
  }
  function setState(name) {
    const el = $("state");
    el.textContent = name;
    el.className = `state ${name}`;
  }

  // -- charts -------------------------------------------------------------------
  const charts = {};
  state.charts = charts;
  let applyingZoom = false;

  function series(label, color, extra) {
    return Object.assign({ label, stroke: color, width: 2, spanGaps: false }, extra || {});
  }

  function zoomAll(min, max) {
    state.zoom = min == null ? null : { min, max };
    $("unzoom").hidden = state.zoom == null;
    applyingZoom = true;
    Object.values(charts).forEach((c) => {
      if (state.zoom) c.plot.setScale("x", { min, max });
      else c.plot.setData(c.data, true);
    });
    applyingZoom = false;
  }

  function makeChart(id, seriesList, yLabel) {
    const el = $(id);
    const data = [[]].concat(seriesList.map(() => []));
    const opts = {
      width: Math.max(300, el.clientWidth || 560),
      height: 240,
      scales: { x: { time: true } },
      axes: [{}, { label: yLabel, size: 60 }],
      series: [{ label: "time" }].concat(seriesList),
      legend: { live: true },
      // Drag to zoom every chart at once (and keep it while live points arrive).
      cursor: { drag: { x: true, y: false, setScale: false }, sync: { key: "ballista" } },
      hooks: {
        setSelect: [(u) => {
          if (applyingZoom || u.select.width < 3) return;
          const min = u.posToVal(u.select.left, "x");
          const max = u.posToVal(u.select.left + u.select.width, "x");
          u.setSelect({ left: 0, width: 0, top: 0, height: 0 }, false);
          zoomAll(min, max);
        }],
      },
    };
    el.textContent = "";
    const plot = new uPlot(opts, data, el);
    el.addEventListener("dblclick", () => zoomAll(null));
    charts[id] = { plot, data, el };
    return charts[id];
  }

  function redraw(c) {
    c.plot.setData(c.data, state.zoom == null);
    if (state.zoom) c.plot.setScale("x", state.zoom);
  }

  function push(id, x, values, draw = true) {
    const c = charts[id];
    c.data[0].push(x);
    values.forEach((v, i) => c.data[i + 1].push(v));
    const horizon = state.range ? x - state.range : null;
    while (c.data[0].length > MAX_POINTS || (horizon != null && c.data[0][0] < horizon)) {
      c.data.forEach((a) => a.shift());
    }
    if (draw) redraw(c);
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
      redraw(c);
    }
  }
  function resetCharts() {
    errorKinds = KINDS.slice();
    state.plotted = [];
    state.zoom = null;
    $("unzoom").hidden = true;
    buildCharts();
  }

  function resize() {
    Object.values(charts).forEach((c) => {
      c.plot.setSize({ width: Math.max(300, c.el.clientWidth), height: 240 });
    });
  }
  window.addEventListener("resize", resize);

  function classCounts(byStatus) {
    const out = [0, 0, 0, 0];
    Object.entries(byStatus || {}).forEach(([code, n]) => {
      const cls = Math.floor(Number(code) / 100);
      if (cls >= 2 && cls <= 5) out[cls - 2] += n;
      else if (cls === 1) out[0] += n;
    });
    return out;
  }

  // One row of every chart: from a live snapshot or a stored point alike.
  // `row`: {x, width, statusCodes, noResponse, latency {p50,p90,p99,max}|null,
  //         inFlight, limit, rps, targetRate, errorsByKind}
  function plotRow(row, draw = true) {
    // uPlot wants x strictly increasing: a late tick can leave two intervals
    // ending within a rounding of each other.
    const prev = state.plotted.length ? state.plotted[state.plotted.length - 1].x : null;
    if (prev !== null && row.x <= prev) row.x = prev + 1e-6;
    const per = row.width > 0 ? 1 / row.width : 0;
    const cls = classCounts(row.statusCodes).map((n) => n * per);
    push("chart-status", row.x, cls.concat([row.noResponse * per]), draw);
    const l = row.latency;
    const lat = (k) => (l ? l[k] * 1000 : null);
    push("chart-latency", row.x, [lat("p50"), lat("p90"), lat("p99"), lat("max")], draw);
    push("chart-concurrency", row.x, [row.inFlight, row.limit], draw);
    push("chart-rate", row.x, [row.rps, row.targetRate], draw);
    const kinds = row.errorsByKind || {};
    const fresh = Object.keys(kinds).filter((k) => !errorKinds.includes(k));
    if (fresh.length) { errorKinds = errorKinds.concat(fresh); makeErrorsChart(charts["chart-errors"]); }
    push("chart-errors", row.x, errorKinds.map((k) => (kinds[k] || 0) * per), draw);
    state.lastX = row.x;
    // What was drawn, and from where: the tests check the seam against it.
    state.plotted.push({ x: row.x, seq: row.seq, segment: row.segment, from: row.from });
    if (state.plotted.length > MAX_POINTS) state.plotted.shift();
  }
  // A break in every line (between segments of a resumed run).
  function plotGap(x) {
    Object.entries(charts).forEach(([id, c]) => {
      push(id, x, c.data.slice(1).map(() => null), false);
    });
  }
  const redrawAll = () => Object.values(charts).forEach(redraw);
  const chartPoints = () => charts["chart-status"].data[0].length;

  // -- live messages ----------------------------------------------------------------
  function onHello(h) {
    if (state.runId !== null && state.runId !== h.run_id && !daemon) {
      state.lastSeq = null; state.snapshots = 0; resetCharts();
    }
    // A resumed run's new segment counts its snapshots from 1 again.
    if (state.hello && state.hello.segment !== h.segment) {
      state.lastSeq = null;
      state.summary = null;
      $("summary").hidden = true;
    }
    state.runId = h.run_id;
    state.hello = h;
    $("target").textContent = h.target;
    $("model").textContent = h.model;
    $("protocol").textContent = h.protocol || "–";
    $("started").textContent = h.started_at;
    $("duration").textContent = h.duration_s ? ` of ${h.duration_s}s` : "";
    document.title = `Ballista – ${h.scenario || h.target}`;
  }

  function snapshotX(s) {
    const h = state.hello || {};
    // Older streams carry no started_at_unix: elapsed seconds from 0 then.
    return (h.started_at_unix || 0) + s.elapsed;
  }

  function showFigures(s) {
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
    fillFlows(s.flows);
  }

  function snapshotRow(s) {
    const il = s.interval_latency_s;
    return {
      x: snapshotX(s), width: s.interval, statusCodes: s.interval_status_codes,
      noResponse: s.interval_errors, latency: il && il.count ? il : null,
      inFlight: s.in_flight, limit: s.concurrency_limit, rps: s.rps,
      targetRate: s.target_rate, errorsByKind: s.interval_errors_by_kind,
      seq: s.seq, segment: state.hello ? state.hello.segment : null, from: "live",
    };
  }

  let pending = null; // live snapshots held while the history loads
  function onSnapshot(s) {
    if (state.lastSeq !== null && s.seq <= state.lastSeq) return; // re-sent after a reconnect
    state.lastSeq = s.seq;
    state.snapshots += 1;
    state.last = s;
    showFigures(s);
    // The final snapshot usually covers a sliver of an interval: its rate is noise.
    const tick = (state.hello && state.hello.interval) || s.interval;
    if (s.final && s.interval < tick / 2) return;
    if (pending) { pending.push(s); return; }
    plotSnapshot(s);
  }
  function plotSnapshot(s) {
    const x = snapshotX(s);
    // Already drawn from the store: the seam is never a double point.
    if (state.historyEnd != null && x <= state.historyEnd + 1e-3) return;
    plotRow(snapshotRow(s));
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

  function fillFlows(flows) {
    const names = Object.keys(flows || {});
    $("flows").hidden = names.length === 0;
    if (!names.length) return;
    const body = $("flows-body");
    body.textContent = "";
    names.sort().forEach((name) => {
      const f = flows[name] || {};
      const d = f.duration_s || {};
      const cells = [name, int(f.iterations), int(f.completed), int(f.failed),
        ms(d.p50), ms(d.p95), ms(d.p99), ms(d.max), counts(f.failures_by_reason)];
      const tr = document.createElement("tr");
      tr.dataset.flow = name;
      cells.forEach((t, i) => {
        const td = document.createElement("td");
        td.textContent = t;
        if (i === 3 && f.failed) td.className = "fail";
        tr.appendChild(td);
      });
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
    fillTable("status-table", doc.status_codes);
    fillTable("errors-table", doc.errors_by_kind);
    if (doc.flows) fillFlows(doc.flows);
  }

  // -- the stream ---------------------------------------------------------------------
  let ws = null;
  let backoff = 500;
  let retryTimer = null;
  let viewGen = 0; // bumped when another run is opened: late callbacks of the old one do nothing
  let reloadOnOpen = false; // the stream was lost: the store has what it missed

  function closeStream() {
    clearTimeout(retryTimer);
    retryTimer = null;
    if (ws) { ws.onclose = null; ws.onmessage = null; ws.close(); ws = null; }
  }
  function retry(fn, wait) {
    clearTimeout(retryTimer);
    retryTimer = setTimeout(() => { retryTimer = null; fn(); }, wait);
  }

  function connect(runId) {
    const gen = viewGen;
    const url = streamUrl(runId);
    $("ws-url").textContent = url;
    const sock = new WebSocket(url, subprotocols());
    ws = sock;
    sock.onopen = () => {
      if (gen !== viewGen) return;
      backoff = 500;
      setState("live");
      if (reloadOnOpen) {
        reloadOnOpen = false;
        state.reconnects += 1;
        banner(`Live stream back at ${clock(Date.now() / 1000)}: history reloaded from the store.`, "ok");
        if (daemon) loadHistory(runId, true);
      }
    };
    sock.onmessage = (ev) => {
      if (gen !== viewGen) return;
      const m = JSON.parse(ev.data);
      if (m.type === "hello") onHello(m);
      else if (m.type === "snapshot") onSnapshot(m);
      else if (m.type === "summary") { onSummary(m); finished(m); }
    };
    sock.onclose = () => {
      if (gen !== viewGen || ws !== sock) return;
      ws = null;
      if (state.summary) return; // the run is over (a daemon's run may resume: refreshRuns looks)
      state.streamDrops += 1;
      reloadOnOpen = true;
      setState("reconnecting");
      const wait = backoff;
      backoff = Math.min(10000, backoff * 2);
      banner(`Live stream lost at ${clock(Date.now() / 1000)}: reconnecting in ${(wait / 1000).toFixed(1)} s. `
        + "The charts go on, without a gap, once it is back.", "warn");
      retry(() => (daemon ? resumeRun(runId, gen) : connect(runId)), wait);
    };
  }

  // After a drop: is the run still live? (the daemon may have restarted: an
  // interrupted run has no stream any more, a resumed one has a new segment)
  async function resumeRun(runId, gen) {
    let doc;
    try {
      doc = await apiJson(`runs/${encodeURIComponent(runId)}`);
    } catch (err) {
      if (gen !== viewGen || err instanceof AuthError) return;
      const wait = backoff;
      backoff = Math.min(10000, backoff * 2);
      banner(`Live stream lost, and the daemon does not answer: retrying in ${(wait / 1000).toFixed(1)} s.`, "warn");
      retry(() => resumeRun(runId, gen), wait);
      return;
    }
    if (gen !== viewGen) return;
    if (ACTIVE.includes(doc.status)) {
      connect(runId);
      return;
    }
    reloadOnOpen = false;
    state.reconnects += 1;
    banner(`The run is ${doc.status}${doc.reason ? ` (${doc.reason})` : ""}: its stored history is shown.`, "");
    await loadHistory(runId, true);
  }

  function finished(doc) {
    setState("finished");
    if (daemon) {
      // A run the daemon interrupted may come back as a new segment: reload then.
      reloadOnOpen = true;
      refreshRuns();
      setTimeout(refreshRuns, 1500);
    }
    return doc;
  }

  // -- the daemon: runs, history, actions ---------------------------------------------
  // A run's row, updated in place (rows are never rebuilt under the pointer).
  function runRow(r, existing) {
    const tr = existing || document.createElement("tr");
    if (!existing) {
      tr.dataset.id = r.id;
      tr.addEventListener("click", () => { location.hash = `run=${encodeURIComponent(r.id)}`; });
    }
    tr.className = `${r.id === state.runId ? "selected" : ""} ${r.status}`;
    const started = r.created_at ? r.created_at.replace("T", " ").replace("Z", "") : "–";
    const cells = [r.name, r.status, r.target, r.model || "–", started, duration(r.duration_s),
      int(r.requests), num(r.rps), `${(100 * (r.error_rate || 0)).toFixed(2)} %`,
      ms(r.latency_p99_s)];
    cells.forEach((t, i) => {
      const td = tr.children[i] || tr.appendChild(document.createElement("td"));
      if (td.textContent !== t) td.textContent = t;
      if (i === 1) td.className = `status ${r.status}`;
    });
    return tr;
  }

  async function refreshRuns() {
    let doc;
    try {
      doc = await apiJson(`runs?limit=${RUNS_LISTED}`);
    } catch (err) {
      return; // the stream's banner (or the token form) says what is wrong
    }
    state.runs = doc.runs;
    $("token-button").hidden = !token();
    // Active runs first, then the most recent others.
    const active = doc.runs.filter((r) => ACTIVE.includes(r.status));
    const rest = doc.runs.filter((r) => !ACTIVE.includes(r.status));
    const body = $("runs-body");
    const rows = new Map([...body.children].map((tr) => [tr.dataset.id, tr]));
    active.concat(rest).forEach((r, i) => {
      const tr = runRow(r, rows.get(r.id));
      rows.delete(r.id);
      if (body.children[i] !== tr) body.insertBefore(tr, body.children[i] || null);
    });
    rows.forEach((tr) => tr.remove());
    $("runs-empty").hidden = doc.runs.length > 0;
    const mine = doc.runs.find((r) => r.id === state.runId);
    if (mine) {
      state.run = Object.assign(state.run || {}, mine);
      $("stop").disabled = !ACTIVE.includes(mine.status);
      if (!ACTIVE.includes(mine.status) && !ws) setState(mine.status);
      // Live again with no stream (resumed after the daemon came back): follow it.
      if (ACTIVE.includes(mine.status) && !ws && !retryTimer && !pending && state.historyLoads) {
        reloadOnOpen = true;
        connect(state.runId);
      }
    }
    if (!state.runId && doc.runs.length && !location.hash) {
      const first = active[0] || doc.runs[0];
      location.hash = `run=${encodeURIComponent(first.id)}`;
    }
  }

  function pointRow(p) {
    const width = p.t_end - p.t_start;
    const l = p.latency_s;
    return {
      x: p.t_end, width, statusCodes: p.status_codes, noResponse: p.errors,
      latency: p.requests ? l : null, inFlight: p.in_flight, limit: p.concurrency_limit,
      rps: p.rps, targetRate: p.target_rate, errorsByKind: p.errors_by_kind,
      seq: p.seq, segment: p.segment, from: "history",
    };
  }

  function showRun(doc) {
    state.run = doc;
    $("run-name").textContent = doc.name;
    $("target").textContent = doc.target;
    $("model").textContent = doc.model || "–";
    $("protocol").textContent = (doc.summary && doc.summary.protocol) || "–";
    $("started").textContent = doc.created_at;
    $("duration").textContent = "";
    $("elapsed").textContent = (doc.duration_s || 0).toFixed(1);
    $("stop").disabled = !ACTIVE.includes(doc.status);
    document.title = `Ballista – ${doc.name}`;
    if (doc.summary) {
      const s = doc.summary;
      $("requests").textContent = int(s.requests);
      $("rps").textContent = num(s.rps);
      $("failed").textContent = int(s.failed);
      $("error-rate").textContent = `${(100 * s.error_rate).toFixed(2)} %`;
      fillTable("status-table", s.status_codes);
      fillTable("errors-table", s.errors_by_kind);
      if (s.flows) fillFlows(s.flows);
      if (!ACTIVE.includes(doc.status)) onSummary(s);
    }
  }

  // Stored points of the view's range (downsampled by the API when there are many:
  // the recent past, which the store keeps at full resolution, stays fine), then
  // the live snapshots held meanwhile. `again`: after a reconnect or a range change.
  async function loadHistory(runId, again) {
    const gen = viewGen;
    pending = pending || [];
    let from = "";
    if (state.range && state.lastX) from = `&from=${state.lastX - state.range}`;
    let doc;
    try {
      doc = await apiJson(`runs/${encodeURIComponent(runId)}?points&max_points=${HISTORY_POINTS}&recent=${RECENT_S}${from}`);
    } catch (err) {
      if (gen === viewGen) { pending = null; if (!(err instanceof AuthError)) banner(`Cannot load the run: ${err.message}`, "warn"); }
      return;
    }
    if (gen !== viewGen) return;
    // The store writes each interval a moment after the stream sends it: wait
    // (briefly) until the points reach the first live snapshot held.
    for (let tries = 0; tries < 8 && pending.length && ACTIVE.includes(doc.status); tries++) {
      const first = pending[0];
      const last = doc.points[doc.points.length - 1];
      if (!first || (last && last.t_end + 1e-3 >= snapshotX(first) - first.interval)) break;
      await new Promise((r) => setTimeout(r, 250));
      if (gen !== viewGen) return;
      const after = last ? `&from=${last.t_end}` : "";
      const more = await apiJson(`runs/${encodeURIComponent(runId)}?points${after}`).catch(() => null);
      if (gen !== viewGen) return;
      if (more) {
        doc.status = more.status;
        more.points.forEach((p) => { if (!last || p.t_start >= last.t_end - 1e-3) doc.points.push(p); });
      }
    }
    if (again) resetCharts();
    showRun(doc);
    let seg = null;
    let end = null;
    doc.points.forEach((p) => {
      if (seg !== null && p.segment !== seg && end !== null) plotGap(end + 1e-3);
      plotRow(pointRow(p), false);
      seg = p.segment;
      end = p.t_end;
    });
    state.historyPoints = doc.points.length;
    state.historyEnd = end;
    state.historyLoads += 1;
    redrawAll();
    const held = pending;
    pending = null;
    held.forEach(plotSnapshot);
    if (!ACTIVE.includes(doc.status)) setState(doc.status);
  }

  async function openRun(runId) {
    viewGen += 1;
    closeStream();
    Object.assign(state, {
      runId, hello: null, summary: null, lastSeq: null, snapshots: 0, historyEnd: null,
      historyPoints: 0, historyLoads: 0, lastX: null, run: null, streamDrops: 0, reconnects: 0,
    });
    pending = null;
    backoff = 500;
    reloadOnOpen = false;
    banner("");
    $("summary").hidden = true;
    $("flows").hidden = true;
    $("toolbar").hidden = false;
    $("copy-text").hidden = true;
    $("action-result").textContent = "";
    document.querySelectorAll("#runs-body tr").forEach((tr) => tr.classList.toggle("selected", tr.dataset.id === runId));
    resetCharts();
    setState("connecting");
    pending = [];
    let doc;
    try {
      doc = await apiJson(`runs/${encodeURIComponent(runId)}`);
    } catch (err) {
      pending = null;
      if (!(err instanceof AuthError)) banner(`No run ${runId}: ${err.message}`, "warn");
      return;
    }
    // The stream first, so that nothing between the history and the first
    // snapshot is missed; the history is drawn under it.
    if (ACTIVE.includes(doc.status)) connect(runId);
    await loadHistory(runId, false);
  }

  function setRange(seconds) {
    state.range = seconds;
    document.querySelectorAll("#ranges [data-range]").forEach((b) => b.classList.toggle("on", Number(b.dataset.range) === seconds));
    if (daemon && state.runId) loadHistory(state.runId, true);
    else {
      Object.values(charts).forEach((c) => {
        const horizon = seconds && state.lastX ? state.lastX - seconds : null;
        while (horizon != null && c.data[0].length && c.data[0][0] < horizon) c.data.forEach((a) => a.shift());
        redraw(c);
      });
    }
  }
  document.querySelectorAll("#ranges [data-range]").forEach((b) => {
    b.addEventListener("click", () => setRange(Number(b.dataset.range)));
  });
  $("unzoom").addEventListener("click", () => zoomAll(null));

  // -- actions -------------------------------------------------------------------------
  function result(text, bad) {
    $("action-result").textContent = text;
    $("action-result").className = bad ? "fail" : "muted";
  }
  $("stop").addEventListener("click", async () => {
    const id = state.runId;
    try {
      const res = await api(`runs/${encodeURIComponent(id)}/stop`, { method: "POST" });
      const doc = await res.json();
      if (!res.ok) { result(doc.error || `HTTP ${res.status}`, true); return; }
      result(`stop asked: ${doc.status}`);
      setState("stopping");
      refreshRuns();
    } catch (err) {
      if (!(err instanceof AuthError)) result(`stop failed: ${err.message}`, true);
    }
  });
  $("report").addEventListener("click", async () => {
    const path = `runs/${encodeURIComponent(state.runId)}/report`;
    // Opened first (a popup must come from the click), filled once fetched: the
    // token goes in a header, so the report cannot be a plain link when there is one.
    const tab = window.open("", "_blank");
    try {
      const res = await api(path);
      if (!res.ok) {
        if (tab) tab.close();
        result(`no report: ${(await res.json().catch(() => ({}))).error || `HTTP ${res.status}`}`, true);
        return;
      }
      const url = URL.createObjectURL(await res.blob());
      if (tab) tab.location = url; else location.href = url;
      result("report opened");
    } catch (err) {
      if (tab) tab.close();
      if (!(err instanceof AuthError)) result(`no report: ${err.message}`, true);
    }
  });
  async function copy(text, what) {
    const box = $("copy-text");
    box.hidden = false;
    box.value = text;
    box.size = Math.min(120, text.length);
    try {
      await navigator.clipboard.writeText(text);
      result(`${what} copied`);
    } catch (err) {
      box.select();
      result(document.execCommand && document.execCommand("copy") ? `${what} copied` : `${what}: copy it from the box`);
    }
  }
  const summaryUrl = () => new URL(`runs/${encodeURIComponent(state.runId)}/summary`, new URL(apiBase, location.href)).href;
  $("copy-json").addEventListener("click", () => copy(summaryUrl(), "JSON link"));
  $("copy-merge").addEventListener("click", () => {
    const auth = token() ? " -H \"Authorization: Bearer $BALLISTA_TOKEN\"" : "";
    const file = `${state.runId}.json`;
    copy(`curl -sf${auth} -o ${file} '${summaryUrl()}' && ballista merge ${file}`, "merge command");
  });

  // -- start ------------------------------------------------------------------------------
  function route() {
    const m = /run=([^&]+)/.exec(location.hash);
    if (m) {
      const id = decodeURIComponent(m[1]);
      if (id !== state.runId) openRun(id);
    }
  }

  buildCharts();
  if (daemon) {
    $("runs-panel").hidden = false;
    $("run-view").classList.add("daemon");
    window.addEventListener("hashchange", route);
    refreshRuns().then(route);
    setInterval(refreshRuns, 2000);
  } else {
    $("toolbar").hidden = false;
    $("actions").hidden = true;
    connect(null);
  }
})();
