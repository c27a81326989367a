"""Small helpers shared by the benchmark scripts: machine description, median timing, tables.

Benchmarks run as scripts (`.venv/bin/python benchmarks/<name>.py`), so `benchmarks/` is on
sys.path and they import this module as `import common` (or `from common import ...`).
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Callable, Iterable, Sequence, TypeVar

T = TypeVar("T")


def machine() -> str:
    """One line naming the machine: CPU model, cores, memory, Python, torch threads."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:  # not Linux: keep platform's answer
        pass
    mem = ""
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        mem = f", {pages * page_size / 2**30:.0f} GiB"
    except (ValueError, OSError, AttributeError):
        pass
    threads = ""
    try:
        import torch
        threads = f", torch {torch.__version__} threads {torch.get_num_threads()}"
    except ImportError:
        pass
    return f"{cpu}, {os.cpu_count()} cores{mem}, Python {platform.python_version()}{threads}"


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    """Run fn once; return (result, seconds)."""
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def median_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall seconds of `repeats` calls of fn after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def fmt(x: object, digits: int = 3) -> str:
    """Numbers to short strings for tables; everything else via str()."""
    if isinstance(x, bool) or x is None:
        return str(x)
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if x != x:  # NaN
            return "nan"
        if abs(x) >= 1000:
            return f"{x:,.0f}"
        return f"{x:.{digits}f}"
    return str(x)


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Print a table with rich and return it as GitHub markdown (for BENCHMARKS.md)."""
    rows = [[fmt(c) for c in r] for r in rows]
    try:
        from rich.console import Console
        from rich.table import Table
        table = Table(title=title)
        for c in columns:
            table.add_column(c)
        for r in rows:
            table.add_row(*r)
        Console().print(table)
    except ImportError:  # the disent venv has no rich: plain text
        print(title)
        print(" | ".join(columns))
        for r in rows:
            print(" | ".join(r))
    md = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(md)


def train_once(preset: str, overrides: list[str], run_dir) -> dict:
    """Train `preset` with `overrides` into run_dir through untwine.train.train, or return the
    summary of a run finished there earlier; an unfinished run is started again."""
    import json
    import shutil
    from pathlib import Path

    from untwine.train import load_config, train
    run_dir = Path(run_dir)
    summary = run_dir / "summary.json"
    if summary.is_file():
        return json.loads(summary.read_text())
    if run_dir.exists():
        shutil.rmtree(run_dir)
    print(f"train {preset} {' '.join(overrides[-1:])} -> {run_dir}", flush=True)
    return train(load_config(preset, overrides), run_dir=run_dir)
