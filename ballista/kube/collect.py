"""Collecting a segmented test's summaries from its pods' logs (docs/scale-out.md):
each pod prints its JSON summary on standard output (`--json -`), so
`kubectl logs` has it, whatever happened to the rest of the cluster since."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ballista.core.errors import ConfigError
from ballista.kube.manifests import INDEX_ANNOTATION

SUMMARY_SCHEMA = "ballista.summary/1"
#: kubectl's own time limit per call: a cluster that does not answer is said so.
KUBECTL_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class Pod:
    """One pod of the Job, as `kubectl get pods -o json` describes it."""

    name: str
    index: int | None
    phase: str
    #: why its container ended (`Completed`, `OOMKilled`, `Error`), if it did
    reason: str | None = None
    exit_code: int | None = None


@dataclass(slots=True)
class Collected:
    """The summaries found, by segment index, and what is wrong with the rest."""

    segments: int
    summaries: dict[int, dict[str, Any]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.problems and len(self.summaries) == self.segments


def summary_from_log(text: str) -> dict[str, Any] | None:
    """The last Ballista JSON summary in a log that mixes it with other lines
    (standard error goes to the same log): it starts on a line of its own."""
    decoder = json.JSONDecoder()
    found: dict[str, Any] | None = None
    pos = 0
    while True:
        start = text.find("{\n", pos)
        if start < 0:
            return found
        pos = start + 1
        if start > 0 and text[start - 1] != "\n":
            continue
        try:
            doc, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        if isinstance(doc, dict) and doc.get("schema") == SUMMARY_SCHEMA:
            found = doc
            pos = end


def pods_from_json(doc: Mapping[str, Any]) -> list[Pod]:
    """`kubectl get pods -o json` -> Pods."""
    pods: list[Pod] = []
    for item in doc.get("items", []):
        meta = item.get("metadata", {})
        raw = meta.get("annotations", {}).get(INDEX_ANNOTATION)
        index = int(raw) if isinstance(raw, str) and raw.isdigit() else None
        status = item.get("status", {})
        reason = exit_code = None
        for cs in status.get("containerStatuses", []):
            if cs.get("name") != "ballista":
                continue
            terminated = cs.get("state", {}).get("terminated")
            if terminated is not None:
                reason = terminated.get("reason")
                exit_code = terminated.get("exitCode")
        pods.append(
            Pod(meta.get("name", "?"), index, status.get("phase", "Unknown"), reason, exit_code)
        )
    return pods


def collect(segments: int, pods: Sequence[Pod], log: Callable[[Pod], str]) -> Collected:
    """Every segment's summary, from the log of its pod; problems named by segment."""
    out = Collected(segments)
    by_index: dict[int, list[Pod]] = {}
    for pod in pods:
        if pod.index is not None:
            by_index.setdefault(pod.index, []).append(pod)
    tests: dict[str, list[int]] = {}
    for index in range(segments):
        candidates = by_index.get(index, [])
        if not candidates:
            out.problems.append(f"segment {index}/{segments}: no pod (deleted, or never scheduled)")
            continue
        # A finished pod first: a test's segments are never retried, but be sure.
        pod = sorted(candidates, key=lambda p: p.phase != "Succeeded")[0]
        if pod.phase in ("Pending", "Running"):
            out.problems.append(
                f"segment {index}/{segments}: pod {pod.name} is {pod.phase}: wait for the Job to end"
            )
            continue
        doc = summary_from_log(log(pod))
        if doc is None:
            how = f"{pod.phase}, {pod.reason or 'no reason given'}"
            if pod.exit_code is not None:
                how += f", exit code {pod.exit_code}"
            out.problems.append(
                f"segment {index}/{segments}: pod {pod.name} left no summary in its log ({how})"
            )
            continue
        seg = doc.get("segment") or {}
        if seg.get("index") != index or seg.get("count") != segments:
            out.problems.append(
                f"segment {index}/{segments}: pod {pod.name}'s summary is of segment "
                f"{seg.get('index')}/{seg.get('count')}"
            )
            continue
        tests.setdefault(str(seg.get("test")), []).append(index)
        out.summaries[index] = doc
    if len(tests) > 1:
        said = "; ".join(f"test {t}: segments {', '.join(map(str, ix))}" for t, ix in tests.items())
        out.problems.append(f"the pods ran different tests ({said})")
    return out


class Kubectl:
    """The few kubectl calls collection needs; failures become one-line errors."""

    def __init__(self, namespace: str | None = None, program: str = "kubectl") -> None:
        self._namespace = namespace
        self._program = program

    def _run(self, *args: str) -> str:
        argv = [self._program, *args]
        if self._namespace is not None:
            argv += ["--namespace", self._namespace]
        try:
            proc = subprocess.run(
                argv, capture_output=True, text=True, timeout=KUBECTL_TIMEOUT, check=False
            )
        except FileNotFoundError:
            raise ConfigError(
                f"{self._program}: not found (collecting needs kubectl on PATH)"
            ) from None
        except subprocess.TimeoutExpired:
            raise ConfigError(
                f"{' '.join(argv)}: no answer within {KUBECTL_TIMEOUT:g}s (is the cluster reachable?)"
            ) from None
        if proc.returncode != 0:
            said = proc.stderr.strip().splitlines()
            raise ConfigError(
                f"{' '.join(argv)}: {said[-1] if said else f'exit {proc.returncode}'}"
            )
        return proc.stdout

    def segments(self, job: str) -> int:
        doc = json.loads(self._run("get", "job", job, "--output", "json"))
        spec = doc.get("spec", {})
        if spec.get("completionMode") != "Indexed":
            raise ConfigError(
                f"job {job}: not an Indexed Job (not rendered by `ballista kube render`)"
            )
        return int(spec.get("completions", 0))

    def pods(self, job: str) -> list[Pod]:
        return pods_from_json(
            json.loads(
                self._run("get", "pods", "--selector", f"job-name={job}", "--output", "json")
            )
        )

    def log(self, pod: Pod) -> str:
        return self._run("logs", pod.name, "--container", "ballista")
