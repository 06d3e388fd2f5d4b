"""CPU per request of the transport designs Ballista chose between, in one process.

    python bench/transport_choices.py --h1 http://127.0.0.1:18080/ --h2c http://127.0.0.1:18081/

Point it at a fast local server (bench/run.py starts nginx; any 127.0.0.1
server will do). Each variant sends N requests with C concurrent workers and
reports process CPU time (user+sys) per request. Loopback only.
"""

from __future__ import annotations

import argparse
import resource
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import httpcore
import trio

from ballista.core.config import LoadSpec, RequestSpec, RunConfig, parse_url
from ballista.engine.engine import Engine


def cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


async def _workers(concurrency: int, total: int, one: Callable[[int], Awaitable[None]]) -> None:
    remaining = total

    async def worker(i: int) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await one(i)

    async with trio.open_nursery() as nursery:
        for i in range(concurrency):
            nursery.start_soon(worker, i)


async def shared_pool(url: str, c: int, n: int, http2: bool) -> None:
    async with httpcore.AsyncConnectionPool(
        max_connections=c, http1=not http2, http2=http2
    ) as pool:

        async def one(_: int) -> None:
            await pool.request("GET", url)

        await _workers(c, n, one)


async def pool_per_worker(url: str, c: int, n: int, http2: bool) -> None:
    pools = [
        httpcore.AsyncConnectionPool(max_connections=1, http1=not http2, http2=http2)
        for _ in range(c)
    ]

    async def one(i: int) -> None:
        await pools[i].request("GET", url)

    await _workers(c, n, one)
    for p in pools:
        await p.aclose()


async def ballista_engine(url: str, c: int, n: int, http2: bool, connections: int) -> None:
    origin, target = parse_url(url)
    config = RunConfig(
        origin=origin,
        requests=(RequestSpec(name="default", method="GET", target=target),),
        load=LoadSpec(concurrency=c, requests=n),
        protocol="http2" if http2 else "http1",
        connections=connections,
    )
    await Engine(config).run()


def measure(label: str, fn: Callable[[], Awaitable[None]], n: int) -> None:
    t0, c0 = time.perf_counter(), cpu()
    trio.run(fn)
    wall, used = time.perf_counter() - t0, cpu() - c0
    print(f"{label:<48} {used / n * 1e6:8.0f} µs CPU/request   {n / wall:8.0f} req/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--h1", required=True, help="HTTP/1.1 URL on 127.0.0.1")
    ap.add_argument("--h2c", default=None, help="h2c (prior knowledge) URL on 127.0.0.1")
    ap.add_argument("-n", type=int, default=20000)
    ap.add_argument("-c", type=int, default=50)
    args = ap.parse_args()
    for url in (args.h1, args.h2c):
        if url is not None and urlsplit(url).hostname not in ("127.0.0.1", "localhost", "::1"):
            raise SystemExit("loopback targets only")
    n, c = args.n, args.c
    print(f"HTTP/1.1, {c} concurrent, {n} requests")
    measure(
        f"httpcore shared pool (max_connections={c})", lambda: shared_pool(args.h1, c, n, False), n
    )
    measure("httpcore pool of 1 per worker", lambda: pool_per_worker(args.h1, c, n, False), n)
    measure(
        f"ballista (h11, {c} owned connections)",
        lambda: ballista_engine(args.h1, c, n, False, c),
        n,
    )
    if args.h2c:
        print(f"h2c, 100 concurrent streams, {n} requests")
        measure("httpcore HTTP/2 shared pool", lambda: shared_pool(args.h2c, 100, n, True), n)
        measure(
            "ballista (h2, 10 connections x 10 streams)",
            lambda: ballista_engine(args.h2c, 100, n, True, 10),
            n,
        )


if __name__ == "__main__":
    main()
