"""The run's logs: a CSV of every logged term (RUN/logs/train.csv), TensorBoard event files
(RUN/logs/tensorboard/), and evaluations as JSON Lines (RUN/metrics.jsonl).

Rows are appended and flushed as they come, so a crash loses at most the row being written; on
resume, rows (and evaluation lines) past the checkpoint's step are dropped, atomically, so that the
curves of a resumed run are those of an uninterrupted one.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

from untwine.io import atomic_write_bytes

CSV_NAME = "train.csv"
METRICS_JSONL = "metrics.jsonl"


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # 'nan', 'inf': pandas reads them back
    return value


class CSVLog:
    """Append-only CSV with a fixed header taken from the first row (later new keys are dropped)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.fields: list[str] | None = None
        self._fh = None
        self._writer = None
        if self.path.is_file() and self.path.stat().st_size:
            with open(self.path, newline="") as fh:
                header = next(csv.reader(fh), None)
            self.fields = header or None

    def truncate_after(self, step: int) -> None:
        """Drop rows whose step is beyond `step` (resuming from a checkpoint at `step`)."""
        if not self.path.is_file():
            return
        with open(self.path, newline="") as fh:
            rows = list(csv.reader(fh))
        if not rows:
            return
        header, body = rows[0], rows[1:]
        col = header.index("step") if "step" in header else None
        kept = [r for r in body if col is None or (r and r[col] and float(r[col]) <= step)]
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(header)
        w.writerows(kept)
        atomic_write_bytes(self.path, buf.getvalue().encode())

    def write(self, row: Mapping[str, Any]) -> None:
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            new = self.fields is None
            if new:
                self.fields = list(row)
            self._fh = open(self.path, "a", newline="")
            self._writer = csv.DictWriter(self._fh, fieldnames=self.fields, extrasaction="ignore",
                                          lineterminator="\n")
            if new:
                self._writer.writeheader()
        self._writer.writerow({k: _cell(row.get(k)) for k in self.fields})
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None


def append_jsonl(path: str | os.PathLike, record: Mapping[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(json.dumps(record, allow_nan=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def truncate_jsonl_after(path: str | os.PathLike, step: int) -> None:
    """Keep the lines whose "step" is at most `step` (drops a torn last line too)."""
    path = Path(path)
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and int(rec.get("step", 0)) <= step:
            kept.append(line)
    atomic_write_bytes(path, ("\n".join(kept) + "\n" if kept else "").encode())


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(Path(path), (json.dumps(obj, indent=1, allow_nan=True) + "\n").encode())
