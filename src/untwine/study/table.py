"""The study's tidy table: one row per run, written as DIR/study.csv and DIR/study.parquet.

Columns: run, method, setting, preset, dataset, seed, stage1; the resolved value of every key a
spec's overrides set (`objective.beta`, ...; read from the run's resolved config); status (done,
unfinished, failed, pending, running) and error; steps, train_seconds (the run's wall time),
images_per_second; recon_eval and UDR (untwine.study.selection); then every scalar of the run's
final metrics.json, named metric.key (`dci.completeness`, `unsupervised.mutual_info_score`); a
key named as its metric keeps the metric's name alone (`mig`, `factor_r2`).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from untwine.study.orchestrate import read_study
from untwine.study.runs import error_of, run_state, summary_of
from untwine.study.spec import RunPlan, run_dir

TABLE_NAME = "study"
ID_COLUMNS = ("run", "method", "setting", "preset", "dataset", "seed", "stage1")
RUN_COLUMNS = ("status", "error", "steps", "train_seconds", "images_per_second")
SELECTION_COLUMNS = ("recon_eval", "udr", "udr_lasso", "udr_spearman", "udr_active_dims")
# keys a study sets for the engine, not as a hyper-parameter of the runs it compares
NOT_PARAMETERS = ("trainer.seed", "data.name", "trainer.eval_preset", "trainer.threads", "trainer.progress",
                  "run.name", "stage1.run")


def flat_scalars(record: Mapping | None, prefix: str = "") -> dict[str, float]:
    """Every number of a metrics record, by path (lists, text and _meta left out); a metric's own
    key drops its repetition: {"mig": {"mig": 0.3}} -> {"mig": 0.3}."""
    out: dict[str, float] = {}
    for key, value in (record or {}).items():
        key = str(key)
        if key.startswith("_") or key == "step":
            continue
        if isinstance(value, bool):
            continue
        leaf = prefix.rstrip(".").rsplit(".", 1)[-1] if prefix else None
        path = prefix.rstrip(".") if key == leaf else prefix + key
        if isinstance(value, (int, float)):
            out[path] = float(value)
        elif isinstance(value, Mapping):
            out.update(flat_scalars(value, f"{prefix}{key}."))
    return out


def _parameters(plans: list[RunPlan]) -> list[str]:
    keys: dict[str, None] = {}
    for plan in plans:
        for o in plan.overrides:
            key = o.split("=", 1)[0]
            if key not in NOT_PARAMETERS:
                keys[key] = None
    return list(keys)


def _cell(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value)


def study_rows(study_dir: str | os.PathLike, selection: bool = True) -> list[dict]:
    """The table's rows as dicts (see the module's docstring)."""
    from untwine.train.resume import flat
    study_dir = Path(study_dir)
    study = read_study(study_dir)
    params = _parameters(study.runs)
    rows, steps = [], {}
    for plan in study.runs:
        cfg = flat(plan.config(study_dir))
        state = run_state(study_dir, plan)
        summary = summary_of(study_dir, plan.name) if state == "done" else None
        error = error_of(study_dir, plan.name) if state == "failed" else None
        row = {"run": plan.name, "method": plan.method, "setting": plan.setting, "preset": plan.preset,
               "dataset": cfg.get("data.name") if not plan.needs else None, "seed": plan.seed,
               "stage1": plan.needs[0] if plan.needs else None}
        row.update({k: _cell(cfg.get(k)) for k in params})
        row.update(status=state, error=(error or {}).get("error"),
                   steps=(summary or {}).get("steps"), train_seconds=(summary or {}).get("wall_seconds"),
                   images_per_second=(summary or {}).get("images_per_second"))
        if summary is not None:
            metrics = _read_metrics(run_dir(study_dir, plan.name))
            row.update(flat_scalars(metrics))
            steps[plan.name] = int(summary.get("steps", 0))
        rows.append(row)
    if selection and steps:
        from untwine.study.selection import study_selection
        chosen = study_selection(study_dir, study, steps)
        for row in rows:
            row.update(chosen.get(row["run"], {}))
    if plan_stage1 := {p.name: p.needs[0] for p in study.runs if p.needs}:
        by_name = {r["run"]: r for r in rows}
        for name, first in plan_stage1.items():  # a stage-2 run's dataset is its stage 1's
            by_name[name]["dataset"] = by_name.get(first, {}).get("dataset")
    return rows


def _read_metrics(path: Path) -> dict | None:
    try:
        value = json.loads((path / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def study_table(study_dir: str | os.PathLike, selection: bool = True):
    """The tidy table as a pandas DataFrame, columns in a fixed order (ids, parameters, run, UDR,
    metrics sorted by name)."""
    import pandas as pd
    rows = study_rows(study_dir, selection)
    study = read_study(study_dir)
    params = _parameters(study.runs)
    known = [*ID_COLUMNS, *params, *RUN_COLUMNS]
    seen = {k for r in rows for k in r}
    chosen = [c for c in SELECTION_COLUMNS if c in seen]
    metrics = sorted(k for k in seen if k not in known and k not in chosen)
    frame = pd.DataFrame(rows, columns=[*known, *chosen, *metrics])
    for col in params:  # one type per column for Parquet: numbers stay numbers, anything mixed is text
        values = [v for v in frame[col] if v is not None and not (isinstance(v, float) and math.isnan(v))]
        if values and not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            frame[col] = [None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v) for v in frame[col]]
    for col in [*chosen, *metrics, "steps", "train_seconds", "images_per_second"]:
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype(np.float64)
    return frame


def write_table(study_dir: str | os.PathLike, out: str | os.PathLike | None = None,
                selection: bool = True, frame=None) -> tuple[Path, Path]:
    """Write the table as CSV and Parquet (default DIR/study.csv and DIR/study.parquet; `out`: a
    stem or a .csv / .parquet path); returns both paths."""
    from untwine.io import atomic_write
    frame = study_table(study_dir, selection) if frame is None else frame
    stem = Path(out) if out is not None else Path(study_dir) / TABLE_NAME
    if stem.suffix in (".csv", ".parquet"):
        stem = stem.with_suffix("")
    csv_path, parquet_path = stem.with_suffix(".csv"), stem.with_suffix(".parquet")
    atomic_write(csv_path, lambda fh: fh.write(frame.to_csv(index=False).encode()))
    atomic_write(parquet_path, lambda fh: frame.to_parquet(fh, index=False))
    return csv_path, parquet_path


__all__ = ["flat_scalars", "study_rows", "study_table", "write_table"]
