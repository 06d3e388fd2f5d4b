"""Kubernetes (`ballista kube`, deploy/kubernetes/): the manifests validate offline
against Kubernetes' schemas and the Prometheus Operator's PodMonitor schema, and
a segment's summary is found in its pod's log. (There is no cluster here: the
pods' command lines run as local processes in tests/test_scale_out.py.)"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import trio
import yaml
from servers import RunningTarget

from ballista.cli.main import main
from ballista.core.segment import iso_instant
from ballista.kube.collect import Kubectl, Pod, collect, pods_from_json, summary_from_log
from ballista.kube.manifests import KubeTest, pod_args, render, scenario_files

ROOT = Path(__file__).resolve().parent.parent
BALLISTA = [sys.executable, "-m", "ballista"]
NPM = ROOT / "tests" / "npm"
#: deploy/kubernetes/shop-api.yaml starts at this placeholder: 2030-01-01T00:00:00Z
EXAMPLE_START = 1893456000.0
#: The oldest Kubernetes the Job is for (backoffLimitPerIndex), and the newest schemas known.
VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]


def example() -> KubeTest:
    return KubeTest(
        name="shop-api",
        segments=4,
        start_at=EXAMPLE_START,
        files=scenario_files(str(ROOT / "examples" / "shop-api.toml")),
        scenario="shop-api.toml",
        run_args=("-d", "5m"),
        # 2 minutes to the start, 5 of run, 10 of margin
        deadline=1020,
    )


def validate_k8s(docs: list[dict[str, Any]], version: str) -> None:
    """ConfigMap and Job against Kubernetes' schemas, strictly (no unknown field)."""
    for doc in docs:
        if doc["kind"] != "PodMonitor":
            kubernetes_validate.validate(doc, version, strict=True)


def validate_podmonitors(docs: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    monitors = [d for d in docs if d["kind"] == "PodMonitor"]
    assert (NPM / "node_modules").is_dir(), "tests/npm: run scripts/test (it installs them)"
    return subprocess.run(
        ["node", str(NPM / "validate-podmonitor.mjs")],
        input=json.dumps(monitors),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_the_committed_example_is_what_render_writes() -> None:
    committed = (ROOT / "deploy" / "kubernetes" / "shop-api.yaml").read_text()
    assert committed == render(example()), "re-render deploy/kubernetes/shop-api.yaml"


@pytest.mark.parametrize("version", VERSIONS)
def test_committed_manifests_validate(version: str) -> None:
    for path in sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml")):
        docs = list(yaml.safe_load_all(path.read_text()))
        assert [d["kind"] for d in docs] == ["ConfigMap", "Job", "PodMonitor"]
        validate_k8s(docs, version)
        checked = validate_podmonitors(docs)
        assert checked.returncode == 0, checked.stdout + checked.stderr


def test_rendered_manifests_validate_and_run_the_segments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "k.yaml"
    argv = ["kube", "render", "-f", str(ROOT / "examples" / "open-ramp.toml")]
    argv += ["--segments", "8", "--namespace", "load", "-o", str(out), "--", "--http1"]
    before = time.time()
    assert main(argv) == 0, capsys.readouterr().err
    docs = list(yaml.safe_load_all(out.read_text()))
    for version in VERSIONS:
        validate_k8s(docs, version)
    checked = validate_podmonitors(docs)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    configmap, job, monitor = docs
    assert {d["metadata"]["namespace"] for d in docs} == {"load"}
    assert set(configmap["data"]) == {"open-ramp.toml"}
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == 8
    # open-ramp.toml lasts 90 s: the pods are stopped 10 minutes after it should end.
    assert spec["activeDeadlineSeconds"] in (120 + 90 + 600, 120 + 90 + 601)
    pod = spec["template"]
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    [container] = pod["spec"]["containers"]
    args = container["args"]
    assert args[:5] == [
        "run",
        "-f",
        "/scenario/open-ramp.toml",
        "--segment",
        "$(JOB_COMPLETION_INDEX)/8",
    ]
    assert args[-1] == "--http1"
    # The pods start together, two minutes after rendering by default.
    start = args[args.index("--start-at") + 1]
    assert iso_instant(before + 120) <= start <= iso_instant(time.time() + 120)
    assert container["env"][0]["name"] == "JOB_COMPLETION_INDEX"
    assert monitor["spec"]["selector"] == {
        "matchLabels": {"ballista.dev/test": job["metadata"]["name"]}
    }
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == container["ports"][0]["name"]
    # The scrape job is "ballista", as prometheus/rules and the dashboards expect.
    assert pod["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "ballista"


def test_validation_is_not_a_formality() -> None:
    docs = list(yaml.safe_load_all(render(example())))
    job = copy.deepcopy(docs[1])
    job["spec"]["completions"] = "four"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_k8s([job], VERSIONS[-1])
    job = copy.deepcopy(docs[1])
    job["spec"]["template"]["spec"]["containers"][0]["argz"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_k8s([job], VERSIONS[-1])
    monitor = copy.deepcopy(docs[2])
    monitor["spec"]["podMetricsEndpoints"][0]["interval"] = "5 seconds"
    checked = validate_podmonitors([monitor])
    assert checked.returncode == 1
    assert "interval must match pattern" in checked.stdout


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--segments", "0"], "--segments: must be at least 1"),
        (["--segments", "2", "--name", "Shop_API"], "--name: 'Shop_API' must be lower-case"),
        (["--segments", "2", "--start-at", "2020-01-01T00:00:00Z"], "in the past"),
        (["--segments", "2", "--", "--segment", "1/2"], "after --, drop --segment"),
        (["--segments", "2", "--", "--json", "x.json"], "after --, drop --json"),
        (["--segments", "30", "--", "-c", "9"], "connections: 20 connections cannot be split"),
        (["--segments", "2", "--", "-r", "x"], "-r/--rate: 'x' is not a number"),
        (["--segments", "2", "--", "--workers", "2"], "after --, drop --workers"),
        (["--segments", "2", "--namespace", "Load_Tests"], "--namespace: 'Load_Tests' must"),
        (["--segments", "2", "--metrics-port", "99999"], "--metrics-port: 99999 is not a port"),
        (["--segments", "2", "--image", ""], "--image: '' is not an image reference"),
    ],
)
def test_bad_render_input_is_one_line_and_exit_2(
    extra: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["kube", "render", "-f", str(ROOT / "examples" / "shop-api.toml"), *extra]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("ballista: error: ")
    assert needle in lines[0]


def test_files_the_scenario_names_go_in_the_configmap(tmp_path: Path) -> None:
    (tmp_path / "body.json").write_text('{"a": 1}\n')
    scenario = tmp_path / "s.toml"
    scenario.write_text(
        'base_url = "http://127.0.0.1:9"\n[[requests]]\nname = "a"\nmethod = "POST"\n'
        'path = "/"\nbody_file = "body.json"\n'
    )
    assert scenario_files(str(scenario)) == {
        "s.toml": scenario.read_text(),
        "body.json": '{"a": 1}\n',
    }
    (tmp_path / "sub").mkdir()
    scenario.write_text(scenario.read_text().replace('"body.json"', '"sub/body.json"'))
    with pytest.raises(
        Exception, match=r"s\.toml: requests\[0\]\.body_file: 'sub/body.json' must sit"
    ):
        scenario_files(str(scenario))


# -- collecting the summaries -----------------------------------------------------


async def _segment_logs(target: RunningTarget, count: int) -> dict[int, str]:
    """Each segment's log as a pod's would read: standard output and error together."""
    logs: dict[int, str] = {}

    async def one(index: int) -> None:
        argv = [*BALLISTA, "run", target.url, "-n", "30", "-c", "3", "--json", "-"]
        argv += ["--segment", f"{index}/{count}"]
        result = await trio.run_process(argv, capture_stdout=True, stderr=subprocess.STDOUT)
        logs[index] = result.stdout.decode()

    async with trio.open_nursery() as nursery:
        for i in range(count):
            nursery.start_soon(one, i)
    return logs


async def test_each_segment_summary_is_found_in_its_log(target: RunningTarget) -> None:
    logs = await _segment_logs(target, 2)
    assert "ballista" in logs[0]  # the text summary is in the log too
    docs = {i: summary_from_log(text) for i, text in logs.items()}
    assert {i: d["segment"]["index"] for i, d in docs.items() if d} == {0: 0, 1: 1}
    assert sum(d["requests"] for d in docs.values() if d) == 30 == target.stats.requests

    pods = [Pod(f"t-{i}-x", i, "Succeeded", "Completed", 0) for i in (0, 1)]
    found = collect(2, pods, lambda pod: logs[pod.index or 0])
    assert found.complete
    assert sorted(found.summaries) == [0, 1]

    dead = [pods[0], Pod("t-1-y", 1, "Failed", "OOMKilled", 137)]
    found = collect(2, dead, lambda pod: logs[0] if pod.index == 0 else "Killed\n")
    assert not found.complete
    assert found.problems == [
        "segment 1/2: pod t-1-y left no summary in its log (Failed, OOMKilled, exit code 137)"
    ]
    found = collect(3, [pods[0], Pod("t-1-z", 1, "Running")], lambda pod: logs[0])
    assert found.problems == [
        "segment 0/3: pod t-0-x's summary is of segment 0/2",
        "segment 1/3: pod t-1-z is Running: wait for the Job to end",
        "segment 2/3: no pod (deleted, or never scheduled)",
    ]
    # Logs swapped between pods (or the wrong Job): refused, not merged.
    found = collect(2, pods, lambda pod: logs[1 - (pod.index or 0)])
    assert len(found.problems) == 2
    assert "summary is of segment 1/2" in found.problems[0]


async def test_kube_collect_asks_kubectl_for_the_logs(
    target: RunningTarget, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A stand-in kubectl (there is no cluster here) answering the three calls
    # collect makes from what a cluster would say: the calls themselves are checked.
    logs = await _segment_logs(target, 2)
    state = tmp_path / "cluster"
    state.mkdir()
    (state / "job.json").write_text(
        json.dumps({"spec": {"completionMode": "Indexed", "completions": 2}})
    )
    items = [
        {
            "metadata": {
                "name": f"shop-{i}-abcde",
                "annotations": {"batch.kubernetes.io/job-completion-index": str(i)},
            },
            "status": {
                "phase": "Succeeded",
                "containerStatuses": [
                    {
                        "name": "ballista",
                        "state": {"terminated": {"reason": "Completed", "exitCode": 0}},
                    }
                ],
            },
        }
        for i in (0, 1)
    ]
    (state / "pods.json").write_text(json.dumps({"items": items}))
    for i, text in logs.items():
        (state / f"shop-{i}-abcde.log").write_text(text)
    kubectl = tmp_path / "kubectl"
    kubectl.write_text(
        f"#!{sys.executable}\n"
        "import sys, pathlib\n"
        f"state = pathlib.Path({str(state)!r})\n"
        "a = sys.argv[1:]\n"
        "(state / 'calls').open('a').write(' '.join(a) + '\\n')\n"
        "if a[:3] == ['get', 'job', 'shop']: print((state / 'job.json').read_text())\n"
        "elif a[:4] == ['get', 'pods', '--selector', 'job-name=shop']: print((state / 'pods.json').read_text())\n"
        "elif a[0] == 'logs': sys.stdout.write((state / (a[1] + '.log')).read_text())\n"
        "else: sys.exit('error: unknown call ' + ' '.join(a))\n"
    )
    kubectl.chmod(0o755)
    out = tmp_path / "results"
    out.mkdir()
    argv = [
        "kube",
        "collect",
        "shop",
        "--namespace",
        "load",
        "-o",
        str(out),
        "--kubectl",
        str(kubectl),
    ]
    assert main(argv) == 0, capsys.readouterr().err
    written = sorted(p.name for p in out.iterdir())
    assert written == ["segment-0.json", "segment-1.json"]
    assert sum(json.loads((out / n).read_text())["requests"] for n in written) == 30
    calls = (state / "calls").read_text().splitlines()
    assert calls[0] == "get job shop --output json --namespace load"
    assert calls[1] == "get pods --selector job-name=shop --output json --namespace load"
    assert sorted(calls[2:]) == [
        f"logs shop-{i}-abcde --container ballista --namespace load" for i in (0, 1)
    ]
    assert "ballista merge" in capsys.readouterr().err

    # A pod that died without a summary: the others are written, the command fails.
    (state / "shop-1-abcde.log").write_text("Traceback ...\nMemoryError\n")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "segment 1/2: pod shop-1-abcde left no summary in its log" in err
    assert err.strip().splitlines()[-1].startswith("ballista: error: job shop: 1 of 2 segments")


def test_pods_from_kubectl_json() -> None:
    doc = {
        "items": [{"metadata": {"name": "p", "annotations": {}}, "status": {"phase": "Pending"}}]
    }
    assert pods_from_json(doc) == [Pod("p", None, "Pending")]


def test_a_missing_kubectl_is_one_line() -> None:
    with pytest.raises(Exception, match="not found"):
        Kubectl(program=os.devnull + "-kubectl").segments("x")


def test_pod_args_are_what_the_job_runs() -> None:
    test = example()
    docs = list(yaml.safe_load_all(render(test)))
    assert docs[1]["spec"]["template"]["spec"]["containers"][0]["args"] == pod_args(test)


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def test_dashboards_sum_the_load_across_pods() -> None:
    # Segments run as N pods (N instances): every query over the load's figures
    # must add them up, never show one instance's share as the test's.
    per_process = ("ballista_run_info", "ballista_build_info", "process_")
    checked = 0
    for path in sorted((ROOT / "grafana" / "dashboards").glob("*.json")):
        for panel in _panels(json.loads(path.read_text())["panels"]):
            for target in panel.get("targets", []):
                expr = " ".join(target.get("expr", "").split())
                if "ballista_" not in expr or any(p in expr for p in per_process):
                    continue
                checked += 1
                where = f"{path.name}: {panel['title']}: {expr}"
                groupings = re.findall(r"\bby\s*\(([^)]*)\)", expr)
                assert all("instance" not in g for g in groupings), where
                # Raw series are aggregated (sum) or recorded rules that are sums.
                raw = re.findall(r"\b(ballista_[a-z_]+)\{", expr)
                assert not raw or expr.startswith(("sum", "histogram_quantile(", "(sum")), where
    assert checked > 20
