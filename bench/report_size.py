"""Size of the HTML report (and of the JSON summary under it) for a run of days.

Synthesizes a summary as a week-long run would leave it: a timeline full to
`DEFAULT_TIMELINE_POINTS` (each point covering about 14 minutes), every point with
a realistic latency histogram (log-normal around 5 ms with a slow tail, a few
hundred non-empty buckets), three named requests, status codes and error kinds;
then writes the summary and its report and prints their sizes.

Run: python bench/report_size.py [--days 7] [--points 720] [--out DIR]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ballista.core.histogram import HISTOGRAM_LAYOUT, Histogram
from ballista.observe.report import ReportRun, render_report, write_report
from ballista.observe.summary import write_json

RPS = 2000.0


def _latency(h: Histogram) -> dict[str, float]:
    s = h.summary()
    return {
        "min": s.min,
        "mean": s.mean,
        "p50": s.p50,
        "p90": s.p90,
        "p95": s.p95,
        "p99": s.p99,
        "p999": s.p999,
        "max": s.max,
    }


def synthetic_summary(days: float, points: int, seed: int = 1) -> dict[str, Any]:
    """A `ballista.summary/1` document of a closed-model run of `days` days."""
    rng = random.Random(seed)
    duration = days * 86400.0
    span = duration / points
    total = Histogram()
    names = {name: Histogram() for name in ("home", "search", "checkout")}
    codes: dict[str, int] = {}
    kinds: dict[str, int] = {}
    timeline = []
    requests = errors = failed = 0
    for i in range(points):
        h = Histogram()
        # 4,000 distinct values, each standing for many requests: the buckets a
        # point of millions of requests fills, at a fraction of the cost
        n_point = int(RPS * span)
        weight = max(1, n_point // 4000)
        slow = 3.0 if i % 97 == 0 else 1.0  # now and then a slow stretch
        for _ in range(4000):
            value = rng.lognormvariate(-5.3, 0.8) * slow
            if rng.random() < 0.002:
                value *= 40  # the tail
            h.record_n(value, weight)
            names[rng.choice(tuple(names))].record_n(value, weight)
        n = h.count
        point_errors = rng.randrange(0, 40)
        n_503 = rng.randrange(0, 200)
        point_codes = {"200": n - n_503, "503": n_503}
        point_kinds = {"read_timeout": point_errors} if point_errors else {}
        for k, v in point_codes.items():
            codes[k] = codes.get(k, 0) + v
        for k, v in point_kinds.items():
            kinds[k] = kinds.get(k, 0) + v
        requests += n + point_errors
        errors += point_errors
        failed += point_errors + n_503
        total.merge(h)
        lat = _latency(h)
        timeline.append(
            {
                "t": round((i + 1) * span, 3),
                "span": round(span, 3),
                "requests": n + point_errors,
                "responses": n,
                "errors": point_errors,
                "failed": point_errors + n_503,
                "dropped": 0,
                "status_codes": point_codes,
                "errors_by_kind": point_kinds,
                "in_flight": 50,
                "open_connections": 50,
                "concurrency_limit": None,
                "target_rate": None,
                "scheduler_lag": 0.0,
                "loop_lag": round(rng.random() * 0.002, 6),
                "latency_s": {k: lat[k] for k in ("p50", "p90", "p99", "max")},
                "latency": h.to_dict(),
            }
        )
    return {
        "schema": "ballista.summary/1",
        "version": "0.1.0",
        "target": "http://127.0.0.1:8080/",
        "model": "closed",
        "protocol": "HTTP/1.1",
        "started_at": "2026-11-20T00:00:00Z",
        "duration_s": duration,
        "requests": requests,
        "responses": requests - errors,
        "errors": errors,
        "failed": failed,
        "error_rate": failed / requests,
        "rps": requests / duration,
        "latency_s": _latency(total),
        "status_codes": codes,
        "errors_by_kind": kinds,
        "dropped": 0,
        "unfinished": 0,
        "concurrency": {"configured": 50, "max_in_flight": 50, "final_limit": None},
        "connections_opened": 50,
        "bytes_sent": 0,
        "bytes_received": 0,
        "requests_by_name": {
            name: {
                "method": "GET",
                "requests": h.count,
                "responses": h.count,
                "errors": 0,
                "failed": 0,
                "status_codes": {"200": h.count},
                "latency_s": _latency(h),
            }
            for name, h in names.items()
        },
        "thresholds": [{"expr": "p99<250ms", "value": total.percentile(99), "ok": True}],
        "loop_lag_s": {"p95": 0.001, "max": 0.004},
        "histograms": {
            "layout": HISTOGRAM_LAYOUT,
            "latency": total.to_dict(),
            "by_name": {name: h.to_dict() for name, h in names.items()},
        },
        "timeline": {"max_points": points, "points": timeline},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=float, default=7.0)
    parser.add_argument("--points", type=int, default=720)
    parser.add_argument("--out", default=None, help="directory for the files (default: a temp dir)")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="ballista-report-size-"))
    out.mkdir(parents=True, exist_ok=True)
    doc = synthetic_summary(args.days, args.points)
    json_path = out / "days.json"
    write_json(doc, str(json_path), sys.stdout)  # as `ballista run --json` writes it
    began = time.perf_counter()
    text = render_report([ReportRun(label="days.json", summary=doc)])
    took = time.perf_counter() - began
    html_path = out / "days.html"
    write_report(text, str(html_path))
    buckets = [len(p["latency"]["index"]) for p in doc["timeline"]["points"]]
    print(
        f"run of {args.days:g} days, {args.points} timeline points of {doc['duration_s'] / args.points / 60:.1f} min"
    )
    print(
        f"non-empty buckets per point: min {min(buckets)}, max {max(buckets)}, mean {sum(buckets) / len(buckets):.0f}"
    )
    print(f"requests: {doc['requests']:,}")
    print(f"JSON summary: {json_path.stat().st_size / 1e6:.2f} MB  {json_path}")
    print(
        f"HTML report: {html_path.stat().st_size / 1e6:.2f} MB  {html_path}  (rendered in {took:.2f} s)"
    )


if __name__ == "__main__":
    main()
