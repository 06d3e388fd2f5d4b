"""A segmented test run as Kubernetes would run it, without a cluster: the
manifests `ballista kube render` writes, their pods' exact command lines run as
processes each in its own network namespace with its own address (tests/netns.py),
against one target that counts what it served, scraped by a real Prometheus.
The target's count, the segments' summaries and Prometheus must agree exactly,
and the open model's rate must hold."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trio
import yaml
from netns import pod_network
from prom import Prometheus
from servers import RunningTarget

from ballista.cli.main import main
from ballista.core.histogram import Histogram
from ballista.kube.collect import Pod, collect
from ballista.kube.manifests import SCENARIO_DIR

SEGMENTS = 3
RATE = 300
DURATION = 3


def pod_argv(args: list[str], index: int, mount: Path) -> list[str]:
    """A container's args as the kubelet runs them: $(JOB_COMPLETION_INDEX) expanded,
    the ConfigMap's files where the volume puts them (here, `mount`)."""
    out = []
    for arg in args:
        expanded = arg.replace("$(JOB_COMPLETION_INDEX)", str(index))
        if expanded.startswith(SCENARIO_DIR + "/"):
            expanded = str(mount / expanded[len(SCENARIO_DIR) + 1 :])
        out.append(expanded)
    return out


async def test_segments_as_pods_add_up_to_one_test(
    target_factory: Any, prometheus_factory: Any, tmp_path: Path
) -> None:
    with pod_network(SEGMENTS) as net:
        target: RunningTarget = await target_factory(host=net.host)
        prom: Prometheus = await prometheus_factory([f"{addr}:9464" for _, addr in net.pods])

        scenario = tmp_path / "shop.toml"
        scenario.write_text(
            f'name = "shop"\nbase_url = "http://{net.host}:{target.port}"\n'
            f'[load]\nmodel = "open"\nrate = {RATE}\nduration = "{DURATION}s"\n'
            '[[requests]]\nname = "home"\npath = "/"\nweight = 3\n'
            '[[requests]]\nname = "item"\npath = "/item/7"\nweight = 1\n'
        )
        rendered = tmp_path / "shop.yaml"
        argv = ["kube", "render", "-f", str(scenario), "--segments", str(SEGMENTS)]
        argv += ["--start-in", "8s", "-o", str(rendered), "--", "--linger", "3s"]
        assert main(argv) == 0
        configmap, job, _ = yaml.safe_load_all(rendered.read_text())
        mount = tmp_path / "scenario"
        mount.mkdir()
        for name, text in configmap["data"].items():
            (mount / name).write_text(text)
        args = job["spec"]["template"]["spec"]["containers"][0]["args"]

        logs: dict[int, str] = {}
        codes: dict[int, int] = {}

        async def pod(i: int) -> None:
            cmd = [*net.exec_prefix(i), sys.executable, "-m", "ballista"]
            cmd += pod_argv(args, i, mount)
            with trio.fail_after(60):
                # The kubelet keeps standard output and error in one log.
                done = await trio.run_process(
                    cmd, capture_stdout=True, stderr=subprocess.STDOUT, check=False
                )
            logs[i], codes[i] = done.stdout.decode(), done.returncode

        async with trio.open_nursery() as nursery:
            for i in range(SEGMENTS):
                nursery.start_soon(pod, i)
        assert codes == dict.fromkeys(range(SEGMENTS), 0), logs

        pods = [Pod(f"shop-{i}", i, "Succeeded", "Completed", 0) for i in range(SEGMENTS)]
        found = collect(SEGMENTS, pods, lambda p: logs[p.index or 0])
        assert found.complete, found.problems
        docs = [found.summaries[i] for i in range(SEGMENTS)]

        # The target served exactly what the segments counted; with what they dropped
        # (a loaded machine lags: the last arrivals fall due as -d ends) that is
        # exactly the one-process schedule, RATE * DURATION arrivals, a third each.
        requests = sum(d["requests"] for d in docs)
        assert requests == target.stats.requests
        scheduled = [d["requests"] + d["dropped"] for d in docs]
        assert scheduled == [RATE * DURATION // SEGMENTS] * SEGMENTS, logs
        assert sum(d["rps"] for d in docs) == pytest.approx(RATE, rel=0.01)
        assert len({d["segment"]["test"] for d in docs}) == 1
        by_name = {
            name: sum(d["requests_by_name"][name]["requests"] for d in docs)
            for name in ("home", "item")
        }

        # `ballista merge` of the collected files: one test, exactly.
        results = tmp_path / "results"
        results.mkdir()
        for i, doc in enumerate(docs):
            (results / f"segment-{i}.json").write_text(json.dumps(doc))
        merge = [sys.executable, "-m", "ballista", "merge", "--json", "-", "-q"]
        merge += sorted(str(p) for p in results.iterdir())
        done = await trio.run_process(merge, capture_stdout=True, capture_stderr=True, check=False)
        assert done.returncode == 0, done.stderr.decode()
        merged = json.loads(done.stdout)
        assert merged["requests"] == target.stats.requests == requests
        assert merged["requests"] + merged["dropped"] == RATE * DURATION
        assert merged["rps"] == pytest.approx(RATE, rel=0.01)
        assert merged["merged"]["segments"] == list(range(SEGMENTS))
        assert {n: r["requests"] for n, r in merged["requests_by_name"].items()} == by_name
        # Its percentiles are those of every request's latency together.
        union = Histogram()
        for doc in docs:
            union.merge(Histogram.from_dict(doc["histograms"]["latency"]))
        assert merged["latency_s"]["p99"] == pytest.approx(union.percentile(99.0), abs=1e-9)

        # Prometheus, scraping every pod, sums to the same figures.
        now = time.time()
        last = "last_over_time({}[1m])"
        total = f"sum({last.format('ballista_requests_total')})"
        assert await prom.scalar(total, now) == requests
        count = f"sum({last.format('ballista_request_duration_seconds_count')})"
        assert await prom.scalar(count, now) == requests
        for name, n in by_name.items():
            mine = last.format(f'ballista_requests_total{{request="{name}"}}')
            assert await prom.scalar(f"sum({mine})", now) == n
        rate = f"sum({last.format('ballista_target_rate_requests_per_second')})"
        assert await prom.scalar(rate, now) == pytest.approx(RATE)
        instances = await prom.query(last.format("ballista_build_info"), now)
        assert sorted(s["metric"]["instance"] for s in instances) == sorted(
            f"{addr}:9464" for _, addr in net.pods
        )
