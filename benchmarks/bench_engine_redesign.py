"""The engine before and after its redesign (issue 23), same command, interleaved in one run.

    .venv/bin/python benchmarks/bench_engine_redesign.py                 # 5 rounds, before = a4d32e0
    .venv/bin/python benchmarks/bench_engine_redesign.py --rounds 3 --before <rev>

Each round trains `dsprites-betavae` (conv64, batch 64) for 300 steps with `untwine.train.train`, once
from a checkout of the commit before the redesign (a git worktree in a temporary folder) and once from
this checkout, in fp32 and in bf16 autocast, one torch thread each, and reads the run's own images/s
(training steps only, after the engine's warm-up). The ratio of a round is now / before; the table
gives median images/s and the median ratio, so a loaded machine moves both sides alike.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ONE_RUN = """
import json, sys, tempfile, torch
torch.set_num_threads(1)
from untwine.train import load_config, train
cfg = load_config("dsprites-betavae", ["trainer.steps=%(steps)d", "trainer.eval_preset=none", "trainer.pictures=false",
                                       "trainer.report=false", "trainer.progress=false", "trainer.precision=" + sys.argv[1],
                                       "trainer.threads=1", "trainer.log_every=100", "trainer.ckpt_every=100000"])
with tempfile.TemporaryDirectory() as d:
    print(json.dumps(train(cfg, run_dir=d + "/run")["images_per_second"]))
"""


def one_run(src: Path, precision: str, steps: int) -> float:
    env = dict(os.environ, PYTHONPATH=str(src))
    out = subprocess.run([sys.executable, "-c", ONE_RUN % {"steps": steps}, precision], env=env, check=True,
                         capture_output=True, text=True, cwd=tempfile.gettempdir())
    return float(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default="a4d32e0", help="the commit before the redesign")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        before = Path(tmp) / "before"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(before), args.before], check=True)
        try:
            rates = {(side, p): [] for side in ("before", "now") for p in ("32-true", "bf16-mixed")}
            for r in range(args.rounds):
                for side, src in (("before", before / "src"), ("now", ROOT / "src")):
                    for precision in ("32-true", "bf16-mixed"):
                        rates[side, precision].append(one_run(src, precision, args.steps))
                        print(f"round {r + 1}: {side} {precision} {rates[side, precision][-1]:.0f} images/s", flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(before)], check=False)
    print(f"\n| precision | rounds | before ({args.before}) images/s | now images/s | now / before (range) |")
    print("|---|---|---|---|---|")
    for precision in ("32-true", "bf16-mixed"):
        old, new = rates["before", precision], rates["now", precision]
        ratios = [n / o for n, o in zip(new, old)]
        print(f"| {precision} | {len(old)} | {statistics.median(old):.0f} | {statistics.median(new):.0f} | "
              f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
