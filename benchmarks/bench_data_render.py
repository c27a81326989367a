"""Rendering and caching the procedural datasets: full dSprites, Shapes3D per image and in full.

    .venv/bin/python benchmarks/bench_data_render.py [--repeats 3] [--no-shapes3d-cache]

Measures, in one run:
- dSprites: rendering the 720 sprites, composing all 737,280 packed images in memory, and the full
  cached build (write + checksums) into a temporary cache directory: time, peak numpy memory
  (tracemalloc), size on disk, and re-opening (checksum verification) time.
- Shapes3D: building the layers, then us per image in batches (64, 256, 4096) and the full render
  in chunks (extrapolated from 48,000 images); the full cached build of 480,000 images (5.9 GB, in a temp dir removed afterwards).
- Ratios in the same run: each against its target from the issue (dSprites full < 10 s, Shapes3D
  full cache < 60 s or ~20 us an image on demand), and the datasets' own `batch()` (packed/layers ->
  float) against the generic GroundTruthData.batch path (uint8 images -> float) on the same indices.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch

from common import machine, median_time, print_table

from untwine.data import cache
from untwine.data.base import GroundTruthData
from untwine.data.dsprites import DSprites, render_sprites
from untwine.data.shapes3d import Shapes3D


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


def peak_numpy_mb(fn) -> tuple[object, float, float]:
    """(result, seconds, peak MB traced) of fn()."""
    tracemalloc.start()
    t0 = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return out, dt, peak


def generic_batch(ds, idx):
    """The base-class path: uint8 images -> float tensor."""
    return GroundTruthData.batch(ds, idx)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-shapes3d-cache", action="store_true", help="skip the 5.9 GB full Shapes3D build")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(machine(), f"load average {os.getloadavg()[0]:.1f}")
    rng = np.random.default_rng(0)
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="untwine-bench-"))
    try:
        # -- dSprites ---------------------------------------------------------------
        t_sprites = median_time(render_sprites, repeats=args.repeats, warmup=0)
        rows.append(["dSprites: 720 sprites", f"{t_sprites:.3f} s", "", ""])
        ds = DSprites()

        def compose_all():
            return sum(c.nbytes for c in ds._packed_chunks())

        t_compose = median_time(compose_all, repeats=args.repeats, warmup=0)
        rows.append(["dSprites: compose all 737,280 (packed, in memory)", f"{t_compose:.2f} s",
                     f"{10.0 / (t_sprites + t_compose):.1f}x faster than the 10 s target", ""])
        cache._VERIFIED.clear()
        _, t_build, peak = peak_numpy_mb(lambda: DSprites(cached=True, cache_dir=tmp / "ds", progress=False))
        size = dir_size(tmp / "ds")
        rows.append(["dSprites: full cached build (render+write+checksum)", f"{t_build:.2f} s",
                     f"{10.0 / t_build:.1f}x faster than the 10 s target",
                     f"peak {peak:.0f} MB numpy, {size / 2**20:.0f} MiB on disk"])
        cache._VERIFIED.clear()  # as a new process: verify the checksums once
        cached, t_open, _ = peak_numpy_mb(lambda: DSprites(cached=True, cache_dir=tmp / "ds", progress=False))
        rows.append(["dSprites: open cache in a new process (verify)", f"{t_open:.2f} s", "", ""])
        for bs in (64, 256):
            idx = rng.integers(0, len(ds), bs)
            t_lazy = median_time(lambda: ds.batch(idx), repeats=50 * args.repeats)
            t_cached = median_time(lambda: cached.batch(idx), repeats=50 * args.repeats)
            t_generic = median_time(lambda: generic_batch(ds, idx), repeats=50 * args.repeats)
            rows.append([f"dSprites batch({bs}) on demand", f"{t_lazy / bs * 1e6:.2f} us/img",
                         f"{t_generic / t_lazy:.1f}x the generic images->float path",
                         f"{bs / t_lazy:,.0f} img/s; from cache {bs / t_cached:,.0f} img/s"])
        del cached
        shutil.rmtree(tmp / "ds")

        # -- Shapes3D ---------------------------------------------------------------
        s3, t_layers, peak = peak_numpy_mb(Shapes3D)
        rows.append(["Shapes3D: build layers (ray cast 480 geometries)", f"{t_layers:.2f} s", "",
                     f"peak {peak:.0f} MB numpy"])
        for bs in (64, 256, 4096):
            idx = rng.integers(0, len(s3), bs)
            t_u8 = median_time(lambda: s3.images(idx), repeats=max(3, 20 * args.repeats * 64 // bs))
            t_batch = median_time(lambda: s3.batch(idx), repeats=max(3, 20 * args.repeats * 64 // bs))
            t_generic = median_time(lambda: generic_batch(s3, idx), repeats=max(3, 20 * args.repeats * 64 // bs))
            rows.append([f"Shapes3D images({bs}) uint8 / batch({bs}) float", f"{t_u8 / bs * 1e6:.1f} us/img",
                         f"{20e-6 / (t_u8 / bs):.1f}x the 20 us target; batch {t_generic / t_batch:.1f}x generic",
                         f"batch {bs / t_batch:,.0f} img/s"])
        # The full render streams chunks of 4,800 through one reused buffer (as the cache build does).
        def ten_chunks():
            chunks = s3._image_chunks()
            for _ in range(10):
                next(chunks)

        t_chunks = median_time(ten_chunks, repeats=args.repeats, warmup=0)
        full = t_chunks / 48000 * len(s3)
        rows.append(["Shapes3D: render all 480,000 in chunks (extrapolated from 48,000)", f"{full:.1f} s",
                     f"{60.0 / full:.1f}x faster than the 60 s target", f"{t_chunks / 48000 * 1e6:.1f} us/img"])
        if not args.no_shapes3d_cache:
            free = shutil.disk_usage(tmp).free
            if free < 8 * 2**30:
                print(f"skipping the full Shapes3D cache: only {free / 2**30:.1f} GiB free", file=sys.stderr)
            else:
                cache._VERIFIED.clear()
                _, t_build, peak = peak_numpy_mb(
                    lambda: Shapes3D(cached=True, cache_dir=tmp / "s3", progress=False))
                size = dir_size(tmp / "s3")
                rows.append(["Shapes3D: full cached build (render+write+checksum)", f"{t_build:.1f} s",
                             f"{60.0 / t_build:.1f}x faster than the 60 s target",
                             f"peak {peak:.0f} MB numpy, {size / 2**30:.2f} GiB on disk"])
                cache._VERIFIED.clear()
                s3c, t_open, _ = peak_numpy_mb(lambda: Shapes3D(cached=True, cache_dir=tmp / "s3", progress=False))
                rows.append(["Shapes3D: open cache in a new process (verify)", f"{t_open:.1f} s", "", ""])
                idx = rng.integers(0, len(s3), 256)
                t_c = median_time(lambda: s3c.batch(idx), repeats=20 * args.repeats)
                t_r = median_time(lambda: s3.batch(idx), repeats=20 * args.repeats)
                rows.append(["Shapes3D batch(256) from the cache (page-cached)", f"{t_c / 256 * 1e6:.1f} us/img",
                             f"{t_r / t_c:.1f}x the on-demand time", ""])
                del s3c
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    md = print_table("Procedural rendering and cache", ["what", "time", "ratio", "notes"], rows)
    print()
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
