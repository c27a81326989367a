"""The SDV peer of the Adult benchmark; runs INSIDE the SDV venv (benchmarks/setup_sdv_venv.sh).

    .venv-sdv/bin/python benchmarks/sdv_fit.py fit --model tvae --epochs 300 --train train.csv --seed 0 --out tvae.csv
    .venv-sdv/bin/python benchmarks/sdv_fit.py quality --real train.csv --synthetic a.csv b.csv --types types.json --out q.json

fit: a TVAE or CTGAN synthesizer (SDV's defaults apart from `epochs`, CPU, one torch thread) on the
training CSV, with the column sdtypes in --types (the JSON {column: sdtype} that untwine infers and
scores with, so both tools see the same table; without it, numerical for numbers, categorical
otherwise, which calls an integer-coded category such as KDD's `year` numerical); samples as many rows as it was fitted on and writes them to
--out, and the fit seconds to --out with the suffix .json.
quality: SDMetrics' QualityReport (overall, Column Shapes, Column Pair Trends, per column) of each
synthetic CSV against the real one, with the sdtypes in --types (a JSON {column: sdtype}), as JSON
{synthetic path: {"scores", "columns", "pairs_scored"}} (pairs_scored: the pairs its threshold keeps).
bench_tabular_adult.py calls both and scores the samples with untwine's own evaluation. SDV is
BUSL-1.1: it is only ever run here, never imported by untwine.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd


def read_table(path: str) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=False, na_values=[""])


def metadata_dict(df: pd.DataFrame, types: dict | None = None) -> dict:
    types = types or {c: "numerical" if pd.api.types.is_numeric_dtype(df[c]) else "categorical" for c in df.columns}
    return {"columns": {c: {"sdtype": t} for c, t in types.items()}}


def _children_cpu() -> float:
    """CPU seconds of the child processes that ended: joblib's worker processes (rdt's transforms run
    there) are shut down first, so that theirs count."""
    import resource
    try:
        from joblib.externals.loky import get_reusable_executor
        get_reusable_executor().shutdown(wait=True)
    except Exception:  # noqa: BLE001 - no joblib, or no executor started: nothing to wait for
        pass
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def fit(args) -> None:
    import torch
    from sdv.metadata import Metadata
    from sdv.single_table import CTGANSynthesizer, TVAESynthesizer
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    train = read_table(args.train)
    types = json.loads(Path(args.types).read_text()) if args.types else None
    metadata = Metadata.load_from_dict(metadata_dict(train, types))
    cls = {"tvae": TVAESynthesizer, "ctgan": CTGANSynthesizer}[args.model]
    synth = cls(metadata, epochs=args.epochs, enable_gpu=False)
    t0, cpu0, kids0 = time.perf_counter(), time.process_time(), _children_cpu()
    # fit() is preprocess() then fit_processed_data(): timed apart, so that a fit of few epochs
    # extrapolates to 300 (the fixed cost once, the training per epoch)
    processed = synth.preprocess({"table": train})  # SDV 2 takes {table name: frame}
    preprocess_cpu_s = time.process_time() - cpu0 + _children_cpu() - kids0
    synth.fit_processed_data(processed)
    fit_s = time.perf_counter() - t0
    # CPU seconds of the fit: this process's threads and any worker processes it waited for
    fit_cpu_s = time.process_time() - cpu0 + _children_cpu() - kids0
    t0 = time.perf_counter()
    sample = synth.sample(len(train))["table"]
    sample_s = time.perf_counter() - t0
    sample.to_csv(args.out, index=False)
    Path(args.out).with_suffix(".json").write_text(json.dumps(
        {"model": args.model, "epochs": args.epochs, "seed": args.seed, "types": types, "fit_s": fit_s,
         "sample_s": sample_s, "rows": len(sample), "fit_cpu_s": fit_cpu_s,
         "preprocess_cpu_s": preprocess_cpu_s}))
    print(f"{args.model} ({args.epochs} epochs): fit {fit_s:.1f} s, sample {sample_s:.1f} s -> {args.out}")


def quality(args) -> None:
    from sdmetrics.reports.single_table import QualityReport
    types = json.loads(Path(args.types).read_text())
    real = read_table(args.real)[list(types)]
    out = {}
    for path in args.synthetic:
        report = QualityReport()
        report.generate(real, read_table(path)[list(types)], metadata_dict(real, types), verbose=False)
        props = report.get_properties().set_index("Property")["Score"]
        shapes = report.get_details("Column Shapes")
        pairs = report.get_details("Column Pair Trends")
        out[path] = {"scores": {"score": float(report.get_score()), "column_shapes": float(props["Column Shapes"]),
                                "column_pair_trends": float(props["Column Pair Trends"])},
                     "columns": {r["Column"]: float(r["Score"]) for _, r in shapes.iterrows()},
                     "pairs_scored": int(pairs["Meets Threshold?"].fillna(False).sum()), "pairs": len(pairs)}
        print(path, json.dumps(out[path]["scores"]))
    Path(args.out).write_text(json.dumps(out, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fit")
    f.add_argument("--model", choices=["tvae", "ctgan"], required=True)
    f.add_argument("--epochs", type=int, default=300)
    f.add_argument("--train", required=True)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--out", required=True)
    f.add_argument("--types", help="a JSON {column: sdtype} (default: numerical for numbers, else categorical)")
    f.set_defaults(func=fit)
    q = sub.add_parser("quality")
    q.add_argument("--real", required=True)
    q.add_argument("--synthetic", nargs="+", required=True)
    q.add_argument("--types", required=True)
    q.add_argument("--out", required=True)
    q.set_defaults(func=quality)
    args = ap.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
