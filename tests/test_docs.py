"""The README and the manual in docs/: links that resolve, a short front door, the quick start."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").glob("*.md"))
DOCUMENTS = [README, *PAGES]

FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks, where `#` starts a heading and links are links."""
    lines: list[str] = []
    fenced = False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text stays
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found: set[str] = set()
    for line in prose_lines(path.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def links(path: Path) -> list[str]:
    found: list[str] = []
    for line in prose_lines(path.read_text(encoding="utf-8")):
        # Code spans hold examples, not links; a link's text may be code.
        found.extend(LINK.findall(INLINE_CODE.sub("code", line)))
    return found


def test_slug_follows_github() -> None:
    assert slug("Finding capacity with `--adaptive`") == "finding-capacity-with---adaptive"
    assert slug("Scenario files: `-f FILE`") == "scenario-files--f-file"
    assert slug("Flat memory: `bench/soak.py`") == "flat-memory-benchsoakpy"
    assert slug("`GET /api/runs/{id}`: status and summary so far") == (
        "get-apirunsid-status-and-summary-so-far"
    )


def test_the_manual_exists() -> None:
    names = {p.name for p in PAGES}
    assert {"running-tests.md", "architecture.md", "development.md"} <= names


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path: Path) -> None:
    broken: list[str] = []
    for target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with anchor #{anchor}")
    assert not broken, f"{path.relative_to(ROOT)}: " + "; ".join(broken)


def test_readme_links_every_page_of_the_manual() -> None:
    linked = {
        (README.parent / t.partition("#")[0]).resolve()
        for t in links(README)
        if t.startswith("docs/")
    }
    assert [p.name for p in PAGES if p.resolve() not in linked] == []


def test_readme_is_a_front_door() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) < 300, f"README.md has {len(lines)} lines: move the detail to docs/"


def test_quick_start_is_exactly_demo_and_test() -> None:
    text = README.read_text(encoding="utf-8")
    section = re.search(r"^## Quick start\n(.*?)(?=^## )", text, re.M | re.S)
    assert section, "README.md has no '## Quick start' section"
    commands: list[str] = []
    fenced = False
    for line in section.group(1).splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif fenced and line.split("#")[0].strip():
            commands.append(line.split("#")[0].strip())
    assert commands == ["scripts/demo", "scripts/test"]
