"""`ballista report`: the HTML report of one JSON summary, or the comparison of several."""

from __future__ import annotations

import argparse
import os

from ballista.core.errors import ConfigError
from ballista.core.summaryfile import histogram_of, read_summary, timeline_of
from ballista.observe.report import (
    ReportRun,
    check_figures,
    default_report_path,
    render_report,
    write_report,
)
from ballista.observe.summary import check_output_path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "inputs",
        metavar="RUN.json",
        nargs="+",
        help="JSON summaries (ballista run --json); several are overlaid and compared, "
        "the first as the baseline",
    )
    p.add_argument(
        "-o",
        "--output",
        default=None,
        metavar="OUT.html",
        help="where to write the report (default: beside the first input, .html)",
    )
    p.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="NAME",
        help="name of each run in the order given, repeatable (default: the file names)",
    )
    p.add_argument("--title", default=None, help="the report's title")


def labels_for(inputs: list[str], given: list[str]) -> list[str]:
    """Each run's name: the --label given, else its file name (its path if two share one)."""
    if len(given) > len(inputs):
        raise ConfigError(f"--label: {len(given)} labels for {len(inputs)} inputs")
    names = [os.path.basename(path) for path in inputs]
    out = []
    for i, path in enumerate(inputs):
        if i < len(given):
            out.append(given[i])
        else:
            out.append(names[i] if names.count(names[i]) == 1 else path)
    return out


def main(ns: argparse.Namespace) -> int:
    output = ns.output or default_report_path(ns.inputs[0])
    if output == "-":
        raise ConfigError("-o/--output: a report is a file (give a path ending in .html)")
    if os.path.abspath(output) in {os.path.abspath(p) for p in ns.inputs}:
        raise ConfigError(f"-o/--output: {output!r} is one of the inputs")
    check_output_path(output, "-o/--output")
    labels = labels_for(ns.inputs, ns.label)
    runs = []
    for path, label in zip(ns.inputs, labels, strict=True):
        doc = read_summary(path)
        check_figures(doc, path)
        # what the page is drawn from, checked here: a damaged file is one line, not a
        # traceback; the timeline as read back (each point's figures from its histogram)
        timeline = timeline_of(doc, where=path)
        if "histograms" in doc:
            histogram_of(doc, where=path)
        points = timeline.to_dict()["points"] if timeline is not None else None
        runs.append(ReportRun(label=label, summary=doc, points=points))
    text = render_report(runs, title=ns.title)
    try:
        write_report(text, output)
    except OSError as exc:
        raise ConfigError(f"-o/--output: cannot write {output!r}: {exc.strerror}") from None
    print(f"ballista: report written to {output}")
    return 0
