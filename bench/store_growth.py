"""Store bench: what each interval's histogram costs the daemon's SQLite history.

Writes a run's intervals through the real `Store` (one transaction each, the
downsampling levels as the daemon keeps them), as fast as the disk allows, with
realistic interval histograms: `--rate` requests a second, log-normal latencies
whose median drifts over the run, a slow stretch now and then. Then the same
run again without histograms (the rows older versions wrote), for the ratio.
Reports bytes per stored histogram, rows kept, database size, the time a write
takes, and how long the page's query takes (`max_points=1500&recent=900`).

    python bench/store_growth.py                       # a day at 1 s intervals (86,400 writes)
    python bench/store_growth.py --intervals 3600      # an hour
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ballista.core.histogram import Histogram, SparseHistogram
from ballista.daemon.store import Point, Store, pack_histogram


def histograms(rate: int, kinds: int, seed: int) -> list[SparseHistogram]:
    """`kinds` different intervals of `rate` requests each; the run cycles through them."""
    rnd = random.Random(seed)
    out = []
    for k in range(kinds):
        median = 0.004 * (1 + 0.5 * math.sin(k / 17))  # drifting between 2 and 6 ms
        slow = k % 50 == 0  # a slow stretch: a tail to 2 s
        hist = Histogram()
        for _ in range(rate):
            v = rnd.lognormvariate(math.log(median), 0.6)
            if slow and rnd.random() < 0.05:
                v = rnd.uniform(0.2, 2.0)
            hist.record(v)
        out.append(SparseHistogram.of(hist))
    return out


def run(path: Path, n: int, hists: list[SparseHistogram] | None, rate: int) -> dict[str, float]:
    store = Store(path)
    store.create_run(
        "r", name="soak", source="api", restart=False, scenario={}, scenario_public={}, target="x"
    )
    t0 = 1_700_000_000.0
    began = time.perf_counter()
    for i in range(n):
        h = hists[i % len(hists)] if hists else None
        p50, p90, p99 = h.percentiles((50.0, 90.0, 99.0)) if h else (0.004, 0.008, 0.012)
        point = Point(
            t_start=t0 + i,
            t_end=t0 + i + 1,
            seg=1,
            requests=rate,
            failed=0,
            errors=0,
            latency_p50=p50,
            latency_p90=p90,
            latency_p99=p99,
            latency_max=h.max if h else 0.02,
            in_flight=10,
            concurrency_limit=None,
            target_rate=float(rate),
            status_codes={"200": rate},
            errors_by_kind={},
            seq=i,
            histogram=h,
        )
        store.record_interval("r", point, None)
    write_s = time.perf_counter() - began
    began = time.perf_counter()
    # the page's query: the whole run, its last 15 min at the stored resolution
    shown = store.points("r", max_points=1500, recent=900, histograms=False)
    query_s = time.perf_counter() - began
    rows = store.point_count("r")
    stored = store._read("SELECT SUM(LENGTH(histogram)), COUNT(histogram) FROM points")[0]
    store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    return {
        "intervals": n,
        "rows_kept": rows,
        "db_bytes": path.stat().st_size,
        "histogram_bytes_kept": stored[0] or 0,
        "histograms_kept": stored[1] or 0,
        "write_ms_per_interval": 1000 * write_s / n,
        "page_query_ms": 1000 * query_s,
        "points_answered": len(shown),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--intervals", type=int, default=86_400, help="1 s intervals to write")
    parser.add_argument("--rate", type=int, default=1000, help="requests per interval")
    parser.add_argument("--kinds", type=int, default=400, help="distinct interval histograms")
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()
    hists = histograms(args.rate, args.kinds, seed=1)
    blobs = [len(pack_histogram(h)) for h in hists]
    buckets = [len(h.index) for h in hists]
    out: dict[str, object] = {
        "rate": args.rate,
        "interval_histogram_buckets_mean": sum(buckets) / len(buckets),
        "interval_histogram_bytes_mean": sum(blobs) / len(blobs),
        "to_dict_json_bytes_mean": sum(
            len(json.dumps(h.to_dict(), separators=(",", ":"))) for h in hists
        )
        / len(hists),
    }
    with tempfile.TemporaryDirectory() as tmp:
        out["with_histograms"] = run(Path(tmp) / "with.db", args.intervals, hists, args.rate)
        out["without_histograms"] = run(Path(tmp) / "without.db", args.intervals, None, args.rate)
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
