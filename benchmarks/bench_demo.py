"""The README's main command, timed: `untwine demo` as a user runs it, stage by stage.

    .venv/bin/python benchmarks/bench_demo.py                  # one demo into a temporary directory
    .venv/bin/python benchmarks/bench_demo.py --keep runs/demo-timed

Prints one row per stage (steps, training seconds, images/s, precision, CPU threads, the headline
score) and the demo's whole wall time, measured around the subprocess (imports, data, both
trainings, evaluation, pictures and the reports). Run it on an otherwise idle machine: the demo
picks its CPU threads from the cores that other processes leave free (trainer.threads=auto).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, print_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keep", help="the demo's directory (default: a temporary one, removed after)")
    args = ap.parse_args()
    untwine = Path(sys.executable).with_name("untwine")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep) if args.keep else Path(tmp) / "demo"
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        t0 = time.perf_counter()
        subprocess.run([str(untwine), "demo", "--run-dir", str(root)], check=True, cwd=ROOT,
                       stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        rows = []
        for stage in ("stage1", "stage2"):
            s = json.loads((root / stage / "summary.json").read_text())
            metrics = s.get("metrics") or {}
            score = (f"MIG {metrics['mig']['mig']:.3f}" if stage == "stage1" else
                     f"BCE ratio {metrics['multistage']['summary']['bce_ratio']:.3f}")
            rows.append([stage, s["steps"], f"{s['wall_seconds']:.0f}", f"{s['images_per_second']:.0f}",
                         s.get("precision"), s.get("cpu_threads"), score])
    print(machine(), f"load average before {load:.1f}")
    print_table("untwine demo", ["stage", "steps", "train s", "images/s", "precision", "CPU threads", "score"], rows)
    print(f"untwine demo: {wall:.0f} s wall ({wall / 60:.1f} min)")


if __name__ == "__main__":
    main()
