"""`untwine tabular fit|sample|evaluate`: synthetic tables from the command line.

    untwine tabular fit data.csv --target income --out MODEL_DIR [--steps N] [--latent-dim D]
    untwine tabular sample MODEL_DIR -n 1000 --out synthetic.csv [--seed S] [--condition job=pilot ...]
    untwine tabular evaluate real.csv synthetic.csv [--target COL] [--holdout test.csv] [--out DIR] [--model MODEL_DIR]

Each writes JSON (fit: MODEL_DIR/fit.json and interpretability tables; evaluate: DIR/evaluation.json)
and PNGs (fit: traversal heatmap, latent-column MI, stage variance; evaluate: column shapes). The
fit also writes MODEL_DIR/report.html, the library's HTML run report of stage 1's run
(MODEL_DIR/stage1_run: training curves, the settings, the fit's pictures); `evaluate --model
MODEL_DIR` adds its scores and picture to that run and writes the report again.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from untwine.errors import DataError, UntwineError
from untwine.io import atomic_write, atomic_write_bytes


def register(subparsers) -> None:
    tab = subparsers.add_parser("tabular", help="synthetic tables: fit, sample, evaluate",
                                description="Fit a tabular multi-stage model, sample from it, evaluate synthetic data.")
    sub = tab.add_subparsers(dest="tabular_command", metavar="ACTION")

    fit = sub.add_parser("fit", help="fit a model to a CSV table")
    fit.add_argument("data", help="CSV file of the training table")
    fit.add_argument("--out", required=True, help="model directory to write")
    fit.add_argument("--target", default=None, help="the column to predict (recorded for utility evaluation)")
    # No defaults of its own: an option left out takes TabularMultiStage's default, so that the command
    # fits the model that BENCHMARKS.md measured (budgets from the table's rows and width, 8 latents).
    fit.add_argument("--steps", type=int, default=None,
                     help="stage-1 training steps at most (default: from the table's rows and width, early "
                          "stopping on a validation split)")
    fit.add_argument("--stage2-steps", type=int, default=None,
                     help="stage-2 training steps at most (default: an eighth of stage 1's, 200 to 1,500)")
    fit.add_argument("--latent-dim", type=int, default=None, help="stage-1 latents (default: the model's, 8)")
    fit.add_argument("--batch-size", type=int, default=None, help="rows a step (default: the model's, 256)")
    fit.add_argument("--code-prior", choices=["mixture", "normal"], default=None,
                     help="where sampling draws stage 1's codes: a Gaussian mixture fitted to them (default) or N(0, I)")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--type", action="append", default=[], metavar="COL=KIND",
                     help="override a column's type: continuous, integer, datetime, categorical, boolean, id")
    fit.add_argument("--date-format", action="append", default=[], metavar="COL=FORMAT",
                     help="a text date column's format, e.g. 'when=%%d/%%m/%%Y' (needed when day and month "
                          "cannot be told apart)")
    fit.add_argument("--metadata", default=None, metavar="FILE",
                     help="column types and date formats from a metadata file (the fit writes "
                          "MODEL_DIR/metadata.json: edit it and pass it back); --type and --date-format "
                          "override it")
    fit.add_argument("--resume", action="store_true",
                     help="continue an interrupted fit in --out (same data and options) to the model an "
                          "uninterrupted fit reaches")
    fit.set_defaults(func=_fit)

    sample = sub.add_parser("sample", help="write synthetic rows to a CSV")
    sample.add_argument("model", help="model directory written by `untwine tabular fit`")
    sample.add_argument("-n", type=int, required=True, help="number of rows")
    sample.add_argument("--out", required=True, help="CSV file to write")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--condition", action="append", default=[], metavar="COL=VALUE",
                        help="every row has COL=VALUE (repeatable; an empty VALUE asks for a missing value)")
    sample.add_argument("--oversample", type=int, default=20,
                        help="candidates per row under --condition (more: a larger effective sample size)")
    sample.set_defaults(func=_sample)

    ev = sub.add_parser("evaluate", help="fidelity, detection, utility and privacy of a synthetic CSV")
    ev.add_argument("real", help="CSV of the real (training) table")
    ev.add_argument("synthetic", help="CSV of the synthetic table")
    ev.add_argument("--target", default=None, help="column for utility (train on synthetic, test on real)")
    ev.add_argument("--holdout", default=None,
                    help="CSV of real rows never fitted: the utility test set and privacy holdout "
                         "(default: none, utility and privacy are skipped)")
    ev.add_argument("--out", default="evaluation", help="directory for evaluation.json and PNGs")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--type", action="append", default=[], metavar="COL=KIND",
                    help="override a column's type: numerical, datetime, categorical, boolean (e.g. a "
                         "numeric --target as categorical)")
    ev.add_argument("--model", default=None,
                    help="the model directory the synthetic rows came from: add these scores to its report.html")
    ev.set_defaults(func=_evaluate)
    tab.set_defaults(func=lambda args: (tab.print_help(), 0)[1])


def read_csv(path: str) -> pd.DataFrame:
    """A CSV as a DataFrame, with the errors a user can act on."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"CSV file {path!r} does not exist; give the path of a table")
    try:
        # Only an empty field and "?" are missing everywhere: pandas' own list made the categories
        # "NA" (North America) and "None" missing values. In a column of numbers those words are
        # missing values (below).
        df = pd.read_csv(p, skipinitialspace=True, keep_default_na=False, na_values=["", "?"])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"{path!r} is not a readable CSV table ({type(e).__name__}: {e}); check the delimiter "
                        f"(commas), the quoting and the encoding (UTF-8)") from e
    if df.empty:
        raise DataError(f"{path!r} has no data rows; give a table with a header and at least one row")
    if df.shape[1] == 1:   # another delimiter: one column of "a;b;c" would be fitted as one category
        header = str(df.columns[0])
        for sep, name in ((";", "semicolons"), ("\t", "tabs"), ("|", "bars")):
            if sep in header:
                raise DataError(f"{path!r} reads as one column {header[:60]!r}: its fields are separated by {name}, "
                                f"not commas; save it with commas (e.g. pandas.read_csv({path!r}, sep={sep!r})"
                                f".to_csv('table.csv', index=False))")
    for col in df.columns:
        if df[col].dtype == object or pd.api.types.is_string_dtype(df[col]):
            numbers = pd.to_numeric(df[col].where(~df[col].isin(_NA_WORDS)), errors="coerce")
            if numbers.notna().sum() and numbers.notna().sum() == (df[col].notna() & ~df[col].isin(_NA_WORDS)).sum():
                df[col] = numbers
    return df


# words that mean a missing value in a column of numbers (in a text column they are categories)
_NA_WORDS = ["NA", "N/A", "n/a", "NaN", "nan", "None", "null", "NULL", "-"]


def _pairs(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise DataError(f"{what} {item!r} is not of the form COLUMN=VALUE")
        out[key] = value
    return out


def _write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=1, default=_jsonable).encode())


def _jsonable(v):
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, tuple):
        return list(v)
    return str(v)


def _fit(args) -> int:
    from untwine.tabular import interpret
    from untwine.tabular.model import TabularMultiStage
    from untwine.tabular.transformer import read_metadata
    df = read_csv(args.data)
    meta = read_metadata(args.metadata) if args.metadata else {"column_types": {}, "formats": {}}
    given = {"--type": _pairs(args.type, "--type"), "--date-format": _pairs(args.date_format, "--date-format")}
    if args.metadata:
        given[f"--metadata {args.metadata}"] = meta["column_types"]
    for option, pairs in given.items():
        for col in pairs:
            if col not in df.columns:
                raise DataError(f"{option} names column {col!r}, which {args.data!r} does not have (columns: "
                                f"{list(df.columns)})")
    types = {**meta["column_types"], **given["--type"]}
    formats = {**meta["formats"], **given["--date-format"]}
    for col in given["--date-format"]:
        types.setdefault(col, "datetime")
    out = Path(args.out)
    _check_fit_directory(out, args)
    chosen = {k: getattr(args, k) for k in ("latent_dim", "steps", "stage2_steps", "batch_size", "code_prior")
              if getattr(args, k) is not None}
    model = TabularMultiStage(**chosen, column_types=types, formats=formats, seed=args.seed)
    _fit_resumably(model, df, out, args)
    model.save(out)
    run = out / "stage1_run"
    codes = model.encode(df.sample(min(len(df), 5000), random_state=args.seed))
    scales = interpret.numeric_scales(model, df)
    effects = interpret.traversal_effects(interpret.traversal_table(model, codes=codes), scales)
    interpret.save_heatmap(interpret.effect_labels(effects, scales), out / "traversal_heatmap.png",
                           "effect of each latent on each column: the range of the decoded value (in the column's "
                           "standard deviations) or probability as z_j moves over the codes' 95% range; each "
                           "column coloured on its own scale", per_column=True)
    mi = interpret.latent_column_mi(model, df, seed=args.seed)
    interpret.save_heatmap(mi, out / "latent_column_mi.png", "mutual information between latents and columns (nats)",
                           units="nats")
    stages = interpret.stage_variance(model, df)
    interpret.save_stage_variance(stages, out / "stage_variance.png")
    _write_json(out / "fit.json", {"info": model.info, "traversal_effects": effects.to_dict(),
                                   "latent_column_mi": mi.to_dict(),
                                   "stage_variance": stages.to_dict(orient="records")})
    for name in ("traversal_heatmap.png", "latent_column_mi.png", "stage_variance.png"):
        _copy(out / name, run / "pictures" / name)
    _write_json(run / "metrics.json", {"step": model.info["stage1"]["trained"], "stage_variance": {
        "stage1": float(stages["stage1"].mean()), "stage2_added": float(stages["stage2_added"].mean()),
        "combined": float(stages["combined"].mean())}, **({"privacy": {
        k: v for k, v in model.info["privacy"].items() if isinstance(v, (int, float))}}
        if model.info.get("privacy") else {})})
    report = _report(out)
    print(f"model written to {out} ({model.info['fit_seconds']:.1f} s); report: {report}; column types: "
          f"{out / 'metadata.json'} (edit it and pass it back with --metadata)")
    privacy = model.info.get("privacy")
    if privacy:
        print(f"privacy on {privacy['holdout_rows']} held-out rows: closer-to-train {privacy['closer_to_train']:.3f} "
              f"(0.5: no memorisation{'; ABOVE 0.55: the model copies its training rows' if privacy['closer_to_train'] > 0.55 else ''}), "
              f"exact copies {privacy['exact_copy_rate']:.4f}")
    return 0


def _fit_command(args, resume: bool = True) -> str:
    """The `untwine tabular fit` command line of `args` (with --resume): what to run to continue."""
    import shlex
    words = ["untwine", "tabular", "fit", args.data, "--out", args.out]
    for option in ("target", "steps", "stage2_steps", "latent_dim", "batch_size", "code_prior", "metadata"):
        if getattr(args, option) is not None:
            words += [f"--{option.replace('_', '-')}", str(getattr(args, option))]
    if args.seed != 0:
        words += ["--seed", str(args.seed)]
    for option in ("type", "date_format"):
        for item in getattr(args, option):
            words += [f"--{option.replace('_', '-')}", item]
    return " ".join(shlex.quote(w) for w in words + (["--resume"] if resume else []))


def _check_fit_directory(out: Path, args) -> None:
    """A new fit needs a directory without an earlier fit; --resume needs an interrupted one."""
    from untwine.errors import ConfigError
    from untwine.tabular.model import FIT_STATE
    started, finished = (out / FIT_STATE).is_file(), (out / "fit.json").is_file()
    if args.resume:
        if finished:
            raise ConfigError(f"{str(out)!r} holds a finished fit: nothing to resume. Sample from it with `untwine "
                              f"tabular sample {out} -n N --out rows.csv`, or fit again into another --out")
        if not started:
            raise ConfigError(f"--resume: {str(out)!r} holds no interrupted fit ({FIT_STATE} is missing); run the "
                              f"fit without --resume")
    elif finished:
        raise ConfigError(f"{str(out)!r} already holds a fitted model; choose another --out, or remove it to fit "
                          f"again")
    elif started or (out / "stage1_run").exists():
        raise ConfigError(f"{str(out)!r} holds an interrupted fit; continue it with `{_fit_command(args)}`, or "
                          f"remove the directory to start again")


def _fit_resumably(model, df, out: Path, args) -> None:
    """model.fit in `out`; an interruption (SIGINT, SIGTERM, a non-finite loss) ends with the command
    that continues it, not the engine's `untwine train --resume` (a table's runs get their rows from
    this command) and not a traceback."""
    from untwine.tabular.model import FIT_STATE
    try:
        model.fit(df, target=args.target, work_dir=out, resume=args.resume)
    except KeyboardInterrupt:   # between two of the engine's runs, where the engine's handler is not set
        raise FitStopped(f"the fit was interrupted (SIGINT); continue it with `{_fit_command(args)}`", 130) from None
    except UntwineError as e:
        if type(e).__name__ == "TrainingInterrupted":
            head = str(e).split(": ", 1)[0].replace("training", "the fit", 1)
            raise FitStopped(f"{head}; its checkpoints are kept in {out}: continue it with `{_fit_command(args)}`",
                           getattr(e, "exit_code", 130)) from None
        if type(e).__name__ == "NonFiniteLossError" and (out / FIT_STATE).is_file():
            what = str(e).split("; training stopped", 1)[0]
            raise FitStopped(f"{what}; the fit stopped. Lower the learning rate, or continue from the last good "
                           f"checkpoint with `{_fit_command(args)}`", 2) from None
        raise


class FitStopped(UntwineError):
    """A fit stopped before its end (a signal, a non-finite loss); the message says how to continue."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(dst, src.read_bytes())


def _report(model_dir: Path) -> Path:
    """MODEL_DIR/report.html from stage 1's run directory (its pictures/ and metrics.json), titled
    by the model directory."""
    from untwine.report.page import write_report
    return write_report(model_dir / "stage1_run", model_dir / "report.html",
                        title=f"untwine tabular model: {model_dir.resolve().name}",
                        names=[f"{model_dir.resolve().name}: stage 1's training, the fit's pictures"])


def _sample(args) -> int:
    from untwine.tabular.model import TabularMultiStage
    model = TabularMultiStage.load(args.model)
    conditions = {k: (None if v == "" else v) for k, v in _pairs(args.condition, "--condition").items()}
    for col in conditions:
        if col not in model.transformer.column_names:
            raise DataError(f"--condition names column {col!r}, which the model does not have (columns: "
                            f"{model.transformer.column_names})")
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = model.sample(args.n, seed=args.seed, conditions=conditions or None, oversample=args.oversample)
    atomic_write(args.out, lambda fh: fh.write(rows.to_csv(index=False).encode()))
    print(f"{len(rows)} rows written to {args.out}")
    if conditions:
        print(f"effective sample size under the conditions: {model.last_condition_ess:.0f} candidates for "
              f"{len(rows)} rows")
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    return 0


def _evaluate(args) -> int:
    from untwine.tabular import evaluation as ev
    real, synth = read_csv(args.real), read_csv(args.synthetic)
    if args.target is not None and args.holdout is None:
        raise DataError(f"--target {args.target!r} needs --holdout: utility trains on the synthetic rows and "
                        f"tests on real rows never fitted; add --holdout test.csv")
    types = ev.sdtypes(real)
    for col, kind in _pairs(args.type, "--type").items():
        if col not in types:
            raise DataError(f"--type names column {col!r}, which {args.real!r} does not have (columns: {list(types)})")
        if kind not in ev.SDTYPES:
            raise DataError(f"--type {col}={kind!r}: expected one of {ev.SDTYPES}")
        types[col] = kind
    result = {"quality": ev.quality_report(real, synth, types)}
    result["quality"]["columns"] = {c: list(v) for c, v in result["quality"]["columns"].items()}
    result["quality"]["pairs"] = {f"{a}|{b}": list(v) for (a, b), v in result["quality"]["pairs"].items()}
    result["c2st"] = ev.c2st(real, synth, seed=args.seed, types=types)
    if args.target is not None and args.target not in real.columns:
        raise DataError(f"--target {args.target!r} is not a column of {args.real!r} (columns: {list(real.columns)})")
    if args.holdout is not None:
        holdout = read_csv(args.holdout)
        if args.target is not None:
            result["utility"] = ev.utility(real, synth, holdout, args.target, seed=args.seed, types=types)
        result["privacy"] = {"synthetic": ev.privacy(real, synth, holdout, seed=args.seed, types=types)}
    model_dir = Path(args.model) if args.model is not None else None
    if model_dir is not None and not (model_dir / "stage1_run" / "config.yaml").is_file():
        raise DataError(f"--model {args.model!r} is not a model directory written by `untwine tabular fit` "
                        f"(it has no stage1_run/config.yaml); give the fit's --out directory")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "evaluation.json", result)
    _plot_shapes(result["quality"]["columns"], out / "column_shapes.png")
    q = result["quality"]
    if model_dir is not None:
        _add_to_report(model_dir, result, out / "column_shapes.png")
    print(f"quality {q['score']:.3f} (shapes {q['column_shapes']:.3f}, pairs {q['column_pair_trends']:.3f}); "
          f"C2ST AUC logistic {result['c2st']['logistic']:.3f} / HGB {result['c2st']['hgb']:.3f}; "
          f"written to {out}")
    return 0


def _add_to_report(model_dir: Path, result: dict, shapes_png: Path) -> None:
    """The headline scores into stage 1's metrics.json (section "synthetic"), the column-shape
    picture into its pictures/, and the report written again."""
    run = model_dir / "stage1_run"
    try:
        metrics = json.loads((run / "metrics.json").read_text())
    except (OSError, json.JSONDecodeError):
        metrics = {}
    q = result["quality"]
    scores = {"quality": {"quality": q["score"], "column_shapes": q["column_shapes"],
                          "column_pair_trends": q["column_pair_trends"]},
              "c2st_auc": {"logistic": result["c2st"]["logistic"], "hgb": result["c2st"]["hgb"]}}
    for source, label in (("synthetic", "train_synthetic_test_real"), ("real", "train_real_test_real")):
        got = (result.get("utility") or {}).get(source) or {}
        if got:
            scores[label] = {f"{clf}_{k}": v for clf, res in got.items() for k, v in res.items()}
    privacy = (result.get("privacy") or {}).get("synthetic") or {}
    if privacy:
        scores["privacy"] = {k: v for k, v in privacy.items() if isinstance(v, (int, float))}
    metrics["synthetic"] = scores
    _write_json(run / "metrics.json", metrics)
    _copy(shapes_png, run / "pictures" / "column_shapes.png")
    print(f"report: {_report(model_dir)}")


def _plot_shapes(columns: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(columns)
    scores = [columns[c][1] for c in names]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * len(names) + 1.5), 3.0))
    ax.bar(range(len(names)), scores, color=["C0" if columns[c][0] == "KSComplement" else "C1" for c in names])
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("column shape score")
    ax.set_title("KSComplement (blue) / TVComplement (orange)", fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=110))
    plt.close(fig)
