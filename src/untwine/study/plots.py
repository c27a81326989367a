"""The study report's charts (matplotlib Figures, no pyplot state), as PNG bytes.

    distributions_png(frame, metrics)        one panel per metric: a box per setting, each seed a dot
    tradeoff_png(frame, recon, metrics)      reconstruction against each disentanglement score, a run a dot
    correlation_png(matrix, names)           Spearman rank correlation between metrics over the runs
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from untwine.report.plots import _png, plain_text

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def method_colours(methods: Sequence[str]) -> dict[str, str]:
    return {m: f"C{i % 10}" for i, m in enumerate(dict.fromkeys(methods))}


def distributions_png(frame, metrics: Sequence[str], labels: dict[str, str] | None = None) -> bytes | None:
    """Per metric, the distribution over seeds of each setting (Locatello et al.'s box plots): a box
    per setting, coloured by method, every run drawn on it as a dot."""
    metrics = [m for m in metrics if m in frame and frame[m].notna().any()]
    if not metrics:
        return None
    settings = list(dict.fromkeys(frame["setting"]))
    method_of = dict(zip(frame["setting"], frame["method"]))
    colours = method_colours(frame["method"])
    cols = 2 if len(metrics) > 1 else 1
    rows = math.ceil(len(metrics) / cols)
    width_per = max(5.0, 0.45 * len(settings) + 1.5)
    height = 3.1 * rows + 0.6
    fig = Figure(figsize=(min(18.0, width_per * cols), height))
    fig.subplots_adjust(left=0.06, right=0.99, top=1 - 0.3 / height, bottom=0.05 + 1.1 / height,
                        hspace=0.9, wspace=0.18)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    rng = np.random.default_rng(0)
    for ax, metric in zip(axes, metrics):
        data = [frame.loc[frame["setting"] == s, metric].dropna().to_numpy(float) for s in settings]
        pos = [i for i, d in enumerate(data) if d.size]
        if pos:
            parts = ax.boxplot([data[i] for i in pos], positions=pos, widths=0.55, patch_artist=True,
                               showfliers=False, medianprops={"color": "black"})
            for box, i in zip(parts["boxes"], pos):
                box.set_facecolor(colours[method_of[settings[i]]])
                box.set_alpha(0.35)
        for i, d in enumerate(data):
            ax.scatter(i + rng.uniform(-0.12, 0.12, d.size), d, s=14, color=colours[method_of[settings[i]]],
                       zorder=3, edgecolors="black", linewidths=0.3)
        ax.set_title(plain_text((labels or {}).get(metric, metric)), fontsize=10)
        ax.set_xticks(range(len(settings)))
        ax.set_xticklabels([plain_text(s) for s in settings], rotation=40, ha="right", fontsize=7)
        ax.grid(True, axis="y", alpha=0.3)
        ax.tick_params(axis="y", labelsize=8)
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    return _png(fig)


def tradeoff_png(frame, recon: str, metrics: Sequence[str], labels: dict[str, str] | None = None) -> bytes | None:
    """Reconstruction error (x, lower is better) against each disentanglement score (y), every run a
    point: colour = method, marker = the method's hyper-parameter setting."""
    metrics = [m for m in metrics if m in frame and frame[m].notna().any()]
    if recon not in frame or not frame[recon].notna().any() or not metrics:
        return None
    colours = method_colours(frame["method"])
    marker_of = {}
    for method in dict.fromkeys(frame["method"]):
        for i, s in enumerate(dict.fromkeys(frame.loc[frame["method"] == method, "setting"])):
            marker_of[s] = MARKERS[i % len(MARKERS)]
    cols = min(3, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    height = 3.2 * rows + 0.9
    fig = Figure(figsize=(5.0 * cols, height))
    fig.subplots_adjust(left=0.07, right=0.99, top=1 - 0.3 / height, bottom=0.9 / height + 0.04, hspace=0.5,
                        wspace=0.25)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, metric in zip(axes, metrics):
        for setting, part in frame.groupby("setting", sort=False):
            ax.scatter(part[recon], part[metric], s=26, marker=marker_of[setting],
                       color=colours[part["method"].iloc[0]], edgecolors="black", linewidths=0.3)
        ax.set_xlabel(plain_text((labels or {}).get(recon, recon)), fontsize=8)
        ax.set_ylabel(plain_text((labels or {}).get(metric, metric)), fontsize=8)
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize=8)
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    handles = [Line2D([], [], color=c, marker="o", ls="", label=plain_text(m)) for m, c in colours.items()]
    most = max(Counter(frame.drop_duplicates("setting")["method"]).values())
    if most > 1:
        handles += [Line2D([], [], color="grey", marker=MARKERS[i], ls="", label=f"setting {i + 1} of its method")
                    for i in range(min(most, len(MARKERS)))]
    fig.legend(handles=handles, loc="lower center", ncols=min(len(handles), 6), fontsize=8, frameon=False)
    return _png(fig)


def correlation_png(matrix: np.ndarray, names: Sequence[str]) -> bytes | None:
    """A heat map of a (symmetric) rank correlation matrix, every cell written."""
    n = len(names)
    if n < 2:
        return None
    size = max(5.0, 0.55 * n + 2.5)
    fig = Figure(figsize=(size + 1.5, size))
    fig.subplots_adjust(left=0.18, right=0.92, top=0.97, bottom=0.2)
    ax = fig.subplots()
    im = ax.imshow(matrix, vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels([plain_text(s) for s in names], rotation=50, ha="right", fontsize=8)
    ax.set_yticklabels([plain_text(s) for s in names], fontsize=8)
    for i in range(n):
        for j in range(n):
            v = matrix[i, j]
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if abs(v) > 0.6 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    return _png(fig)


__all__ = ["correlation_png", "distributions_png", "tradeoff_png"]
