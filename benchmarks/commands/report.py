"""``bench report`` and ``bench compare``: the report of a run directory
(``benchmarks.report``), rebuilt or after a sweep, and two run directories side by side."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks.commands.shared import UsageError


def add_parser(sub) -> None:
    rep = sub.add_parser("report", help="(re)build report.md/html and summary.csv from a run directory")
    rep.add_argument("run_dir", type=Path)
    cmp_ = sub.add_parser("compare", help="two run directories side by side, with the verdicts that flipped")
    cmp_.add_argument("run_a", type=Path)
    cmp_.add_argument("run_b", type=Path)


def readable_results(run_dir: Path):
    """The results of ``run_dir`` (``common.results.RunResults``); one-line error when none is readable."""
    from common.results import load_results

    if not run_dir.is_dir():
        raise UsageError(f"run directory {str(run_dir)!r} does not exist")
    run = load_results(run_dir)
    if not run.results:
        why = "; ".join(f"{u.path}: {u.reason}" for u in run.unreadable[:3])
        raise UsageError(f"{str(run_dir)!r} has no {'readable ' * bool(why)}*/result.json"
                         + (f" ({len(run.unreadable)} unreadable: {why})" if why else "")
                         + "; give a 'bench run' directory")
    return run


def write_report(run_dir: Path) -> str:
    """Write the report of ``run_dir`` and return the line naming its files; a folder it
    cannot write (read-only, immutable, a report file that is a folder, a full disk) is a
    ``UsageError`` naming why, raised before or instead of a traceback."""
    from benchmarks import report
    from common.paths import disk_full_message, is_disk_full

    problem = report.report_write_problem(run_dir)
    if problem:
        raise UsageError(f"report not written: {problem}")
    try:
        paths = report.write_report(run_dir)
    except OSError as err:  # the results are kept; only the report is missing
        why = disk_full_message(err.filename or run_dir) if is_disk_full(err) else \
            f"{err.filename or run_dir}: {err.strerror or err}"
        raise UsageError(f"report not written: {why}") from None
    return "report: " + ", ".join(str(p) for p in paths.values())


def print_summary(run_dir: Path, results: list[dict], write: bool) -> None:
    """The summary table after a sweep and its report; a report that cannot be written is
    one line on stderr (the results are kept; ``bench report`` rebuilds it)."""
    from benchmarks import report
    from common.results import read_results

    print()
    print(report.summary_table(results))
    if write and read_results(run_dir):
        try:
            print("\n" + write_report(run_dir))
        except UsageError as err:
            print(f"\n{err}; rebuild it with: bench report {run_dir}", file=sys.stderr)


def cmd_report(args: argparse.Namespace) -> int:
    from benchmarks import report

    run = readable_results(args.run_dir)
    problem = report.report_write_problem(args.run_dir)  # before the table: one line, exit 2
    if problem:
        raise UsageError(f"report not written: {problem}; bench report writes "
                         f"{', '.join(report.REPORT_FILES)} into the run directory")
    print_summary(args.run_dir, run.results, write=False)
    print("\n" + write_report(args.run_dir))
    for line in report.unreadable_lines(run):
        print(line)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from benchmarks import report

    for d in (args.run_a, args.run_b):
        readable_results(d)
    print(report.compare(args.run_a, args.run_b))
    return 0


HANDLERS = {"report": cmd_report, "compare": cmd_compare}
