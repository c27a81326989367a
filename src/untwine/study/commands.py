"""`untwine study run SPEC --out DIR`, `untwine study table DIR`, `untwine study report DIR`."""
from __future__ import annotations

import argparse

HELP = "run a study (many runs from one spec, on this machine or a Ray cluster); its table and report"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "study", help=HELP,
        description="A study: presets x a grid of overrides x seeds x datasets, one run directory each "
                    "(DIR/runs/<run>), trained by a local pool or a Ray cluster, aggregated into one table "
                    "and one report, with UDR for unsupervised model selection.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="study_command", metavar="ACTION", required=True)

    r = sub.add_parser("run", help="train every run of a spec that is not done (re-running skips finished runs "
                                   "and resumes unfinished ones)")
    r.add_argument("spec", help="the study spec (YAML; see studies/ in the repository)")
    r.add_argument("--out", required=True, help="the study directory (DIR/runs/<run>, DIR/study.csv, DIR/study.html)")
    r.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local: a pool of worker processes on this machine (default); ray: one Ray task per run")
    r.add_argument("--address", default=None,
                   help="the Ray cluster (ray://HOST:10001 or HOST:6379; default: RAY_ADDRESS or a local instance)")
    r.add_argument("--workers", type=int, default=None,
                   help="local pool size (default: the machine's cores / the runs' cpus)")
    r.add_argument("--force", action="store_true",
                   help="adopt DIR although a different spec wrote it (its runs keep their directories)")
    r.add_argument("--no-report", action="store_true", help="skip the table and report at the end")
    r.set_defaults(func=_run)

    t = sub.add_parser("table", help="write the tidy table: DIR/study.csv and DIR/study.parquet, a row per run")
    t.add_argument("dir", help="the study directory")
    t.add_argument("--out", default=None, help="the table's path stem (default DIR/study)")
    t.add_argument("--no-udr", action="store_true", help="leave out UDR and recon_eval (no model is loaded)")
    t.set_defaults(func=_table)

    s = sub.add_parser("report", help="write DIR/study.html: distributions over seeds, reconstruction against "
                                      "disentanglement, metric agreement, medians, UDR")
    s.add_argument("dir", help="the study directory")
    s.add_argument("--out", default=None, help="the page (default DIR/study.html)")
    s.set_defaults(func=_report)


def _run(args) -> int:
    from untwine.study.orchestrate import run_study
    result = run_study(args.spec, args.out, executor=args.executor, address=args.address, workers=args.workers,
                       force=args.force)
    c = result["counts"]
    print(f"study {result['study'].name}: {c['trained']} trained, {c['failed']} failed, {c['busy']} running "
          f"elsewhere, {len(result['skipped'])} skipped, {result['wall_seconds']:.0f} s")
    if not args.no_report:
        _write_both(args.out)
    return 1 if c["failed"] else 0


def _write_both(study_dir) -> None:
    from untwine.study.report import write_study_report
    from untwine.study.table import study_table, write_table
    frame = study_table(study_dir)
    csv_path, parquet_path = write_table(study_dir, frame=frame)
    page = write_study_report(study_dir, frame=frame)
    print(f"table: {csv_path} and {parquet_path}\nreport: {page}")


def _table(args) -> int:
    from untwine.study.table import write_table
    csv_path, parquet_path = write_table(args.dir, args.out, selection=not args.no_udr)
    print(f"table: {csv_path} and {parquet_path}")
    return 0


def _report(args) -> int:
    from untwine.study.report import write_study_report
    print(f"report: {write_study_report(args.dir, args.out)}")
    return 0
