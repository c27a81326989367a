"""The HTML report of one run or of several side by side (DESIGN section 10).

Names load on first use: `untwine.report.console` (the end-of-run tables) imports no matplotlib."""
from __future__ import annotations

import importlib

_WHERE = {"render_report": "page", "write_report": "page", "RunRecord": "rundir", "read_run": "rundir",
          "metric_scores": "scores"}

__all__ = ["RunRecord", "metric_scores", "read_run", "render_report", "write_report"]


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"untwine.report.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'untwine.report' has no attribute {name!r}")
