"""The Kubernetes manifests of a segmented test (docs/scale-out.md): a ConfigMap
with the scenario, an Indexed Job whose pod i runs `ballista run --segment i/N`
from a shared `--start-at`, and a PodMonitor for the Prometheus Operator."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ballista import __version__
from ballista.core.errors import ConfigError
from ballista.core.segment import MAX_SEGMENTS, iso_instant
from ballista.kube.yamlout import dump_all

#: Where the ConfigMap's files appear in the pods.
SCENARIO_DIR = "/scenario"
DEFAULT_METRICS_PORT = 9464
#: /metrics stays up this long after the run, so that a scrape every 5 s (the
#: PodMonitor's) or 15 s (a common annotation-based default) sees the final values.
DEFAULT_LINGER = "35s"
DEFAULT_IMAGE = f"ballista:{__version__}"
#: The label that ties a test's pods, its PodMonitor and its ConfigMap together.
TEST_LABEL = "ballista.dev/test"
#: Set by the Job controller on each pod of an Indexed Job.
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
#: Job names Kubernetes accepts for Indexed Jobs whose pod host names add "-<index>".
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
MAX_NAME = 50
#: A run's pods may outlive its start and its -d by this much before Kubernetes
#: stops them (SIGTERM: they still print their summaries).
DEADLINE_MARGIN = 600.0
#: A ConfigMap holds at most 1 MiB.
MAX_CONFIGMAP_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class KubeTest:
    """What the manifests are rendered from."""

    name: str
    segments: int
    #: Unix seconds: every pod's --start-at
    start_at: float
    #: ConfigMap files, name -> text; `scenario` is one of them
    files: Mapping[str, str]
    scenario: str
    image: str = DEFAULT_IMAGE
    namespace: str | None = None
    metrics_port: int = DEFAULT_METRICS_PORT
    #: further `ballista run` arguments (a URL, -r, --http2, --threshold, ...)
    run_args: tuple[str, ...] = ()
    linger: str = DEFAULT_LINGER
    #: seconds from the Job's creation after which Kubernetes stops its pods (a
    #: hung run must not hold its nodes); None: no limit (a run bounded by -n only)
    deadline: int | None = None


def check_name(name: str, where: str = "--name") -> str:
    if len(name) > MAX_NAME or not _NAME.fullmatch(name):
        raise ConfigError(
            f"{where}: {name!r} must be lower-case letters, digits and '-', start and end "
            f"with a letter or digit, at most {MAX_NAME} characters (it names the Job)"
        )
    return name


#: Kubernetes' limit on a namespace's name (an RFC 1123 label).
MAX_NAMESPACE = 63


def check_namespace(namespace: str) -> str:
    if len(namespace) > MAX_NAMESPACE or not _NAME.fullmatch(namespace):
        raise ConfigError(
            f"--namespace: {namespace!r} must be lower-case letters, digits and '-', start "
            f"and end with a letter or digit, at most {MAX_NAMESPACE} characters"
        )
    return namespace


def check_image(image: str) -> str:
    if not image or any(c.isspace() for c in image):
        raise ConfigError(f"--image: {image!r} is not an image reference (e.g. ballista:0.1.0)")
    return image


def name_from(text: str) -> str:
    """A Job name made from a scenario's name or file name."""
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:MAX_NAME].strip("-")
    return name or "ballista"


def scenario_files(path: str) -> dict[str, str]:
    """The scenario file and the files it names (`body_file`), for the ConfigMap.

    A ConfigMap holds flat files: those named must sit beside the scenario.
    """
    source = Path(path)
    label = source.name
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"-f/--scenario: cannot read {path!r}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"-f/--scenario: {path!r} is not UTF-8 text") from None
    files = {label: text}
    if source.suffix == ".toml":
        try:
            table = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{label}: not valid TOML ({exc})") from None
        for key, named in _named_files(table, ""):
            if Path(named).name != named or named in (".", ".."):
                raise ConfigError(
                    f"{label}: {key}: {named!r} must sit beside the scenario file "
                    "(a ConfigMap holds flat files)"
                )
            try:
                files[named] = (source.parent / named).read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(
                    f"{label}: {key}: cannot read {named!r}: {exc.strerror}"
                ) from None
            except UnicodeDecodeError:
                raise ConfigError(
                    f"{label}: {key}: {named!r} is not UTF-8 text (a ConfigMap's data is text)"
                ) from None
    size = sum(len(k) + len(v.encode()) for k, v in files.items())
    if size > MAX_CONFIGMAP_BYTES:
        raise ConfigError(
            f"-f/--scenario: {label} and its files are {size:,} bytes: more than a ConfigMap "
            f"holds ({MAX_CONFIGMAP_BYTES:,})"
        )
    return files


def _named_files(value: Any, key: str) -> list[tuple[str, str]]:
    """(key path, file name) of every `body_file` (and a data table's `file`)."""
    found: list[tuple[str, str]] = []
    if isinstance(value, dict):
        for k, v in value.items():
            path = f"{key}.{k}" if key else k
            if (k == "body_file" and isinstance(v, str)) or (
                k == "file" and key == "data" and isinstance(v, str)
            ):
                found.append((path, v))
            else:
                found.extend(_named_files(v, path))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found.extend(_named_files(v, f"{key}[{i}]"))
    return found


def pod_args(test: KubeTest, index: str = "$(JOB_COMPLETION_INDEX)") -> list[str]:
    """The container's arguments (the image's entry point is `ballista`). Kubernetes
    replaces `$(JOB_COMPLETION_INDEX)` with the pod's index."""
    return [
        "run",
        "-f",
        f"{SCENARIO_DIR}/{test.scenario}",
        "--segment",
        f"{index}/{test.segments}",
        "--start-at",
        iso_instant(test.start_at),
        "--metrics-port",
        str(test.metrics_port),
        "--metrics-addr",
        "0.0.0.0",
        "--linger",
        test.linger,
        # The summary is the one thing on standard output: `ballista kube collect`
        # finds it in the pod's log (the text summary goes to standard error).
        "--json",
        "-",
        *test.run_args,
    ]


def manifests(test: KubeTest) -> list[dict[str, Any]]:
    """ConfigMap, Job and PodMonitor, in the order `kubectl apply` needs them."""
    if not 1 <= test.segments <= MAX_SEGMENTS:
        raise ValueError(f"segments: {test.segments}")
    labels = {
        "app.kubernetes.io/name": "ballista",
        "app.kubernetes.io/component": "load-generator",
        TEST_LABEL: test.name,
    }

    def meta(name: str) -> dict[str, Any]:
        out: dict[str, Any] = {"name": name}
        if test.namespace is not None:
            out["namespace"] = test.namespace
        out["labels"] = dict(labels)
        return out

    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta(f"{test.name}-scenario"),
        "data": dict(test.files),
    }
    container = {
        "name": "ballista",
        "image": test.image,
        "args": pod_args(test),
        "env": [
            {
                # Set by the Job controller too; declared so that $(...) in args
                # expands on every Kubernetes version.
                "name": "JOB_COMPLETION_INDEX",
                "valueFrom": {
                    "fieldRef": {"fieldPath": f"metadata.annotations['{INDEX_ANNOTATION}']"}
                },
            }
        ],
        "ports": [{"name": "metrics", "containerPort": test.metrics_port, "protocol": "TCP"}],
        # One Ballista process keeps one core busy: ask for it, so segments are
        # not squeezed onto a node that cannot run them all.
        "resources": {
            "requests": {"cpu": "1", "memory": "256Mi"},
            "limits": {"memory": "1Gi"},
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "scenario", "mountPath": SCENARIO_DIR, "readOnly": True}],
    }
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta(test.name),
        "spec": {
            "completionMode": "Indexed",
            "completions": test.segments,
            "parallelism": test.segments,
            # A segment is never run again: a retry would start after --start-at
            # (and be refused), and its share would be counted twice. One that
            # fails leaves the others running (Kubernetes 1.29 and later).
            "backoffLimitPerIndex": 0,
            **({} if test.deadline is None else {"activeDeadlineSeconds": test.deadline}),
            "template": {
                "metadata": {
                    "labels": dict(labels),
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(test.metrics_port),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": {
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": 30,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    # One segment per machine where the cluster allows it.
                    "topologySpreadConstraints": [
                        {
                            "maxSkew": 1,
                            "topologyKey": "kubernetes.io/hostname",
                            "whenUnsatisfiable": "ScheduleAnyway",
                            "labelSelector": {"matchLabels": {TEST_LABEL: test.name}},
                        }
                    ],
                    "containers": [container],
                    "volumes": [
                        {"name": "scenario", "configMap": {"name": f"{test.name}-scenario"}}
                    ],
                },
            },
        },
    }
    podmonitor = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": meta(test.name),
        "spec": {
            # job="ballista", as the bundled rules and dashboards expect (the
            # operator's default would be "<namespace>/<name>").
            "jobLabel": "app.kubernetes.io/name",
            "selector": {"matchLabels": {TEST_LABEL: test.name}},
            "podMetricsEndpoints": [
                {"port": "metrics", "path": "/metrics", "interval": "5s", "scrapeTimeout": "4s"}
            ],
        },
    }
    return [configmap, job, podmonitor]


def render(test: KubeTest) -> str:
    """The manifests as one YAML file, with a comment on how to use it."""
    return header(test) + dump_all(manifests(test))


def header(test: KubeTest) -> str:
    """The comment on top of a rendered file: what it is and how to use it."""
    ns = f" -n {test.namespace}" if test.namespace else ""
    return (
        f"# Ballista: {test.segments} segments of {test.scenario}, starting at "
        f"{iso_instant(test.start_at)}.\n"
        "# Rendered by `ballista kube render` (docs/scale-out.md): re-render, do not edit.\n"
        f"#   kubectl apply{ns} -f THIS_FILE        (before the start time)\n"
        f"#   ballista kube collect {test.name}{ns} --wait 1h -o results/\n"
        "#   ballista merge results/segment-*.json\n"
        f"#   kubectl delete{ns} -f THIS_FILE\n"
    )
