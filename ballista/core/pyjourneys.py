"""Loading Python journeys: a module's `@journey` functions (and its `@setup`) as `Journeys`.

`ballista run -f journeys.py URL` imports the file as a module (its folder on
`sys.path`, so that helpers beside it import) and checks what it defines before
any load: a file that does not import, defines no journey, or a journey that is
not an `async def` of one argument fails in one line naming file and function.
"""

from __future__ import annotations

import importlib.util
import inspect
import math
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

from ballista.core.errors import ConfigError
from ballista.core.journey import JOURNEY_ATTR, SETUP_ATTR, JourneyDef, Journeys


def is_python_journeys(path: str) -> bool:
    """True when a -f file is Python journeys rather than a TOML scenario."""
    return path.endswith(".py")


def load_journeys(path: str, *, what: str = "-f/--scenario") -> Journeys:
    """Import `path` and collect its journeys. ConfigError, one line, for what is wrong."""
    file = Path(path)
    label = file.name
    if not file.is_file():
        why = "is a directory" if file.is_dir() else "no such file"
        raise ConfigError(f"{what}: {path!r}: {why}")
    return journeys_of(_import(file, label), label)


def journeys_of(module: ModuleType, label: str) -> Journeys:
    """The journeys a module defines (its `@journey` functions, its `@setup`)."""
    flows: list[JourneyDef] = []
    setups: list[tuple[str, Any]] = []
    seen: dict[str, str] = {}
    for attr, value in list(vars(module).items()):
        if getattr(value, SETUP_ATTR, False):
            _check_signature(label, attr, value, "@setup")
            setups.append((attr, value))
        mark = getattr(value, JOURNEY_ATTR, None)
        if mark is None:
            continue
        name, weight = mark
        _check_signature(label, attr, value, "@journey")
        flow = attr if name is None else name
        if not isinstance(flow, str) or not flow.strip():
            raise ConfigError(f"{label}: journey {attr!r}: name= must be a non-empty string")
        if flow in seen:
            raise ConfigError(
                f"{label}: journeys {seen[flow]!r} and {attr!r} are both named {flow!r}"
            )
        seen[flow] = attr
        if (
            isinstance(weight, bool)
            or not isinstance(weight, int | float)
            or not math.isfinite(weight)
            or weight <= 0
        ):
            raise ConfigError(
                f"{label}: journey {attr!r}: weight must be a number above 0, got {weight!r}"
            )
        flows.append(JourneyDef(name=flow, fn=value, weight=float(weight)))
    if not flows:
        raise ConfigError(
            f"{label}: defines no journey (mark an `async def name(session)` with "
            "@journey, from `from ballista import journey`)"
        )
    if len(setups) > 1:
        names = ", ".join(repr(a) for a, _ in setups)
        raise ConfigError(f"{label}: more than one @setup ({names}): keep one")
    return Journeys(flows=tuple(flows), setup=setups[0][1] if setups else None, source=label)


def _import(file: Path, label: str) -> ModuleType:
    name = f"ballista_journeys_{file.stem}"
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{label}: cannot be imported as Python")
    module = importlib.util.module_from_spec(spec)
    folder = str(file.resolve().parent)
    if folder not in sys.path:
        # Helpers beside the journeys import as they would for `python journeys.py`.
        sys.path.insert(0, folder)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        sys.modules.pop(name, None)
        line = f":{exc.lineno}" if exc.lineno else ""
        raise ConfigError(f"{label}{line}: SyntaxError: {exc.msg}") from None
    except (Exception, SystemExit) as exc:  # the module's own code failed: say where
        # SystemExit too: a script's `sys.exit(main())` at import would otherwise end
        # Ballista with the script's exit code (0 included) and no word of why.
        sys.modules.pop(name, None)
        where = label
        resolved = str(file.resolve())
        for frame in reversed(traceback.extract_tb(exc.__traceback__)):
            if frame.filename == resolved or Path(frame.filename).name == label:
                where = f"{label}:{frame.lineno}"
                break
        if isinstance(exc, SystemExit):
            raise ConfigError(
                f"{where}: sys.exit({exc.code!r}) while being imported: a journeys file "
                "defines journeys, it does not run them"
            ) from None
        raise ConfigError(f"{where}: {type(exc).__name__}: {exc}") from None
    return module


def _check_signature(label: str, attr: str, fn: Any, mark: str) -> None:
    if not inspect.iscoroutinefunction(fn):
        raise ConfigError(
            f"{label}: {mark} {attr!r} must be an `async def` taking the session "
            f"(async def {attr}(session): ...)"
        )
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return
    required = [
        p
        for p in params
        if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    varargs = any(p.kind is p.VAR_POSITIONAL for p in params)
    keyword_only = any(p.kind is p.KEYWORD_ONLY and p.default is p.empty for p in params)
    if len(required) > 1 or (not positional and not varargs) or keyword_only:
        raise ConfigError(
            f"{label}: {mark} {attr!r} must take one argument, the session "
            f"(async def {attr}(session): ...)"
        )
