"""Sampler throughput: images/s into float32 tensors, untwine's sampler vs the per-item DataLoader pattern.

    .venv/bin/python benchmarks/bench_data_throughput.py [--repeats 5] [--seconds 0.5] [--datasets dsprites shapes3d]

For each procedural dataset (from the registry) and batch size 64 and 256:
- untwine: `ObservationSampler(data, batch_size)` -> (x float32 (B, C, H, W), classes), one gather per batch.
- per-item: the common pattern, a torch `DataLoader` (num_workers=0, random sampling with replacement)
  over a `Dataset` whose `__getitem__` returns one image tensor (and its classes) at a time, on the
  same data object, collated by the default collate.
Each figure is the median over repeats of (images drawn / seconds), per wall-clock second and per CPU
second of the process (the machine is shared: wall-clock rates fall with the load, CPU-time rates
show what one core does); ratios are taken in the same run.
Targets (issue 2): dSprites >= 100,000 images/s, Shapes3D >= 20,000 images/s, >= 10x the per-item pattern.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from untwine.data.base import GroundTruthData
from untwine.data.samplers import ObservationSampler

TARGETS = {"dsprites": 100_000, "shapes3d": 20_000}


def get_data(name: str) -> GroundTruthData:
    from untwine.data.registry import get_dataset
    return get_dataset(name)


class PerItemDataset(torch.utils.data.Dataset):
    """The usual pattern: one observation per __getitem__."""

    def __init__(self, data: GroundTruthData):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        img = self.data.images(np.array([i]))[0]                      # (H, W, C) uint8
        x = torch.from_numpy(img).permute(2, 0, 1).float().div(255.0)
        classes = torch.from_numpy(self.data.factor_space.classes_of(np.array([i]))[0])
        return x, classes


def rate(draw, batch_size: int, seconds: float, repeats: int) -> tuple[float, float]:
    """Median images/s over repeats, per wall-clock second and per CPU second of this process.

    Each repeat draws batches for about `seconds`. On a shared machine the wall-clock rate falls with
    the load (other processes take the cores); the CPU-time rate (one torch thread, so one core) is
    what the code does on a core of its own.
    """
    draw()  # warm up (first-use rendering, caches, allocator)
    t0 = time.perf_counter()
    draw()
    per_batch = max(time.perf_counter() - t0, 1e-6)
    n = max(2, int(seconds / per_batch))
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(n):
            draw()
        wall.append(n * batch_size / (time.perf_counter() - t0))
        cpu.append(n * batch_size / max(time.process_time() - c0, 1e-9))
    return statistics.median(wall), statistics.median(cpu)


def bench(name: str, batch_size: int, seconds: float, repeats: int) -> dict:
    data = get_data(name)
    sampler = ObservationSampler(data, batch_size=batch_size, seed=0)
    ours = rate(lambda: next(sampler), batch_size, seconds, repeats)

    gen = torch.Generator().manual_seed(0)
    loader = torch.utils.data.DataLoader(
        PerItemDataset(data), batch_size=batch_size, num_workers=0,
        sampler=torch.utils.data.RandomSampler(range(len(data)), replacement=True, num_samples=1 << 30,
                                               generator=gen))
    it = iter(loader)
    theirs = rate(lambda: next(it), batch_size, seconds, repeats)
    return {"dataset": name, "data": repr(data), "batch": batch_size,
            "ours": ours[0], "per_item": theirs[0], "ratio": ours[0] / theirs[0],
            "ours_cpu": ours[1], "per_item_cpu": theirs[1], "ratio_cpu": ours[1] / theirs[1]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=0.5, help="time per repeat and method")
    ap.add_argument("--datasets", nargs="+", default=["dsprites", "shapes3d"])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 on the shared 2-core machine)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    console = Console(width=160)
    rows = [bench(name, b, args.seconds, args.repeats) for name in args.datasets for b in (64, 256)]

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    table = Table(title=f"Sampler throughput, images/s into float32 (median of {args.repeats}; torch threads "
                        f"{args.threads}; {os.cpu_count()} CPUs, load average {load:.1f}; torch {torch.__version__})")
    for col in ("dataset", "batch", "untwine (wall)", "per-item (wall)", "ratio (wall)",
                "untwine (CPU)", "per-item (CPU)", "ratio (CPU)", "target", "met (wall / CPU)"):
        table.add_column(col, justify="left" if col == "dataset" else "right")
    for r in rows:
        target = TARGETS.get(r["dataset"], 0)
        met = ["yes" if ours >= target and ratio >= 10 else "NO"
               for ours, ratio in ((r["ours"], r["ratio"]), (r["ours_cpu"], r["ratio_cpu"]))]
        table.add_row(r["dataset"], str(r["batch"]), f"{r['ours']:,.0f}", f"{r['per_item']:,.0f}",
                      f"{r['ratio']:.1f}x", f"{r['ours_cpu']:,.0f}", f"{r['per_item_cpu']:,.0f}",
                      f"{r['ratio_cpu']:.1f}x", f">= {target:,}, >= 10x", " / ".join(met))
    console.print(table)
    for name in args.datasets:
        console.print(f"{name}: {next(r['data'] for r in rows if r['dataset'] == name)}")


if __name__ == "__main__":
    main()
