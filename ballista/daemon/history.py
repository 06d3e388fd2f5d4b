"""The run store as the daemon's trio side uses it: every SQLite call in a worker
thread, so a slow or stalled disk never holds up an engine, the API or another run.

Writes take turns in arrival order, on the store's write connection; reads take
turns on its read connection, beside them (WAL), so a read never waits for a
write. A run's intervals queue here on their way to disk, bounded: when the disk
falls behind, the newest queued ones merge, so no figure is lost.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import trio

from ballista.daemon.store import Point, RunRow, Store, merge_points

log = logging.getLogger("ballista.daemon")

#: Intervals waiting for the disk, per run; beyond it they merge (no figure is lost).
WRITE_QUEUE = 60

T = TypeVar("T")


class History:
    """Async face of a `Store`: the same calls, each run in a worker thread."""

    def __init__(self, store: Store) -> None:
        self.store = store
        # One writer at a time, first come first served: SQLite has one writer
        # anyway, and the order keeps a run's creation before its intervals and
        # its intervals before its end. Its own limiter, so writes never wait
        # for threads that something else holds.
        self._writes = trio.CapacityLimiter(1)
        # Reads share one connection; a limiter of one keeps waiting reads as
        # parked tasks, not as threads blocked on the connection's lock.
        self._reads = trio.CapacityLimiter(1)

    @classmethod
    async def open(cls, path: Path, open_store: Callable[[Path], Store] = Store) -> History:
        """Open (or create) the database in a worker thread: StoreError if it is not ours."""
        return cls(await trio.to_thread.run_sync(open_store, path))

    async def close(self) -> None:
        """After the writes already queued: closing checkpoints the WAL (disk I/O)."""
        await self._write(self.store.close)

    async def _write(self, fn: Callable[[], T]) -> T:
        return await trio.to_thread.run_sync(fn, limiter=self._writes)

    async def _read(self, fn: Callable[[], T]) -> T:
        return await trio.to_thread.run_sync(fn, limiter=self._reads)

    # -- writes ----------------------------------------------------------------------

    async def create_run(
        self,
        run_id: str,
        *,
        name: str,
        source: str,
        restart: bool,
        scenario: Mapping[str, Any],
        scenario_public: Mapping[str, Any],
        target: str,
    ) -> None:
        await self._write(
            functools.partial(
                self.store.create_run,
                run_id,
                name=name,
                source=source,
                restart=restart,
                scenario=scenario,
                scenario_public=scenario_public,
                target=target,
            )
        )

    async def resume_run(self, run_id: str) -> int:
        return await self._write(functools.partial(self.store.resume_run, run_id))

    async def record_interval(
        self, run_id: str, point: Point, summary: Mapping[str, Any] | None
    ) -> None:
        await self._write(functools.partial(self.store.record_interval, run_id, point, summary))

    async def end_run(
        self,
        run_id: str,
        status: str,
        summary: Mapping[str, Any] | None,
        *,
        reason: str | None = None,
    ) -> bool:
        return await self._write(
            functools.partial(self.store.end_run, run_id, status, summary, reason=reason)
        )

    async def fail_interrupted(self, run_id: str, reason: str) -> bool:
        return await self._write(functools.partial(self.store.fail_interrupted, run_id, reason))

    async def mark_interrupted(self) -> list[str]:
        return await self._write(self.store.mark_interrupted)

    # -- reads -----------------------------------------------------------------------

    async def get_run(self, run_id: str) -> RunRow | None:
        return await self._read(functools.partial(self.store.get_run, run_id))

    async def list_runs(self, *, status: str | None = None, limit: int = 100) -> list[RunRow]:
        return await self._read(functools.partial(self.store.list_runs, status=status, limit=limit))

    async def segments(self, run_id: str) -> list[dict[str, Any]]:
        return await self._read(functools.partial(self.store.segments, run_id))

    async def points(
        self,
        run_id: str,
        *,
        start: float | None = None,
        end: float | None = None,
        max_points: int | None = None,
        recent: float | None = None,
        histograms: bool = True,
    ) -> list[Point]:
        return await self._read(
            functools.partial(
                self.store.points,
                run_id,
                start=start,
                end=end,
                max_points=max_points,
                recent=recent,
                histograms=histograms,
            )
        )


class IntervalQueue:
    """One run's intervals on their way to disk. `put` is synchronous and cheap (a
    snapshot sink calls it); `write_forever` drains it, each interval with the
    run's summary so far."""

    def __init__(
        self,
        history: History,
        run_id: str,
        summary: Callable[[], Mapping[str, Any] | None],
    ) -> None:
        self._history = history
        self._run_id = run_id
        self._summary = summary
        self._queue: list[Point] = []
        self._queued = trio.Event()

    def put(self, point: Point) -> None:
        if len(self._queue) >= WRITE_QUEUE:
            # The disk is far behind: fold into the newest queued point.
            self._queue[-1] = merge_points(self._queue[-1], point)
        else:
            self._queue.append(point)
        self._queued.set()

    async def flush(self) -> None:
        """Write what is queued, oldest first; the newest carries the summary so far.

        A point leaves the queue only once written, so a cancelled flush (the run
        ended mid-batch) leaves the rest for the final one. Merging touches only
        the newest of WRITE_QUEUE points, never the oldest being written."""
        while self._queue:
            last = len(self._queue) == 1
            try:
                await self._history.record_interval(
                    self._run_id, self._queue[0], self._summary() if last else None
                )
            except Exception:
                # Not written (the transaction rolled back) and not retried: a
                # point the disk refuses must not block the ones behind it.
                del self._queue[0]
                raise
            del self._queue[0]
        self._queued = trio.Event()

    async def write_forever(self) -> None:
        while True:
            await self._queued.wait()
            try:
                await self.flush()
            except Exception:
                # A full or failing disk must not end the run: log and go on.
                log.exception("run %s: could not write an interval", self._run_id)
                await trio.sleep(1.0)
