"""What the daemon is asked to run, as RunConfigs: scenario tables (POSTed, stored or
in files), the `[[runs]]` of `--config`, and a scenario as the API shows it."""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ballista.core.build import build_config
from ballista.core.config import RunConfig
from ballista.core.errors import ConfigError
from ballista.core.redact import redact_header, redact_target
from ballista.core.scenario import read_scenario_file, scenario_from_table
from ballista.engine.workers import usable_cores

#: Keys of a scenario that belong to the daemon, not to the run.
DAEMON_KEYS = ("restart", "workers")
#: `workers` above this is a slip, not a plan (each is a process).
MAX_WORKERS = 1024


def split_daemon_keys(doc: Mapping[str, Any], label: str = "") -> tuple[dict[str, Any], bool]:
    """(the scenario without daemon keys, restart flag)."""
    rest = {k: v for k, v in doc.items() if k not in DAEMON_KEYS}
    restart = doc.get("restart", False)
    if not isinstance(restart, bool):
        where = f"{label}: restart" if label else "restart"
        raise ConfigError(f"{where}: must be true or false", key="restart")
    return rest, restart


def workers_of(doc: Mapping[str, Any], label: str = "") -> int:
    """A scenario's `workers`: how many processes run it (`ballista run --workers`);
    1 when absent, one per usable core for "auto"."""
    value = doc.get("workers", 1)
    if value == "auto":
        return usable_cores()
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_WORKERS:
        where = f"{label}: workers" if label else "workers"
        raise ConfigError(
            f'{where}: must be a whole number from 1 to {MAX_WORKERS} or "auto", not {value!r}',
            key="workers",
        )
    return value


def config_from_mapping(doc: Mapping[str, Any], *, label: str = "") -> RunConfig:
    """A scenario table (POSTed or stored) -> RunConfig, through the scenario
    format's own validation; errors name the key (`load.rate`). `body_file` is
    refused: a caller of the API must not make the daemon read its own disk."""
    return build_config(scenario_from_table(doc, label=label, base_dir=None))


def config_from_file(path: Path) -> tuple[dict[str, Any], RunConfig]:
    """A scenario file named by --config: (its table, its RunConfig)."""
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path.name}: not valid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{path.name}: nested too deeply") from None
    return doc, build_config(read_scenario_file(str(path), what="--config"))


def redact_scenario(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The scenario as the API shows it: secret header values and query values hidden,
    bodies left out."""

    def headers(value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        return {k: redact_header(str(k), v) if isinstance(v, str) else v for k, v in value.items()}

    def url(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        head, sep, tail = value.partition("://")
        if not sep:
            return redact_target(value)
        host, slash, rest = tail.partition("/")
        return f"{head}://{host}{slash}{redact_target(rest)}" if slash else value

    out = dict(doc)
    if isinstance(out.get("defaults"), dict):
        d = dict(out["defaults"])
        if "headers" in d:
            d["headers"] = headers(d["headers"])
        out["defaults"] = d
    if "base_url" in out:
        out["base_url"] = url(out["base_url"])

    def requests(entries: Any) -> Any:
        if not isinstance(entries, list):
            return entries
        reqs = []
        for entry in entries:
            if isinstance(entry, dict):
                e = dict(entry)
                if "headers" in e:
                    e["headers"] = headers(e["headers"])
                for key in ("url", "path"):
                    if key in e:
                        e[key] = url(e[key])
                if "body" in e:
                    e["body"] = f"<{len(str(e['body']).encode())} bytes>"
                if "json" in e:
                    e["json"] = "<JSON body>"
                reqs.append(e)
            else:
                reqs.append(entry)
        return reqs

    def with_steps(table: Any) -> Any:
        if not isinstance(table, dict) or "steps" not in table:
            return table
        return {**table, "steps": requests(table["steps"])}

    if "requests" in out:
        out["requests"] = requests(out["requests"])
    # Journeys: their steps are requests; data rows (users, passwords) are not shown.
    if "setup" in out:
        out["setup"] = with_steps(out["setup"])
    if isinstance(out.get("flows"), list):
        out["flows"] = [with_steps(flow) for flow in out["flows"]]
    if isinstance(out.get("data"), dict | list):
        tables = out["data"] if isinstance(out["data"], list) else [out["data"]]
        shown = [
            {**t, "rows": f"<{len(t['rows'])} rows>"}
            if isinstance(t, dict) and isinstance(t.get("rows"), list)
            else t
            for t in tables
        ]
        out["data"] = shown if isinstance(out["data"], list) else shown[0]
    return out


@dataclasses.dataclass(frozen=True, slots=True)
class BootRun:
    """One run the --config file asks for."""

    name: str
    path: Path
    restart: bool
    doc: dict[str, Any]
    config: RunConfig
    #: `workers` of its [[runs]] entry: processes that run it (an int, or "auto")
    workers: int | str = 1


def load_daemon_config(path: Path) -> list[BootRun]:
    """`--config FILE`: `[[runs]]` tables, each `scenario = "file.toml"` (relative to
    FILE) and optionally `restart = true`. Every scenario is validated now."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"--config: no such file {str(path)!r}") from None
    except OSError as exc:
        raise ConfigError(f"--config: cannot read {str(path)!r}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path.name}: not valid TOML: {exc}") from None
    unknown = [k for k in data if k != "runs"]
    if unknown:
        raise ConfigError(f"{path.name}: {unknown[0]}: unknown key (expected: runs)")
    runs = data.get("runs", [])
    if not isinstance(runs, list):
        raise ConfigError(f"{path.name}: runs: must be an array of tables ([[runs]])")
    out: list[BootRun] = []
    for i, entry in enumerate(runs):
        where = f"{path.name}: runs[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: must be a table")
        extra = [k for k in entry if k not in ("scenario", "restart", "workers")]
        if extra:
            raise ConfigError(
                f"{where}.{extra[0]}: unknown key (expected: scenario, restart, workers)"
            )
        workers = entry.get("workers", 1)
        workers_of(entry, where)
        scenario = entry.get("scenario")
        if not isinstance(scenario, str) or not scenario:
            raise ConfigError(f"{where}.scenario: must be the path of a scenario file")
        restart = entry.get("restart", False)
        if not isinstance(restart, bool):
            raise ConfigError(f"{where}.restart: must be true or false")
        spath = (path.parent / scenario).resolve()
        if not spath.is_file():
            raise ConfigError(f"{where}.scenario: no such file {scenario!r}")
        doc, config = config_from_file(spath)
        if any(r.name == config.scenario for r in out):
            raise ConfigError(f"{where}: scenario name {config.scenario!r} is used twice")
        out.append(BootRun(config.scenario, spath, restart, doc, config, workers))
    return out
