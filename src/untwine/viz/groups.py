"""Pictures of grouped models (ML-VAE; latent dims [0, content_dim) content, the rest style).

- swap grid: row i = the accumulated content of group i, column j = the style of group j's first
  member, each cell decoded; the top row shows the style sources, the left column the content
  sources (first members), so reading along a row keeps what a group shares and changes the rest.
- content / style traversals: the traversals of traversals.py restricted to the content dims and to
  the style dims, one PNG each.
- the accuracy of a content probe against the number of members accumulated.
"""
from __future__ import annotations

import os
import textwrap
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from untwine.errors import DataError
from untwine.io import atomic_write
from untwine.objectives.mlvae import accumulate_content
from untwine.viz.images import PAD_VALUE, decoded_mean, evaluation_mode, image_grid, model_device, save_image, to_uint8
from untwine.viz.traversals import Traversal, save_traversals


def _check_content_dim(content_dim: int, latent_dim: int) -> None:
    if isinstance(content_dim, bool) or not isinstance(content_dim, int) or not 1 <= content_dim < latent_dim:
        raise DataError(f"content_dim={content_dim!r} must be in 1..{latent_dim - 1} for a model with "
                        f"{latent_dim} latent dims (content first, then style)")


def swap_grid(model, groups: torch.Tensor, content_dim: int) -> np.ndarray:
    """uint8 (H', W', C) grid of (G + 1) x (G + 1) cells for groups (G, M, C, H, W): cell (i + 1, j + 1)
    decodes [content of group i, style of group j's first member]; row 0 and column 0 show the
    style and content sources, the corner is blank."""
    if groups.dim() != 5:
        raise DataError(f"swap_grid needs groups shaped (G, M, C, H, W); got shape {tuple(groups.shape)}")
    g, m = groups.shape[:2]
    with evaluation_mode(model):
        x = groups.to(model_device(model), dtype=torch.float32)
        mu, logvar = model.encode(x.reshape(g * m, *x.shape[2:]))
        mu, logvar = mu.float().view(g, m, -1), logvar.float().view(g, m, -1)
        _check_content_dim(content_dim, mu.shape[2])
        content = accumulate_content(mu[..., :content_dim], logvar[..., :content_dim])[0]  # (G, c)
        style = mu[:, 0, content_dim:]                                                      # (G, s)
        codes = torch.cat([content[:, None].expand(g, g, -1), style[None].expand(g, g, -1)], dim=2)
        decoded = to_uint8(decoded_mean(model, model.decode(codes.reshape(g * g, -1))))
    sources = to_uint8(groups[:, 0].float())
    blank = np.full((1, *sources.shape[1:]), PAD_VALUE, dtype=np.uint8)
    rows = [np.concatenate([blank, sources])]  # header: style sources
    rows += [np.concatenate([sources[i:i + 1], decoded[i * g:(i + 1) * g]]) for i in range(g)]
    return image_grid(np.concatenate(rows), cols=g + 1)


def save_swap_grid(model, groups: torch.Tensor, content_dim: int, path: str | os.PathLike) -> Path:
    """Write `swap_grid` as PNG."""
    return save_image(swap_grid(model, groups, content_dim), path)


def save_content_style_traversals(model, x: torch.Tensor, content_dim: int, content_path: str | os.PathLike,
                                  style_path: str | os.PathLike, num_steps: int = 10,
                                  limit: float = 2.5) -> tuple[Traversal, Traversal]:
    """Traversals of every content dim and of every style dim from x[0]'s code, two PNGs."""
    latent_dim = getattr(model, "latent_dim", None)
    if latent_dim is None:
        with evaluation_mode(model):
            latent_dim = model.encode(x[:1].to(model_device(model), dtype=torch.float32))[0].shape[1]
    _check_content_dim(content_dim, latent_dim)
    content = save_traversals(model, x, content_path, num_steps=num_steps, limit=limit, dims=list(range(content_dim)))
    style = save_traversals(model, x, style_path, num_steps=num_steps, limit=limit,
                            dims=list(range(content_dim, latent_dim)))
    return content, style


def plot_accuracy_vs_members(curve: dict, path: str | os.PathLike, chance: float | None = None,
                             title: str = "content probe on held-out groups") -> Path:
    """Line plot of `curve` (accuracy_vs_members' dict: members, accuracy[, per_factor, factor_names],
    as in evaluate_content_style's output); per-factor curves thin, the mean bold, chance dashed."""
    members = np.asarray(curve.get("members", []), dtype=float)
    accuracy = np.asarray(curve.get("accuracy", []), dtype=float)
    if members.ndim != 1 or members.size == 0 or accuracy.shape != members.shape:
        raise DataError(f"curve needs 'members' and 'accuracy' of equal length >= 1; got shapes {members.shape} "
                        f"and {accuracy.shape}")
    fig = Figure(figsize=(5.0, 3.4), dpi=100, layout="constrained")
    ax = fig.subplots()
    per_factor = np.asarray(curve.get("per_factor", []), dtype=float)
    if per_factor.ndim == 2 and per_factor.shape[0] == members.size:
        names = curve.get("factor_names") or [f"factor {k}" for k in range(per_factor.shape[1])]
        for k in range(per_factor.shape[1]):
            ax.plot(members, per_factor[:, k], lw=1, alpha=0.7, marker=".", label=str(names[k]))
    ax.plot(members, accuracy, lw=2.5, color="black", marker="o", label="mean")
    if chance is not None:
        ax.axhline(chance, ls="--", color="grey", lw=1, label="chance")
    ax.set_xlabel("members accumulated")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_xticks(members)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(textwrap.fill(title, 60), fontsize=10)  # long factor lists wrap instead of running off the figure
    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    return atomic_write(path, lambda fh: fig.savefig(fh, format=fmt))


__all__ = ["swap_grid", "save_swap_grid", "save_content_style_traversals", "plot_accuracy_vs_members"]
