"""Read what a run directory holds, for the report, without torch and without failing on gaps.

Only a missing directory or a missing config.yaml is an error (the path is not a run directory);
a missing or unreadable summary, metrics file, log or picture becomes a line in `problems`, so that
the page says what is missing instead of the report crashing on a half-finished run.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from untwine.errors import CheckpointError

HISTORY = "config.history.yaml"  # written by untwine.train.resume (not imported: the report reads files only)
PICTURE_TYPES = {".png": "image/png", ".gif": "image/gif", ".svg": "image/svg+xml", ".jpg": "image/jpeg",
                 ".jpeg": "image/jpeg", ".webp": "image/webp"}
# the engine's pictures first, in reading order; any others follow by name
PICTURE_ORDER = ("reconstructions", "side_by_side", "traversals", "curves", "beta_kl")


@dataclass
class RunRecord:
    path: Path
    name: str
    config_text: str
    config: dict
    summary: dict | None = None
    metrics: dict | None = None                        # metrics.json: the final evaluation
    evaluations: list[dict] = field(default_factory=list)  # metrics.jsonl: periodic evaluations
    log: dict[str, np.ndarray] = field(default_factory=dict)  # train.csv: column -> values (nan = empty)
    pictures: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    history_text: str | None = None   # config.history.yaml: each resume's changes and the step they start at

    def section(self, key: str) -> dict:
        value = self.config.get(key)
        return value if isinstance(value, dict) else {}

    @property
    def objective(self) -> str:
        return str(self.section("objective").get("name", "?"))

    @property
    def controller(self) -> str:
        return str(self.section("controller").get("name", "none"))

    @property
    def label(self) -> str | None:
        """config run.name (the preset or file the run came from), when set."""
        value = self.section("run").get("name")
        return str(value) if value else None

    @property
    def is_multistage(self) -> bool:
        """A stage-2 run: a stage 2 trained on a frozen stage-1 run (its "kl" term is the KL of w)."""
        return self.objective == "multistage" or bool(self.section("stage1").get("run"))

    @property
    def is_table(self) -> bool:
        """A tabular model's stage-1 run: its batches are rows, not images."""
        return self.section("data").get("name") == "table"

    @property
    def steps(self) -> int | None:
        for source in ((self.summary or {}).get("steps"), (self.metrics or {}).get("step")):
            if isinstance(source, (int, float)):
                return int(source)
        steps = self._finite("step")
        return int(steps[-1]) if steps.size else None

    def _finite(self, column: str) -> np.ndarray:
        values = self.log.get(column)
        return values[np.isfinite(values)] if values is not None else np.zeros(0)

    def final_term(self, name: str) -> float | None:
        """The last logged value of a training term (the CSV), else the summary's final terms."""
        values = self._finite(name)
        if values.size:
            return float(values[-1])
        value = ((self.summary or {}).get("final_terms") or {}).get(name)
        return float(value) if isinstance(value, (int, float)) else None


def _read_json(path: Path, problems: list[str]) -> Any:
    if not path.is_file():
        problems.append(f"{path.name} is missing")
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        problems.append(f"{path.name} could not be read ({e})")
        return None


def _read_jsonl(path: Path, problems: list[str]) -> list[dict]:
    if not path.is_file():
        return []  # periodic evaluation is optional (trainer.eval_every=0)
    records, torn = [], 0
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            torn += 1
            continue
        if isinstance(rec, dict):
            records.append(rec)
    if torn:
        problems.append(f"{path.name}: {torn} unreadable line(s) skipped")
    return records


def read_csv_log(path: Path, problems: list[str]) -> dict[str, np.ndarray]:
    """Every column of the training CSV as floats; empty or non-numeric cells are nan."""
    import pandas as pd  # parses a long log 10x faster than the csv module

    if not path.is_file():
        problems.append(f"logs/{path.name} is missing: no training curves")
        return {}
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        frame = pd.DataFrame()
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as e:
        problems.append(f"logs/{path.name} could not be read ({e})")
        return {}
    if frame.empty:
        problems.append(f"logs/{path.name} has no logged rows yet")
        return {}
    columns = {str(c).strip(): pd.to_numeric(frame[c], errors="coerce").to_numpy(dtype=float) for c in frame.columns}
    # a column never logged (set_point without a controller) draws nothing
    return {k: v for k, v in columns.items() if np.isfinite(v).any()}


def _picture_key(path: Path) -> tuple:
    stem = path.stem
    rank = PICTURE_ORDER.index(stem) if stem in PICTURE_ORDER else len(PICTURE_ORDER)
    return rank, stem, path.suffix != ".png", path.name


def list_pictures(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    found = [p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in PICTURE_TYPES]
    return sorted(found, key=_picture_key)


def read_run(run_dir: str | os.PathLike) -> RunRecord:
    """Everything the report shows of one run directory."""
    path = Path(run_dir)
    if not path.is_dir():
        raise CheckpointError(f"{str(path)!r} is not a run directory (it does not exist or is not a folder); "
                              f"give the directory a training run wrote (it holds config.yaml)")
    config_path = path / "config.yaml"
    if not config_path.is_file():
        raise CheckpointError(f"{str(config_path)!r} is missing: {str(path)!r} is not a run directory "
                              f"(a training run writes config.yaml, logs/ and pictures/ there)")
    problems: list[str] = []
    config_text = config_path.read_text(errors="replace")
    try:
        config = yaml.safe_load(config_text)
    except yaml.YAMLError as e:
        problems.append(f"config.yaml is not valid YAML ({e})")
        config = None
    config = config if isinstance(config, dict) else {}
    # the directory names the run: run.name is the preset's name, shared by every seed of it
    name = path.resolve().name or str(path)

    summary = _read_json(path / "summary.json", problems)
    metrics = _read_json(path / "metrics.json", problems)
    if metrics is not None and not isinstance(metrics, dict):
        problems.append("metrics.json does not hold an object of metric results")
        metrics = None
    return RunRecord(path=path, name=name, config_text=config_text, config=config,
                     summary=summary if isinstance(summary, dict) else None, metrics=metrics,
                     evaluations=_read_jsonl(path / "metrics.jsonl", problems),
                     log=read_csv_log(path / "logs" / "train.csv", problems),
                     pictures=list_pictures(path / "pictures"), problems=problems,
                     history_text=(path / HISTORY).read_text(errors="replace") if (path / HISTORY).is_file() else None)
