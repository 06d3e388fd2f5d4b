"""Data files of TOML journeys: CSV or JSON Lines rows, loaded once, handed out by mode.

A CSV file's header row names the variables; a JSON Lines file is one object
per line whose keys are the variables. The rows are read when the scenario is
loaded (bounded: `MAX_DATA_BYTES`, `MAX_DATA_ROWS`) and never copied after:
each iteration's variables point at the chosen row's values.

Modes: `per-vu` (virtual user v always gets row v % rows), `per-iteration`
(round robin over the run: each iteration takes the next row), `unique` (each
row once in the whole test: segments share the rows out; when they run out,
`on_exhausted = "stop"` raises DataExhausted, which ends the run, and
`"recycle"` starts again from the first row).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ballista.core.errors import ConfigError
from ballista.core.journey import DataExhausted
from ballista.core.template import BUILTINS, FUNCTIONS

MAX_DATA_BYTES = 100 * 1024 * 1024
MAX_DATA_ROWS = 1_000_000
MODES = ("per-vu", "per-iteration", "unique")
ON_EXHAUSTED = ("stop", "recycle")

Mode = Literal["per-vu", "per-iteration", "unique"]
_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True, slots=True)
class DataRows:
    """A file's rows: `columns` name the variables, each row holds one value per column."""

    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]
    label: str


def _columns(names: Sequence[str], label: str, where: str) -> tuple[str, ...]:
    seen: set[str] = set()
    for name in names:
        if not _VARIABLE.fullmatch(name):
            raise ConfigError(
                f"{label}: {where}: column {name!r} is not a variable name "
                "(letters, digits and '_', not starting with a digit)"
            )
        if name in BUILTINS or name in FUNCTIONS:
            raise ConfigError(f"{label}: {where}: column {name!r} is a built-in's name")
        if name in seen:
            raise ConfigError(f"{label}: {where}: column {name!r} appears twice")
        seen.add(name)
    return tuple(names)


def _read_text(path: Path, label: str) -> str:
    try:
        size = path.stat().st_size
        if size > MAX_DATA_BYTES:
            raise ConfigError(
                f"{label}: {size / 2**20:.0f} MiB is more than the "
                f"{MAX_DATA_BYTES // 2**20} MiB a data file may have"
            )
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{label}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{label}: is a directory") from None
    except OSError as exc:
        raise ConfigError(f"{label}: cannot read: {exc.strerror}") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{label}: line {line}: not UTF-8 text") from None


def _too_many(label: str) -> ConfigError:
    return ConfigError(f"{label}: more than {MAX_DATA_ROWS:,} rows")


def parse_csv(text: str, label: str) -> DataRows:
    """CSV text with a header row -> DataRows; ConfigError names the file and line."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        while header is not None and not any(cell.strip() for cell in header):
            header = next(reader, None)  # blank lines before the header
        if header is None:
            raise ConfigError(f"{label}: empty: a CSV data file starts with a header row")
        columns = _columns([c.strip() for c in header], label, f"line {reader.line_num}")
        rows: list[tuple[str, ...]] = []
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # a blank line
            if len(row) != len(columns):
                raise ConfigError(
                    f"{label}: line {reader.line_num}: {len(row)} fields where the header "
                    f"has {len(columns)}"
                )
            rows.append(tuple(row))
            if len(rows) > MAX_DATA_ROWS:
                raise _too_many(label)
    except csv.Error as exc:
        raise ConfigError(f"{label}: line {reader.line_num}: not valid CSV: {exc}") from None
    if not rows:
        raise ConfigError(f"{label}: no rows after the header")
    return DataRows(columns, tuple(rows), label)


def _objects(docs: Sequence[tuple[str, Any]], label: str) -> DataRows:
    """(where, object) pairs -> DataRows: every object has the first one's keys."""
    columns: tuple[str, ...] | None = None
    rows: list[tuple[Any, ...]] = []
    for where, doc in docs:
        if not isinstance(doc, dict) or not doc:
            raise ConfigError(f"{label}: {where}: not a JSON object with keys")
        if columns is None:
            columns = _columns(list(doc), label, where)
        elif doc.keys() != set(columns):
            missing = sorted(set(columns) - doc.keys())
            extra = sorted(doc.keys() - set(columns))
            what = f"missing {', '.join(missing)}" if missing else f"extra {', '.join(extra)}"
            raise ConfigError(f"{label}: {where}: keys differ from the first row's ({what})")
        rows.append(tuple(doc[c] for c in columns))
        if len(rows) > MAX_DATA_ROWS:
            raise _too_many(label)
    if columns is None:
        raise ConfigError(f"{label}: empty: no rows")
    return DataRows(columns, tuple(rows), label)


def parse_jsonl(text: str, label: str) -> DataRows:
    """JSON Lines (one object per line, the same keys in each) -> DataRows."""
    docs: list[tuple[str, Any]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            docs.append((f"line {number}", json.loads(line)))
        except ValueError as exc:
            raise ConfigError(f"{label}: line {number}: not JSON: {exc}") from None
        if len(docs) > MAX_DATA_ROWS:
            raise _too_many(label)
    return _objects(docs, label)


def load_rows(path: Path, label: str) -> DataRows:
    """A data file by its extension: `.csv`, or `.jsonl`/`.ndjson` (JSON Lines)."""
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl", ".ndjson"):
        raise ConfigError(f"{label}: use a .csv or .jsonl (JSON Lines) file")
    text = _read_text(path, label)
    return parse_csv(text, label) if suffix == ".csv" else parse_jsonl(text, label)


def inline_rows(rows: Sequence[Any], label: str) -> DataRows:
    """Rows given in the scenario itself (`rows = [{...}, ...]`), by the JSON Lines rules."""
    return _objects([(f"rows[{i}]", row) for i, row in enumerate(rows)], label)


class DataSource:
    """Hands rows out to iterations by mode; the one mutable piece of a compiled journey."""

    __slots__ = ("_first", "_next", "_stride", "columns", "data", "label", "mode", "recycle")

    def __init__(self, data: DataRows, mode: Mode, *, recycle: bool = False) -> None:
        self.data = data
        self.columns = data.columns
        self.mode = mode
        self.recycle = recycle
        self.label = data.label
        self._next = 0
        #: `unique`: this segment's rows are first, first + stride, ... (see `share`)
        self._first = 0
        self._stride = 1

    def share(self, index: int, count: int) -> None:
        """Segment `index` of `count`: a `unique` source hands out rows index,
        index + count, ... so the segments of one test never use a row twice."""
        if self.mode != "unique" or count <= 1:
            return
        if index >= len(self.data.rows) and self.recycle:
            return  # no row of its own: recycling the whole file beats running nothing
        self._first = self._next = index
        self._stride = count

    def row(self, vu: int) -> tuple[Any, ...]:
        """The row for virtual user `vu`'s next iteration (or setup)."""
        rows = self.data.rows
        if self.mode == "per-vu":
            return rows[vu % len(rows)]
        i = self._next
        if i >= len(rows):
            if self.mode == "unique" and not self.recycle:
                raise DataExhausted(f"{self.label}: every row has been used once (unique)")
            i = self._first
        self._next = i + self._stride
        return rows[i]

    def assign(self, vu: int, variables: dict[str, Any]) -> None:
        """Put the chosen row's values in `variables`, by column (no copy of the row)."""
        variables.update(zip(self.columns, self.row(vu), strict=True))
