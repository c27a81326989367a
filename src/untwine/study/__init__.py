"""Studies: many runs from one spec, on this machine or a Ray cluster, in one tidy table and one
report, with unsupervised model selection (UDR).

    from untwine.study import load_study, run_study, study_table, write_study_report
    run_study("studies/cpu-small.yaml", "studies/out/cpu-small")            # local pool
    run_study(spec, out, executor="ray", address="ray://head:10001")        # a Ray cluster
    frame = study_table("studies/out/cpu-small")                            # pandas, one row per run
    write_study_report("studies/out/cpu-small")                             # DIR/study.html

Command line: `untwine study run SPEC --out DIR`, `untwine study table DIR`, `untwine study report DIR`.
"""
from __future__ import annotations

import importlib

_WHERE = {"load_study": "spec", "Study": "spec", "RunPlan": "spec", "run_study": "orchestrate",
          "read_study": "orchestrate", "study_table": "table", "write_table": "table",
          "write_study_report": "report", "study_selection": "selection", "execute_run": "runs",
          "LocalPool": "executors", "RayExecutor": "executors"}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"untwine.study.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'untwine.study' has no attribute {name!r}")
