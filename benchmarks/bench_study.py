"""The study numbers of BENCHMARKS.md (issue 26), as markdown.

    .venv/bin/python benchmarks/bench_study.py summary runs/study-cpu-small
        medians over seeds per setting, the UDR ranking and UDR's rank correlation with the
        supervised metrics, the study's wall time (from DIR/invocations.jsonl)
    .venv/bin/python benchmarks/bench_study.py speedup studies/cpu-small.yaml --out runs/study-speedup
        a subset of the spec (its first two methods' first setting, two seeds: 4 runs) trained twice,
        one run after another (--workers 1) and by the default pool, each in a fresh directory
"""
from __future__ import annotations

import argparse
import copy
import json
import shutil
import time
from pathlib import Path

import numpy as np


def _md(header, rows) -> str:
    def cell(v):
        if v is None or (isinstance(v, float) and not np.isfinite(v)):
            return "-"
        return f"{v:.3g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def summary(study_dir: str) -> None:
    from scipy.stats import spearmanr

    from untwine.study.report import RECON, UNSUPERVISED_PREFIXES, headline_columns
    from untwine.study.table import study_table
    frame = study_table(study_dir)
    done = frame[frame["status"] == "done"]
    heads = headline_columns(done)
    cols = heads + [c for c in ("udr", "udr_spearman", RECON) if c in done]
    print(f"{len(done)} of {len(frame)} runs done\n")
    rows = [[s, len(p)] + [p[c].median() for c in cols] for s, p in done.groupby("setting", sort=False)]
    print(_md(["setting", "seeds"] + cols, rows), "\n")
    rank = done.groupby("setting", sort=False)["udr"].median().sort_values(ascending=False)
    print("UDR ranking (median over seeds): " + ", ".join(f"{s} {v:.3f}" for s, v in rank.items()), "\n")
    sup = [c for c in heads if not c.startswith(UNSUPERVISED_PREFIXES)]
    rows = []
    for c in sup + [RECON]:
        both = done[["udr", c]].dropna()
        rho = spearmanr(both["udr"], both[c])
        by_setting = done.groupby("setting")[["udr", c]].median().dropna()
        rho_s = spearmanr(by_setting["udr"], by_setting[c])
        rows.append([c, len(both), float(rho.statistic), float(rho.pvalue), float(rho_s.statistic)])
    print(_md(["metric", "runs", "Spearman rho (runs)", "p", "rho (setting medians)"], rows), "\n")
    inv = Path(study_dir) / "invocations.jsonl"
    if inv.is_file():
        for line in inv.read_text().splitlines():
            r = json.loads(line)
            print(f"invocation {r['started']}: {r['executor']} x{r['workers']}, trained {r['trained']}, "
                  f"failed {r['failed']}, skipped {r['skipped']}, wall {r['wall_seconds']:.0f} s")


def speedup(spec: str, out: str) -> None:
    from untwine.study.orchestrate import run_study
    from untwine.study.spec import read_spec
    raw = read_spec(spec)
    sub = copy.deepcopy(raw)
    first = list(raw["methods"])[:2]
    sub["methods"] = {}
    for m in first:
        entry = dict(raw["methods"][m])
        entry["grid"] = {k: v[:1] for k, v in (entry.get("grid") or {}).items()}
        sub["methods"][m] = entry
    sub["seeds"] = [0, 1]
    sub["name"] = f"{raw.get('name', 'study')}-speedup"
    walls = {}
    for label, workers in (("one after another", 1), ("pool", None)):
        d = Path(out) / ("sequential" if workers == 1 else "pool")
        shutil.rmtree(d, ignore_errors=True)
        t0 = time.perf_counter()
        result = run_study(copy.deepcopy(sub), d, workers=workers)
        walls[label] = time.perf_counter() - t0
        print(f"{label}: {result['counts']['trained']} runs in {walls[label]:.0f} s", flush=True)
    print(f"speed-up of the pool: {walls['one after another'] / walls['pool']:.2f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("summary")
    s.add_argument("dir")
    s = sub.add_parser("speedup")
    s.add_argument("spec")
    s.add_argument("--out", required=True)
    args = p.parse_args()
    summary(args.dir) if args.what == "summary" else speedup(args.spec, args.out)


if __name__ == "__main__":
    main()
