"""/metrics for every run of the daemon: one collector over all their exporters."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from ballista import __version__


class AllRuns(Collector):
    """One collector over every run's exporter: their families merged by name, so one
    registry serves all runs, each under its own `scenario` label."""

    def __init__(self, exporters: Callable[[], Sequence[Any]]) -> None:
        self._exporters = exporters

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
        for exporter in self._exporters():
            for family in exporter.collect():
                into = merged.get(family.name)
                if into is None:
                    into = Metric(family.name, family.documentation, family.type, family.unit)
                    merged[family.name] = into
                for s in family.samples:
                    key = (s.name, tuple(sorted(s.labels.items())))
                    if key in seen:
                        continue
                    seen.add(key)
                    into.samples.append(s)
        if "ballista_build_info" not in merged:
            build = Metric("ballista_build_info", "Always 1: the Ballista version.", "gauge")
            build.add_sample("ballista_build_info", {"version": __version__}, 1)
            merged["ballista_build_info"] = build
        yield from merged.values()
