"""The report's own charts, drawn with matplotlib into PNG bytes for embedding.

Figures are built with matplotlib.figure.Figure, not pyplot: no global state, no GUI backend, safe
to call from the training engine.
"""
from __future__ import annotations

import io
import math
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from untwine.report.rundir import RunRecord

DPI = 100
PANEL_HEIGHT = 2.4  # inches per row of panels
MAX_POINTS = 4000
# terms drawn into another term's panel rather than their own (the KL's targets and averages)
OVERLAID = {"set_point": "kl", "kl_avg": "kl"}
NOT_A_TERM = ("step",)


def plain_text(label: str) -> str:
    """A label matplotlib draws literally: a '$' would start mathtext and can raise on a run's name."""
    return str(label).replace("\\", "\\\\").replace("$", r"\$")


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _finite(steps: Sequence[float], values: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """The finite points of a curve, thinned to at most MAX_POINTS (a log_every=1 run of a million
    steps would take the report minutes to draw; the page cannot show more points than pixels)."""
    s, v = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
    keep = np.isfinite(s) & np.isfinite(v)
    s, v = s[keep], v[keep]
    if s.size > MAX_POINTS:
        idx = np.unique(np.r_[np.linspace(0, s.size - 1, MAX_POINTS).astype(int), s.size - 1])
        s, v = s[idx], v[idx]
    return s, v


def _scale_for(ax, values: np.ndarray) -> None:
    """Log axis for positive terms that span two decades or more (the first steps' KL dwarfs the rest,
    a controller's beta falls from 50 to 0.5); a narrow range stays linear, its ticks readable."""
    if values.size and np.all(values > 0) and values.max() / values.min() >= 100:
        ax.set_yscale("log")


def _steps(log: dict[str, np.ndarray]) -> np.ndarray:
    """The step column, or row numbers for a log without one."""
    if "step" in log:
        return log["step"]
    return np.arange(len(next(iter(log.values()))), dtype=float)


def curve_panels(log: dict[str, np.ndarray]) -> list[tuple[str, list[str]]]:
    """(panel title, columns) for every logged term: one panel each, the set point beside the KL."""
    terms = [c for c in log if c not in NOT_A_TERM]
    panels = []
    for term in terms:
        host = OVERLAID.get(term)
        if host is not None and host in log:
            continue
        panels.append((term, [term] + [o for o, h in OVERLAID.items() if h == term and o in log]))
    return panels


def training_curves_png(log: dict[str, np.ndarray]) -> bytes | None:
    """One panel per logged term (loss, recon, KL with its set point, beta, lr, objective terms)."""
    panels = curve_panels(log)
    if not panels:
        return None
    steps = _steps(log)
    cols = 1 if len(panels) == 1 else 2
    rows = math.ceil(len(panels) / cols)
    height = PANEL_HEIGHT * rows + 0.4
    fig = Figure(figsize=(10.0, height))
    # fixed margins: constrained layout would double the drawing time (the engine calls this per run)
    fig.subplots_adjust(left=0.075, right=0.985, top=1 - 0.35 / height, bottom=0.45 / height,
                        hspace=0.45, wspace=0.18)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (title, columns) in zip(axes, panels):
        shown = []
        for i, col in enumerate(columns):
            s, v = _finite(steps, log[col])
            if v.size:
                ax.plot(s, v, lw=1.3 if i == 0 else 1.2, ls="-" if i == 0 else "--",
                        marker="." if v.size < 30 else None, label=plain_text(col))
                shown.append(v)
        if shown:
            _scale_for(ax, np.concatenate(shown))
        ax.set_title(plain_text(title), fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize=8)
        if len(columns) > 1:
            ax.legend(fontsize=8, loc="best")
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    for ax in axes[max(0, len(panels) - cols):len(panels)]:
        ax.set_xlabel("step", fontsize=9)
    return _png(fig)


def score_bars_png(names: list[str], scores: list[dict[str, float]]) -> bytes | None:
    """One small bar chart per metric (scores live on different scales: a total correlation in nats
    beside accuracies in [0, 1]), one bar per run, the runs' colours shared across panels."""
    metrics = sorted({m for s in scores for m in s})
    if not metrics:
        return None
    cols = min(4, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    height = 2.1 * rows + 0.5 + 0.18 * len(names)
    fig = Figure(figsize=(10.0, height))
    fig.subplots_adjust(left=0.06, right=0.99, top=1 - 0.35 / height, bottom=(0.25 + 0.18 * len(names)) / height,
                        hspace=0.55, wspace=0.3)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    colors = [f"C{i % 10}" for i in range(len(names))]
    x = np.arange(len(names))
    for ax, metric in zip(axes, metrics):
        values = [s.get(metric, np.nan) for s in scores]
        ax.bar(x, values, 0.7, color=colors)
        ax.set_title(plain_text(metric), fontsize=9)
        ax.set_xticks([])
        ax.axhline(0, color="grey", lw=0.8)
        ax.grid(True, axis="y", alpha=0.3)
        ax.tick_params(labelsize=8)
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    handles = [Patch(color=c, label=plain_text(n)) for c, n in zip(colors, names)]
    fig.legend(handles=handles, loc="lower center", ncols=min(len(names), 4), fontsize=8, frameon=False)
    return _png(fig)


def compare_curves_png(runs: list[RunRecord], terms: Sequence[str] = ("recon", "kl")) -> bytes | None:
    """Each term of every run overlaid, one panel per term."""
    present = [t for t in terms if any(t in r.log for r in runs)]
    if not present:
        return None
    fig = Figure(figsize=(10.0, 3.4))
    fig.subplots_adjust(left=0.075, right=0.985, top=0.9, bottom=0.15, wspace=0.22)
    axes = fig.subplots(1, len(present), squeeze=False)[0]
    for ax, term in zip(axes, present):
        shown = []
        for run in runs:
            if term in run.log:
                s, v = _finite(_steps(run.log), run.log[term])
                label = f"{run.name} (KL of w)" if term == "kl" and run.is_multistage else run.name
                ax.plot(s, v, lw=1.3, label=plain_text(label))
                shown.append(v)
        _scale_for(ax, np.concatenate(shown))
        ax.set_title(f"{term} (all runs)", fontsize=10)
        ax.set_xlabel("step", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize=8)
        ax.legend(fontsize=8, loc="best")
    return _png(fig)
