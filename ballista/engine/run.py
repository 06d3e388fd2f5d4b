"""The one place a run is assembled: engine, recorder, controller and thresholds.

`ballista run`, `demo` and `serve` (and the workers that come next) build a
`Run` from a RunConfig, attach their sinks (terminal, JSON, Prometheus, live
stream, store) and await it; none of them wires an engine by hand.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ballista.core.config import RunConfig
from ballista.core.controller import AimdController
from ballista.core.redact import redact_url
from ballista.core.runmeta import RunMeta
from ballista.core.snapshot import Snapshot
from ballista.core.thresholds import ThresholdSet
from ballista.core.timeline import Timeline
from ballista.engine.engine import Engine, RunInfo, SnapshotSink


@dataclass(frozen=True, slots=True)
class RunResult:
    """A finished run: its last snapshot, what reports need besides, and the verdicts."""

    final: Snapshot
    meta: RunMeta
    verdicts: list[dict[str, Any]] = field(default_factory=list)
    #: the run over time, one point per interval (bounded)
    timeline: Timeline | None = None
    #: keys the JSON summary adds for this kind of run (`workers`)
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def thresholds_passed(self) -> bool:
        return all(v["ok"] for v in self.verdicts)


class RunLike(Protocol):
    """What outputs attach to: a `Run`, or the parent of `--workers` (`WorkersRun`)."""

    config: RunConfig
    id: str
    started_at: dt.datetime

    @property
    def interrupted(self) -> bool: ...

    def add_sink(self, sink: SnapshotSink) -> None: ...

    def on_start(self, callback: Callable[[RunInfo], None]) -> None: ...

    def signal(self) -> None: ...

    async def wait_for_signal(self) -> None: ...

    async def run(self) -> RunResult: ...

    def partial_result(self) -> RunResult | None: ...


class Run:
    """One run of one configuration. Build, attach sinks, then `await run()` once."""

    def __init__(
        self,
        config: RunConfig,
        *,
        run_id: str | None = None,
        started_at: dt.datetime | None = None,
        grace: float | None = None,
        abort_on_fail: bool = False,
    ) -> None:
        self.config = config
        self.id = run_id or uuid.uuid4().hex[:12]
        self.started_at = started_at or dt.datetime.now(dt.UTC)
        self.thresholds = ThresholdSet(config.thresholds) if config.thresholds else None
        adaptive = config.load.adaptive if config.load.model == "adaptive" else None
        self.controller = AimdController(adaptive) if adaptive is not None else None
        self.engine = Engine(config, controller=self.controller, grace=grace)
        self.timeline = Timeline()
        self.engine.add_sink(self.timeline.add)
        if config.start_at is not None and started_at is None:
            self.engine.on_start.append(self._started)
        if self.thresholds is not None and abort_on_fail:
            self.engine.add_sink(self._abort_when_failed)

    def _started(self, _info: RunInfo) -> None:
        # --start-at: the run began at that instant (the same in every segment),
        # not when it was built; or now, if the instant had passed.
        at = self.config.start_at
        assert at is not None
        late = self.engine.late_start > 0
        self.started_at = dt.datetime.now(dt.UTC) if late else dt.datetime.fromtimestamp(at, dt.UTC)

    def _abort_when_failed(self, snap: Snapshot) -> None:
        assert self.thresholds is not None
        if not snap.final and self.thresholds.known_failed(snap):
            self.engine.stop()

    # -- wiring ---------------------------------------------------------------

    def add_sink(self, sink: SnapshotSink) -> None:
        """Deliver every snapshot from now on to `sink` too (synchronously, off the hot path)."""
        self.engine.add_sink(sink)

    def on_start(self, callback: Callable[[RunInfo], None]) -> None:
        """Call `callback` once the protocol and the connections are decided."""
        self.engine.on_start.append(callback)

    # -- control --------------------------------------------------------------

    def stop(self, *, grace: float | None = None) -> None:
        self.engine.stop(grace=grace)

    def signal(self) -> None:
        """A person asked to stop: the first time gracefully, then at once."""
        self.engine.signal()

    @property
    def interrupted(self) -> bool:
        return self.engine.interrupted

    async def wait_for_signal(self) -> None:
        await self.engine.wait_for_signal()

    # -- results --------------------------------------------------------------

    def verdicts(self, snap: Snapshot) -> list[dict[str, Any]]:
        return self.thresholds.evaluate(snap) if self.thresholds is not None else []

    def meta(self, final: Snapshot | None = None) -> RunMeta:
        """What reports need besides the statistics; with `final`, the threshold verdicts too.
        The target is shown as others may see it (secrets hidden)."""
        verdicts = self.verdicts(final) if final is not None else []
        return self.engine.run_meta(
            self.started_at, target=redact_url(self.config), thresholds=verdicts
        )

    async def run(self) -> RunResult:
        """Run to the end. A bug in Ballista propagates; `partial_result()` then
        has what was measured until it struck."""
        return self._result(await self.engine.run())

    def partial_result(self) -> RunResult | None:
        """After run() raised: the figures until then (None if the run never started)."""
        final = self.engine.final
        if final is None or self.engine.info is None:
            return None
        return self._result(final)

    def _result(self, final: Snapshot) -> RunResult:
        verdicts = self.verdicts(final)
        meta = self.engine.run_meta(
            self.started_at, target=redact_url(self.config), thresholds=verdicts
        )
        return RunResult(final=final, meta=meta, verdicts=verdicts, timeline=self.timeline)
