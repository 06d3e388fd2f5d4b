"""Time the statistics hot path: Histogram.record, Recorder.record and Recorder.snapshot.

Run: python bench/bench_recorder.py [calls]   (1,000,000 calls by default)
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable

from ballista.core.config import RequestSpec
from ballista.core.histogram import Histogram
from ballista.core.outcome import NO_ERROR, ErrorKind, Sample
from ballista.core.recorder import Recorder


def latencies(n: int, seed: int = 1) -> list[float]:
    """Log-normal around 5 ms with a slow tail: thousands of distinct buckets."""
    rng = random.Random(seed)
    return [rng.lognormvariate(-5.3, 1.0) for _ in range(n)]


def samples(values: list[float], requests: int, seed: int = 2) -> list[Sample]:
    rng = random.Random(seed)
    out: list[Sample] = []
    for latency in values:
        roll = rng.random()
        if roll < 0.01:
            out.append(
                Sample(rng.randrange(requests), 0, ErrorKind.READ_TIMEOUT, latency, 0.0, 80, 0)
            )
        else:
            status = 503 if roll < 0.03 else 200
            out.append(Sample(rng.randrange(requests), status, NO_ERROR, latency, latency, 80, 512))
    return out


def per_call(label: str, calls: int, run: Callable[[], None]) -> float:
    """Best of three runs, in ns per call."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    ns = best / calls * 1e9
    print(f"{label:<60} {ns:>12,.0f} ns/call")
    return ns


def bench_histogram(values: list[float]) -> None:
    def empty_loop() -> None:
        for _ in values:
            pass

    base = per_call("(empty loop, subtracted below)", len(values), empty_loop)

    def record() -> None:
        h = Histogram()
        record = h.record
        for v in values:
            record(v)

    ns = per_call("Histogram.record", len(values), record) - base
    print(f"{'Histogram.record minus loop':<60} {ns:>12,.0f} ns/call")

    h = Histogram()
    for v in values:
        h.record(v)
    n = 1000
    target = h.copy()

    def summary() -> None:
        for _ in range(n):
            h.summary()

    def copy() -> None:
        for _ in range(n):
            h.copy()

    def merge() -> None:
        for _ in range(n):
            target.merge(h)

    per_call("Histogram.summary (1e6 values)", n, summary)
    per_call("Histogram.copy", n, copy)
    per_call("Histogram.merge (1e6 values into 1e6 values)", n, merge)
    print(f"{'Histogram.nbytes':<60} {h.nbytes:>12,} bytes")


def bench_recorder(values: list[float], requests: int, track_service_time: bool) -> None:
    specs = [RequestSpec(f"r{i}", "GET", "/") for i in range(requests)]
    batch = samples(values, requests)
    what = f"{requests} request(s){', service time' if track_service_time else ''}"

    def record() -> None:
        rec = Recorder(specs, track_service_time=track_service_time, start=0.0)
        started = rec.request_started
        record = rec.record
        for sample in batch:
            started()
            record(sample)

    per_call(f"Recorder.request_started+record [{what}]", len(batch), record)

    # snapshot cost once a second's worth of samples (1,000) is in the interval
    rec = Recorder(specs, track_service_time=track_service_time, start=0.0)
    chunk = 1000
    rounds = 300
    elapsed = 0.0
    for i in range(rounds):
        for sample in batch[i * chunk : (i + 1) * chunk]:
            rec.request_started()
            rec.record(sample)
        started = time.perf_counter()
        rec.snapshot(float(i + 1))
        elapsed += time.perf_counter() - started
    ns = elapsed / rounds * 1e9
    print(f"{f'Recorder.snapshot after 1,000 records [{what}]':<60} {ns:>12,.0f} ns/call")


def main() -> None:
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    values = latencies(calls)
    print(f"Python {sys.version.split()[0]}, {calls:,} calls")
    bench_histogram(values)
    bench_recorder(values, 1, False)
    bench_recorder(values, 1, True)
    bench_recorder(values, 8, False)


if __name__ == "__main__":
    main()
