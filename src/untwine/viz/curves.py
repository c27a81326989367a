"""Training curves from the engine's CSV log: loss and reconstruction, KL against the set point,
beta on a log axis.

The CSV has a `step` column plus one column per logged term. Loggers that prefix names
("train/kl") or leave cells empty on rows where a term was not logged are fine: names are
matched on their last path component and each curve drops its own empty cells. Panels whose
columns are absent are left out.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from untwine.errors import DataError
from untwine.io import atomic_write

#: accepted column names per quantity, first match wins (lower case, after the last "/")
ALIASES: dict[str, tuple[str, ...]] = {
    "loss": ("loss", "total_loss", "elbo_loss"),
    "recon": ("recon", "recon_loss", "reconstruction"),
    "kl": ("kl", "kl_loss"),
    "kl_avg": ("kl_avg", "kl_bar", "klbar", "kl_mean", "kl_moving_average"),
    "set_point": ("set_point", "setpoint", "kl_set_point", "kl_target", "target_kl", "c"),
    "beta": ("beta", "kl_weight"),
}


def read_log(csv_path: str | os.PathLike) -> pd.DataFrame:
    """The log as a frame with canonical column names (see ALIASES) and a `step` column."""
    path = Path(csv_path)
    if not path.is_file():
        raise DataError(f"training log {path} does not exist; pass the CSV the engine writes "
                        "(RUN/logs/.../metrics.csv or similar)")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"training log {path} is not a readable CSV ({exc}); expected a header with "
                        "'step' and term names") from exc
    short = {c: str(c).strip().rsplit("/", 1)[-1].lower() for c in frame.columns}
    out = pd.DataFrame(index=frame.index)
    out["step"] = (pd.to_numeric(frame[next(c for c, s in short.items() if s == "step")], errors="coerce")
                   if "step" in short.values() else np.arange(len(frame), dtype=float))
    for name, aliases in ALIASES.items():
        for alias in aliases:
            match = [c for c, s in short.items() if s == alias]
            if match:
                out[name] = pd.to_numeric(frame[match[0]], errors="coerce")
                break
    return out


def _series(log: pd.DataFrame, name: str) -> tuple[np.ndarray, np.ndarray] | None:
    if name not in log:
        return None
    part = log[["step", name]].dropna()
    if part.empty:
        return None
    return part["step"].to_numpy(), part[name].to_numpy()


def _plot_beta(ax, log: pd.DataFrame) -> None:
    step, beta = _series(log, "beta")
    ax.plot(step, beta, color="tab:purple", lw=1.2, label="beta")
    # schedules may pass through 0 (cyclic): symlog keeps those points, log otherwise
    if np.all(beta > 0):
        ax.set_yscale("log")
    else:
        ax.set_yscale("symlog", linthresh=1e-2)
    ax.axhline(1.0, color="grey", lw=0.8, ls=":")
    ax.set_ylabel("beta (log)")
    ax.legend(loc="best", fontsize=8)


def _plot_kl(ax, log: pd.DataFrame) -> None:
    for name, style in (("kl", dict(color="tab:blue", lw=0.8, alpha=0.6, label="KL (batch)")),
                        ("kl_avg", dict(color="tab:blue", lw=1.4, label="KL (moving average)")),
                        ("set_point", dict(color="tab:red", lw=1.4, ls="--", label="set point C"))):
        series = _series(log, name)
        if series is not None:
            ax.plot(*series, **style)
    ax.set_ylabel("KL (nats)")
    ax.legend(loc="best", fontsize=8)


def _plot_loss(ax, log: pd.DataFrame) -> None:
    values = []
    for name, color in (("loss", "black"), ("recon", "tab:green")):
        series = _series(log, name)
        if series is not None:
            ax.plot(*series, color=color, lw=1.0, label=name)
            values.append(series[1])
    # the first steps' loss is 10-20x the rest: a log axis keeps the later progress readable
    if values and np.all(np.concatenate(values) > 0):
        ax.set_yscale("log")
    ax.set_ylabel("nats per image")
    ax.legend(loc="best", fontsize=8)


def _save_panels(panels, log: pd.DataFrame, png_path, title: str) -> Path:
    fig = Figure(figsize=(7.0, 2.3 * len(panels)), dpi=100, layout="constrained")
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, draw in zip(axes, panels):
        draw(ax, log)
        ax.grid(True, alpha=0.3)
    axes[-1].set_xlabel("step")
    axes[0].set_title(title)
    fmt = Path(png_path).suffix.lstrip(".").lower() or "png"
    return atomic_write(png_path, lambda fh: fig.savefig(fh, format=fmt))


def _has(log: pd.DataFrame, *names: str) -> bool:
    return any(_series(log, n) is not None for n in names)


def plot_training_curves(csv_path: str | os.PathLike, png_path: str | os.PathLike,
                         title: str = "training curves") -> Path:
    """Loss and reconstruction, KL with its set point, beta (log axis): one panel each, where logged."""
    log = read_log(csv_path)
    panels = [draw for draw, names in ((_plot_loss, ("loss", "recon")),
                                       (_plot_kl, ("kl", "kl_avg", "set_point")),
                                       (_plot_beta, ("beta",))) if _has(log, *names)]
    if not panels:
        raise DataError(f"{csv_path} has no plottable column; found {list(pd.read_csv(csv_path, nrows=0).columns)}, "
                        f"expected some of {sorted(ALIASES)}")
    return _save_panels(panels, log, png_path, title)


def plot_beta_kl(csv_path: str | os.PathLike, png_path: str | os.PathLike,
                 title: str = "beta and KL against the set point") -> Path:
    """A controller's view (DynamicVAE, ControlVAE): beta on a log axis above KL against its set point."""
    log = read_log(csv_path)
    missing = [n for n in ("beta", "kl") if _series(log, n) is None]
    if missing:
        raise DataError(f"{csv_path} lacks {missing} (found {list(pd.read_csv(csv_path, nrows=0).columns)}); "
                        "plot_beta_kl needs the beta and KL columns a controlled run logs")
    return _save_panels([_plot_beta, _plot_kl], log, png_path, title)
