"""`untwine report RUN_DIR [RUN_DIR ...] [--out PATH]`: write the HTML report of runs."""
from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "report", help="write the HTML report of a run, or of several runs side by side",
        description="Write one self-contained HTML page (pictures embedded, opens offline) with each run's "
                    "config, training curves, metrics and pictures; several runs add a comparison table "
                    "and charts. Prints the path written.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories written by `untwine train`")
    p.add_argument("--out", default=None,
                   help="the HTML file to write (default: RUN_DIR/report.html for one run, ./report.html for several)")
    p.set_defaults(func=_report)


def _report(args) -> int:
    from untwine.report import write_report
    print(write_report(args.run_dirs, args.out))
    return 0
