"""`--workers N`: one test run as N segment processes on this machine, seen as one run.

The parent (`WorkersRun`) starts N children, each `ballista run ... --segment
i/N --start-at T` with a pipe back to it, and reads their per-interval
snapshots (counts and sparse histograms, `core/wire.py`). It merges them into
one snapshot per interval (`core.merge.Rounds`: cost O(histogram buckets),
never O(requests)) and hands that to its sinks, as a `Run` does: the live
line, /metrics, the live stream, the timeline, thresholds. A child
(`report_to_parent`) runs its segment with no outputs of its own.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from ballista.core.config import DEFAULT_GRACE, RunConfig
from ballista.core.errors import EXIT_INTERNAL, BallistaError
from ballista.core.merge import Rounds
from ballista.core.recorder import Recorder
from ballista.core.redact import redact_url
from ballista.core.runmeta import RunMeta
from ballista.core.snapshot import Snapshot
from ballista.core.thresholds import ThresholdSet
from ballista.core.timeline import Timeline
from ballista.core.wire import WIRE_VERSION, snapshot_from_wire, snapshot_to_wire
from ballista.engine.engine import RunInfo, SnapshotSink
from ballista.engine.run import Run, RunResult

#: Seconds between starting the children and the instant they all start sending:
#: each must import Ballista and build its configuration first (0.3 s each here).
START_DELAY = 1.0
#: ...plus this much per child beyond one per core (they start up in turns).
START_DELAY_PER_EXTRA = 0.3
#: The note a child's engine adds when a signal stopped it.
SIGNAL_NOTE = "stopped early by a signal; figures cover what was done"
#: A message from a child longer than this is a broken child, not a snapshot.
MAX_MESSAGE = 64 * 1024 * 1024
#: Messages a child queues for a parent that does not read them before it stops.
MAX_QUEUED = 1000
#: A running child silent this long (or this many intervals, plus --timeout for a
#: slow first connection) is hung: it is killed and reported.
STALL_SECONDS = 30.0
STALL_INTERVALS = 10
#: A child still running this long after its first SIGTERM is killed: its own grace
#: (DEFAULT_GRACE) is long over.
STOP_LIMIT = DEFAULT_GRACE + 10.0


class WorkerLost(BallistaError):
    """A worker process died or failed: the run is incomplete (exit 3)."""

    exit_code = EXIT_INTERNAL


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _how(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    if code == EXIT_INTERNAL:
        return "failed with an internal error (exit 3; its traceback is above)"
    return f"exited with code {code}"


@dataclass
class _Child:
    index: int
    process: trio.Process
    info: dict[str, Any] | None = None
    end: dict[str, Any] | None = None
    code: int | None = None
    #: why the child counts as lost, once it does
    lost: str | None = None
    signals_sent: int = 0
    #: wall-clock time of its last message (of its start, before any)
    last_message: float = field(default_factory=time.time)
    #: wall-clock time it was first asked to stop
    stop_asked: float | None = None


@dataclass(frozen=True, slots=True)
class LostWorker:
    """A worker that died, hung or failed: which, and how."""

    index: int
    pid: int
    how: str
    #: seconds into the run of its last figures, None if it never sent any
    last_report: float | None = None


class WorkersRun:
    """One run of one configuration as `workers` processes; the parent's side.

    Build, attach sinks, then `await run()` once: the same surface as `Run`,
    so the outputs of `ballista run` attach to it unchanged. `child_args` are
    the `ballista run` arguments of the whole test (a child ignores --workers);
    each child gets them with `--segment i/N --start-at T` and the pipe to
    report on.
    """

    def __init__(
        self,
        config: RunConfig,
        child_args: Sequence[str],
        workers: int,
        *,
        run_id: str | None = None,
        abort_on_fail: bool = False,
        python: str = sys.executable,
        stall: float | None = None,
        stdin_data: bytes | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError("at least one worker")
        self.config = config
        self.workers = workers
        self.id = run_id or uuid.uuid4().hex[:12]
        #: the instant (Unix seconds) every child starts at: --start-at, else soon
        self.start_at = (
            config.start_at if config.start_at is not None else time.time() + self._start_delay()
        )
        self.started_at = dt.datetime.fromtimestamp(self.start_at, dt.UTC)
        self._child_args = list(child_args)
        self._python = python
        #: written to each child's standard input first (the daemon's scenario)
        self._stdin_data = stdin_data
        #: seconds of silence after which a running child counts as hung
        self.stall = (
            max(STALL_SECONDS, STALL_INTERVALS * config.interval) + config.timeout
            if stall is None
            else stall
        )
        self.thresholds = ThresholdSet(config.thresholds) if config.thresholds else None
        self.timeline = Timeline()
        self._sinks: list[SnapshotSink] = [self.timeline.add]
        self._on_start: list[Callable[[RunInfo], None]] = []
        if self.thresholds is not None and abort_on_fail:
            self._sinks.append(self._abort_when_failed)
        self._rounds = Rounds(workers)
        self._children: list[_Child] = []
        self._info: RunInfo | None = None
        #: workers lost so far, in the order they were
        self.lost: list[LostWorker] = []
        self._stopping = 0
        self.interrupted = False
        self._signalled = trio.Event()
        self._result: RunResult | None = None
        #: pids of the children, once started (tests kill one)
        self.pids: list[int] = []

    # -- wiring (as Run) ------------------------------------------------------

    def add_sink(self, sink: SnapshotSink) -> None:
        self._sinks.append(sink)

    def on_start(self, callback: Callable[[RunInfo], None]) -> None:
        self._on_start.append(callback)

    def _abort_when_failed(self, snap: Snapshot) -> None:
        assert self.thresholds is not None
        if not snap.final and self.thresholds.known_failed(snap):
            self.stop()

    # -- control --------------------------------------------------------------

    def stop(self, *, grace: float | None = None) -> None:
        """Stop every child: they stop sending and let in-flight requests finish
        (their own grace); with grace=0, at once."""
        self._signal_children(2 if grace == 0 else 1)

    def signal(self) -> None:
        """A person asked to stop: the first time gracefully, then at once."""
        if self.interrupted:
            self._signal_children(2)
        else:
            self.interrupted = True
            self._signal_children(1)
        self._signalled.set()

    async def wait_for_signal(self) -> None:
        await self._signalled.wait()

    def _signal_children(self, times: int) -> None:
        """Each child stops gracefully at its first SIGTERM and at once at its second."""
        self._stopping = max(self._stopping, times)
        for child in self._children:
            while child.code is None and child.signals_sent < self._stopping:
                child.signals_sent += 1
                if child.stop_asked is None:
                    child.stop_asked = time.time()
                try:
                    child.process.send_signal(signal.SIGTERM)
                except ProcessLookupError:  # pragma: no cover - it just ended
                    break

    # -- the run --------------------------------------------------------------

    def _start_delay(self) -> float:
        extra = max(0, self.workers - usable_cores())
        return START_DELAY + START_DELAY_PER_EXTRA * extra

    async def run(self) -> RunResult:
        """Run every child to its end. A lost worker raises WorkerLost once the
        figures of the others are in (`partial_result()` has them)."""
        start_at = self.start_at
        try:
            async with trio.open_nursery() as outer:
                outer.start_soon(self._watchdog)
                async with trio.open_nursery() as nursery:
                    for i in range(self.workers):
                        child = await self._spawn(i, start_at, nursery)
                        self._children.append(child)
                        self.pids.append(child.process.pid)
                        if self._stopping:
                            self._signal_children(self._stopping)
                outer.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                for child in self._children:
                    if child.code is None:
                        child.process.kill()
                        child.code = await child.process.wait()
        final = self._rounds.final
        if final is None and not self.lost:
            # Stopped before any worker reported: a run of nothing, as one process has.
            final = Recorder(
                self.config.requests,
                track_service_time=self.config.load.model == "open",
                start=0.0,
            ).snapshot(0.0, final=True)
            self._deliver([final])
        if final is not None:
            self._result = self._make_result(final)
        lost = self.lost
        if lost:
            raise WorkerLost(self._lost_message(lost))
        assert self._result is not None
        return self._result

    async def _watchdog(self) -> None:
        """Kill a child that hangs, so the run ends rather than waits forever: one that
        sends nothing for `stall` seconds once the run has started, or that goes on
        STOP_LIMIT seconds after it was asked to stop."""
        stall = self.stall
        while True:
            await trio.sleep(1.0)
            now = time.time()
            for child in self._children:
                if child.code is not None or child.lost is not None:
                    continue
                quiet_for = now - max(child.last_message, self.start_at)
                if child.stop_asked is not None and now - child.stop_asked > STOP_LIMIT:
                    self._lose(child, f"did not stop within {STOP_LIMIT:g}s of SIGTERM")
                elif quiet_for > stall:
                    self._lose(child, f"sent nothing for {quiet_for:.0f}s (hung?)")
                else:
                    continue
                child.process.kill()

    def partial_result(self) -> RunResult | None:
        """After run() raised: the figures until then (None if no worker reported)."""
        return self._result

    async def _spawn(self, index: int, start_at: float, nursery: trio.Nursery) -> _Child:
        read_end, write_end = os.pipe()
        argv = [
            self._python,
            "-m",
            "ballista",
            "run",
            *self._child_args,
            "--segment",
            f"{index}/{self.workers}",
            "--start-at",
            f"{start_at:.6f}",
            "--worker-fd",
            str(write_end),
        ]
        try:
            # Its own session: a Ctrl-C at the terminal reaches the parent only,
            # which stops each child once (a second signal would mean "at once").
            # Its stdout goes to stderr: the parent's stdout may carry --json -.
            process = await trio.lowlevel.open_process(
                argv,
                stdin=subprocess.PIPE,
                stdout=2,
                pass_fds=(write_end,),
                start_new_session=True,
            )
        finally:
            os.close(write_end)
        child = _Child(index, process)
        if self._stdin_data is not None and process.stdin is not None:
            await process.stdin.send_all(self._stdin_data)
        nursery.start_soon(self._follow, child, trio.lowlevel.FdStream(read_end))
        return child

    async def _follow(self, child: _Child, stream: trio.lowlevel.FdStream) -> None:
        """Read one child's messages until it closes its pipe, then reap it."""
        broken: str | None = None
        buffer = bytearray()
        async with stream:
            while True:
                data = await stream.receive_some(1 << 16)
                if not data:
                    break
                buffer += data
                start = 0
                while (end := buffer.find(b"\n", start)) >= 0:
                    line = bytes(buffer[start:end])
                    start = end + 1
                    try:
                        self._message(child, json.loads(line))
                    except (ValueError, KeyError, TypeError) as exc:
                        broken = f"sent a malformed message ({type(exc).__name__}: {exc})"
                        break
                del buffer[:start]
                if broken is None and len(buffer) > MAX_MESSAGE:
                    broken = "sent a message too long to be a snapshot"
                if broken is not None:
                    child.process.kill()
                    break
        if child.process.stdin is not None:
            await child.process.stdin.aclose()
        child.code = await child.process.wait()
        if broken is None and child.code == -signal.SIGTERM and child.signals_sent:
            # Stopped by this parent before its own handlers were set up: it had
            # sent nothing yet, and was asked to send nothing more.
            pass
        elif broken is None and child.code != 0:
            broken = _how(child.code)
        elif broken is None and child.end is None:
            broken = "closed its pipe without its final figures"
        if broken is not None:
            self._lose(child, broken)
        self._deliver(self._rounds.end(child.index))
        self._maybe_started()

    def _message(self, child: _Child, msg: Mapping[str, Any]) -> None:
        child.last_message = time.time()
        kind = msg["type"]
        if msg.get("v") != WIRE_VERSION:
            raise ValueError(f"wire version {msg.get('v')!r}, not {WIRE_VERSION}")
        if kind == "snapshot":
            snap = snapshot_from_wire(msg["snapshot"])
            self._deliver(self._rounds.add(child.index, snap))
        elif kind == "start":
            child.info = dict(msg["info"])
            self._maybe_started()
        elif kind == "end":
            child.end = dict(msg["meta"])
        else:
            raise ValueError(f"unknown message type {kind!r}")

    def _deliver(self, snaps: Sequence[Snapshot]) -> None:
        for snap in snaps:
            for sink in self._sinks:
                sink(snap)

    def _maybe_started(self) -> None:
        """Once every child has said how it runs (or ended): the run's RunInfo."""
        if self._info is not None or len(self._children) < self.workers:
            return
        if any(c.info is None and c.code is None for c in self._children):
            return
        infos = [c.info for c in self._children if c.info is not None]
        if not infos:
            return
        self._info = RunInfo(
            protocol=str(infos[0]["protocol"]),
            connections=sum(int(i["connections"]) for i in infos),
            concurrency=sum(int(i["concurrency"]) for i in infos),
            model=str(infos[0]["model"]),
        )
        for hook in self._on_start:
            hook(self._info)

    def _lose(self, child: _Child, how: str) -> None:
        if child.lost is not None:
            return
        child.lost = how
        last = self._rounds.last(child.index)
        self.lost.append(
            LostWorker(
                index=child.index,
                pid=child.process.pid,
                how=how,
                last_report=None if last is None else last.elapsed,
            )
        )
        print(
            f"ballista: {self._describe(child.index, child.process.pid, how, last)}",
            file=sys.stderr,
        )
        # The load is no longer the test's: stop the others, keep what all measured.
        self._signal_children(1)

    def _describe(self, index: int, pid: int, how: str, last: Snapshot | None) -> str:
        kept = (
            f"its figures until {last.elapsed:.1f}s into the run are kept"
            if last is not None
            else "it reported nothing"
        )
        return f"worker {index}/{self.workers} (pid {pid}) {how}: {kept}"

    def _lost_message(self, lost: Sequence[LostWorker]) -> str:
        first = lost[0]
        more = f" (and {len(lost) - 1} more)" if len(lost) > 1 else ""
        covered = (
            "its summary covers what every worker reported"
            if self._result is not None
            else "no worker reported any figures"
        )
        return (
            f"worker {first.index}/{self.workers} (pid {first.pid}) {first.how}{more}: "
            f"the run is incomplete; {covered}"
        )

    # -- results --------------------------------------------------------------

    def verdicts(self, snap: Snapshot) -> list[dict[str, Any]]:
        return self.thresholds.evaluate(snap) if self.thresholds is not None else []

    def _notes(self) -> list[str]:
        """The children's notes: once when every child says it, else each with its worker."""
        ends = [(c.index, c.end) for c in self._children if c.end is not None]
        if not self.interrupted:
            # The parent stopped them (a lost worker, --abort-on-fail, the daemon) with
            # SIGTERM: not a person's signal, which is what the children's note says.
            ends = [
                (i, {**e, "notes": [n for n in e.get("notes") or () if n != SIGNAL_NOTE]})
                for i, e in ends
            ]
        counts: dict[str, int] = {}
        for _, end in ends:
            for note in dict.fromkeys(end.get("notes") or ()):
                counts[note] = counts.get(note, 0) + 1
        notes: list[str] = []
        for index, end in ends:
            for note in end.get("notes") or ():
                if counts[note] == self.workers:
                    if note not in notes:
                        notes.append(note)
                else:
                    notes.append(f"worker {index}/{self.workers}: {note}")
        if self.interrupted and SIGNAL_NOTE not in notes:
            notes.append(SIGNAL_NOTE)  # stopped before a worker could say so itself
        for lost in self.lost:
            last = None if lost.last_report is None else self._rounds.last(lost.index)
            notes.append(
                self._describe(lost.index, lost.pid, lost.how, last)
                + "; the run is incomplete (the others were stopped)"
            )
        return notes

    def meta(self, final: Snapshot | None = None) -> RunMeta:
        """What reports need besides the statistics; with `final`, the threshold verdicts too."""
        info = self._info
        ends = [c.end for c in self._children if c.end is not None]
        limits = [e["final_limit"] for e in ends if e.get("final_limit") is not None]
        durations = [float(e["duration"]) for e in ends if e.get("duration") is not None]
        return RunMeta(
            target=redact_url(self.config),
            model=info.model if info is not None else self.config.load.model,
            protocol=info.protocol if info is not None else "-",
            started_at=self.started_at,
            concurrency=info.concurrency if info is not None else None,
            connections=info.connections if info is not None else 0,
            final_limit=sum(int(x) for x in limits) if limits else None,
            thresholds=self.verdicts(final) if final is not None else [],
            notes=tuple(self._notes()),
            duration=max(durations) if durations else None,
        )

    def _make_result(self, final: Snapshot) -> RunResult:
        verdicts = self.verdicts(final)
        meta = dataclasses.replace(self.meta(), thresholds=verdicts)
        extra: dict[str, Any] = {
            "workers": {
                "count": self.workers,
                "lost": [
                    {"index": w.index, "pid": w.pid, "how": w.how, "last_report_s": w.last_report}
                    for w in self.lost
                ],
            }
        }
        return RunResult(
            final=final,
            meta=meta,
            verdicts=verdicts,
            timeline=self.timeline,
            extra=extra,
        )


# -- the child's side -----------------------------------------------------------


def _line(kind: str, **fields: Any) -> bytes:
    return (json.dumps({"type": kind, "v": WIRE_VERSION, **fields}) + "\n").encode()


async def report_to_parent(run: Run, fd: int) -> int:
    """Run this segment with no outputs of its own, reporting to the parent on `fd`.

    SIGTERM/SIGINT stop it as they stop `ballista run` (the first gracefully,
    the second at once); so does its parent going away (stdin closes). The exit
    code is 0 once the run ended, whatever its thresholds: the parent judges.
    """
    send, receive = trio.open_memory_channel[bytes](MAX_QUEUED)

    def queue(data: bytes) -> None:
        try:
            send.send_nowait(data)
        except trio.WouldBlock:
            # The parent stopped reading: it is stuck or gone, stop now.
            run.stop(grace=0)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    def on_start(info: RunInfo) -> None:
        queue(
            _line(
                "start",
                info={
                    "protocol": info.protocol,
                    "connections": info.connections,
                    "concurrency": info.concurrency,
                    "model": info.model,
                },
            )
        )

    run.add_sink(lambda snap: queue(_line("snapshot", snapshot=snapshot_to_wire(snap))))
    run.on_start(on_start)

    async def write(stream: trio.lowlevel.FdStream) -> None:
        async with stream, receive:
            async for data in receive:
                try:
                    await stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    run.stop(grace=0)
                    return

    async def watch_parent() -> None:
        """The parent holds this process's stdin: when it closes, the parent is gone."""
        stdin = trio.lowlevel.FdStream(os.dup(0))
        async with stdin:
            while await stdin.receive_some(4096):
                pass
        run.stop(grace=0)

    async def watch_signals() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                run.signal()

    async with trio.open_nursery() as nursery:
        writer_done = trio.Event()

        async def writer() -> None:
            try:
                await write(trio.lowlevel.FdStream(fd))
            finally:
                writer_done.set()

        nursery.start_soon(writer)
        nursery.start_soon(watch_parent)
        nursery.start_soon(watch_signals)
        try:
            await run.run()
        finally:
            # A bug ended the run: its figures until then went to the sinks already.
            partial = run.partial_result()
            if partial is not None:
                meta = partial.meta
                queue(
                    _line(
                        "end",
                        meta={
                            "notes": list(meta.notes),
                            "duration": meta.duration,
                            "final_limit": meta.final_limit,
                        },
                    )
                )
            send.close()
            with trio.CancelScope(shield=True):
                await writer_done.wait()
            nursery.cancel_scope.cancel()
    return 0
