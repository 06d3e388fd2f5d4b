// Ballista's HTML report: draws the charts whose every value the generator
// (ballista/observe/report.py) computed. No request anywhere: data inlined above.
"use strict";

(function () {
  const data = JSON.parse(document.getElementById("report-data").textContent);
  const charts = {};
  window.ballista = { charts, data }; // for people poking in the console, and for tests

  // A4 at 12 mm margins is about 700 CSS pixels wide: charts never exceed it, so
  // the printed page shows them as the screen does.
  const MAX_WIDTH = 700;

  function ms(v) {
    if (v == null) return "–";
    if (v >= 10000) return `${(v / 1000).toFixed(1)} s`;
    if (v >= 100) return `${v.toFixed(0)} ms`;
    if (v >= 1) return `${v.toFixed(v < 10 ? 2 : 1)} ms`;
    return `${(v * 1000).toFixed(0)} µs`;
  }
  const num = (v) => (v == null ? "–" : v.toLocaleString("en-US", { maximumFractionDigits: 2 }));
  // x = 1/(1-q): 1 -> 0%, 10 -> 90%, 100 -> 99%, 1000 -> 99.9% ...
  function percentile(x) {
    if (x == null) return "–";
    const q = 100 * (1 - 1 / x);
    if (q <= 0) return "0%";
    const digits = Math.max(0, Math.ceil(-Math.log10(100 - q) - 1e-6));
    return `${q.toFixed(Math.min(digits, 6))}%`;
  }
  function elapsed(v) {
    if (v == null) return "–";
    if (v < 120) return `${v.toFixed(v < 10 ? 2 : 1)} s`;
    if (v < 7200) return `${(v / 60).toFixed(1)} min`;
    return `${(v / 3600).toFixed(1)} h`;
  }

  // Log axes: a label on powers of ten only, and on at most eight of them.
  function decades(fmt) {
    return (u, splits) => {
      const isDecade = (v) => v > 0 && Math.abs(Math.log10(v) - Math.round(Math.log10(v))) < 1e-9;
      const n = splits.filter(isDecade).length;
      const every = Math.max(1, Math.ceil(n / 8));
      return splits.map((v) => (isDecade(v) && Math.round(Math.log10(v)) % every === 0 ? fmt(v) : ""));
    };
  }

  function xAxis(kind) {
    if (kind === "ms") {
      return { scale: { distr: 3, log: 10 }, label: "latency (ms)", fmt: ms, ticks: decades(ms) };
    }
    if (kind === "percentile") {
      return { scale: { distr: 3, log: 10 }, label: "percentile", fmt: percentile,
        ticks: decades(percentile) };
    }
    return { scale: { time: false }, label: "elapsed", fmt: elapsed,
      ticks: (u, splits) => splits.map(elapsed) };
  }

  function draw(spec) {
    const el = document.getElementById(spec.id);
    if (!el) return;
    const x = xAxis(spec.x_kind);
    const yFmt = spec.y_label === "ms" ? ms : num;
    const series = [{ label: x.label, value: (u, v) => x.fmt(v) }];
    for (const s of spec.series) {
      const one = {
        label: s.label,
        stroke: s.colour,
        width: 1.5,
        // a gap is an interval without responses, unless the series is one run's
        // points on an axis shared with other runs (or curves): then they are joined
        spanGaps: !!s.span,
        points: { show: spec.x.length < 60 && !s.stepped },
        value: (u, v) => yFmt(v),
      };
      if (s.dash) one.dash = [6, 4];
      if (s.stepped) one.paths = uPlot.paths.stepped({ align: 1 });
      if (s.fill) one.fill = s.colour + "40";
      series.push(one);
    }
    const yScale = spec.log_y ? { distr: 3, log: 10 } : { auto: true, range: (u, lo, hi) => [0, hi > 0 ? hi * 1.05 : 1] };
    const opts = {
      width: Math.min(MAX_WIDTH, Math.max(320, el.clientWidth || MAX_WIDTH)),
      height: 260,
      scales: { x: x.scale, y: yScale },
      axes: [
        { label: x.label, values: x.ticks, size: 40 },
        { label: spec.y_label, size: 70,
          values: spec.log_y ? decades(yFmt) : (u, splits) => splits.map(yFmt) },
      ],
      series,
      legend: { live: true },
      cursor: { drag: { x: true, y: false } },
    };
    const columns = [spec.x].concat(spec.series.map((s) => s.values));
    el.textContent = "";
    charts[spec.id] = new uPlot(opts, columns, el);
  }

  for (const spec of data.charts) {
    try {
      draw(spec);
    } catch (err) {
      // One chart that cannot draw must not take the others (or the tables) with it.
      const el = document.getElementById(spec.id);
      if (el) el.textContent = `this chart could not be drawn: ${err}`;
      console.error(err);
    }
  }
})();
