"""YAML out of plain data (dicts, lists, strings, numbers, booleans), for manifests
people read and kubectl applies: block style, strings double-quoted as JSON
writes them (a subset of YAML's double-quoted scalars), text files as literal
blocks. Only writing: PyYAML is not a dependency of Ballista."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

#: Keys written bare: Kubernetes field names and label keys. Anything else is quoted.
_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-/]*$")
_INDENT = "  "
#: Strings written plain (unquoted): they start with a letter and hold nothing YAML
#: reads as syntax; YAML 1.1's booleans and nulls are quoted all the same.
_PLAIN_TEXT = re.compile(r"^[A-Za-z][A-Za-z0-9_./-]*$")
_RESERVED = frozenset({"true", "false", "null", "yes", "no", "on", "off", "y", "n"})


def dump_all(documents: Sequence[Mapping[str, Any]]) -> str:
    """A stream of YAML documents, each starting with `---`."""
    return "".join("---\n" + dump(doc) for doc in documents)


def dump(value: Mapping[str, Any]) -> str:
    lines: list[str] = []
    _mapping(value, 0, lines)
    return "\n".join(lines) + "\n"


def _key(key: str) -> str:
    if _PLAIN_KEY.fullmatch(key) and key.lower() not in _RESERVED:
        return key
    return json.dumps(key)


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return json.dumps(value)
    if isinstance(value, str):
        if _PLAIN_TEXT.fullmatch(value) and value.lower() not in _RESERVED:
            return value
        return json.dumps(value)
    raise TypeError(f"cannot write {type(value).__name__} as YAML")


def _block_text(value: str, depth: int) -> list[str] | None:
    """A multi-line string as a literal block (`|`), or None when one would not
    read back exactly (control characters, spaces ending a line at the end)."""
    if "\n" not in value or any(
        (ord(c) < 0x20 and c not in "\n\t") or c in "\x7f\ufeff\u2028\u2029\x85" for c in value
    ):
        return None
    body = value.rstrip("\n")
    trailing = len(value) - len(body)
    chomp = "-" if trailing == 0 else "" if trailing == 1 else "+"
    if not body or "\t" in value or "\r" in value:
        return None
    if any(line and not line.strip() for line in body.split("\n")):
        return None  # a line of spaces alone would be read as indentation
    indent = _INDENT * (depth + 1)
    first = next(line for line in body.split("\n") if line)
    # Leading spaces on the first line would be taken for the indentation.
    marker = f"|{len(_INDENT)}{chomp}" if first[:1] == " " else f"|{chomp}"
    lines = [marker]
    for line in body.split("\n"):
        lines.append(indent + line if line else "")
    lines.extend("" for _ in range(trailing - 1))
    return lines


def _mapping(value: Mapping[str, Any], depth: int, lines: list[str]) -> None:
    pad = _INDENT * depth
    if not value:
        lines[-1] = lines[-1] + " {}" if lines else "{}"
        return
    for key, item in value.items():
        head = f"{pad}{_key(str(key))}:"
        _item(head, item, depth, lines)


def _item(head: str, item: Any, depth: int, lines: list[str]) -> None:
    if isinstance(item, Mapping):
        if not item:
            lines.append(f"{head} {{}}")
            return
        lines.append(head)
        _mapping(item, depth + 1, lines)
    elif isinstance(item, list | tuple):
        if not item:
            lines.append(f"{head} []")
            return
        lines.append(head)
        _sequence(item, depth + 1, lines)
    elif isinstance(item, str) and (block := _block_text(item, depth)) is not None:
        lines.append(f"{head} {block[0]}")
        lines.extend(block[1:])
    else:
        lines.append(f"{head} {_scalar(item)}")


def _sequence(value: Sequence[Any], depth: int, lines: list[str]) -> None:
    pad = _INDENT * (depth - 1) + "- "
    for item in value:
        if isinstance(item, Mapping) and item:
            start = len(lines)
            _mapping(item, depth, lines)
            # The first key goes on the dash's line.
            lines[start] = pad + lines[start][len(_INDENT) * depth :]
        elif isinstance(item, list | tuple) and item:
            lines.append(pad.rstrip())
            _sequence(item, depth + 1, lines)
        elif isinstance(item, Mapping):
            lines.append(pad + "{}")
        elif isinstance(item, list | tuple):
            lines.append(pad + "[]")
        else:
            lines.append(pad + _scalar(item))
