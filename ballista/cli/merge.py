"""`ballista merge A.json B.json ...`: one summary from the summaries of a test's segments."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from ballista.core.errors import EXIT_OK, EXIT_THRESHOLD, ConfigError
from ballista.core.merge import SummaryPart, merge_summaries
from ballista.core.summaryfile import read_summary
from ballista.core.thresholds import ThresholdSet, parse_threshold
from ballista.observe.summary import check_output_path, format_summary, summary_dict, write_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="SUMMARY.json", help="JSON summaries to merge")
    p.add_argument(
        "--json",
        default=None,
        metavar="PATH",
        help="write the merged JSON summary to PATH, or to stdout with '-'",
    )
    p.add_argument(
        "--threshold",
        action="append",
        default=[],
        metavar="EXPR",
        help="repeatable, as for `run`, judged on the merged figures (with the summaries' own)",
    )
    p.add_argument(
        "--partial",
        action="store_true",
        help="merge even when segments of the test are missing (the summary says which)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no text summary")


def main(ns: argparse.Namespace) -> int:
    check_output_path(ns.json, "--json")
    if ns.json not in (None, "-") and os.path.abspath(ns.json) in {
        os.path.abspath(p) for p in ns.files
    }:
        # Writing over a segment's summary would lose it: the merge could not be redone.
        raise ConfigError(f"--json: {ns.json!r} is one of the summaries merged")
    parts = [SummaryPart(path, read_summary(path)) for path in ns.files]
    merged = merge_summaries(parts, partial=ns.partial)
    snap = merged.snapshot
    names = [s.name for s in snap.by_request]
    # The thresholds the runs judged themselves by, then the ones given here: each
    # judged once, on the merged figures (a segment's rps is not the test's).
    exprs: dict[str, str] = {}
    for part in parts:
        for verdict in part.doc.get("thresholds") or ():
            expr = verdict.get("expr") if isinstance(verdict, dict) else None
            if isinstance(expr, str):
                exprs.setdefault(expr, f"{part.where}: thresholds")
    for expr in ns.threshold:
        exprs.setdefault(expr, "--threshold")
    flow_names = list(merged.flows or {})
    thresholds = ThresholdSet(
        [parse_threshold(e, names, what=w, flow_names=flow_names) for e, w in exprs.items()]
    )
    verdicts = thresholds.evaluate(snap)
    meta = dataclasses.replace(merged.meta, thresholds=verdicts)
    doc = summary_dict(snap, meta, merged.timeline)
    doc["merged"] = merged.merged
    if merged.flows is not None:
        doc["flows"] = merged.flows
    text_out = sys.stderr if ns.json == "-" else sys.stdout
    if not ns.quiet:
        text_out.write(format_summary(snap, meta))
        text_out.flush()
    if ns.json is not None:
        write_json(doc, ns.json, sys.stdout)
    return EXIT_OK if all(v["ok"] for v in verdicts) else EXIT_THRESHOLD
