"""Pictures of the multi-stage model: stage 1 against the combined model, side by side.

- save_side_by_side: rows input | stage 1 | combined (| error maps), each row labelled with its BCE.
- save_multistage_traversals: per latent dimension a row, stage 1's traversal (y = g1(z)) beside the
  combined one (w held at the input's own detail code); PNG grid and animated GIF.
- save_samples: stage-1 samples y = g1(z) directly above the combined samples for the same z.
- plot_tradeoff: reconstruction error (BCE) against MIG, one labelled point per model.

Image pictures are plain pixels (cells of the data's own size, grey padding as in viz.images) with a
white label column on the left and, where a picture has halves, a header strip naming them. All
files are written atomically (untwine.io).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from untwine.errors import ConfigError, DataError
from untwine.io import atomic_write
from untwine.viz.images import evaluation_mode, image_grid, model_device, save_gif, save_image, to_uint8
from untwine.viz.traversals import _choose_dims, kl_per_dimension

#: width of the label column, height of the header strip, gap between the halves (pixels)
LABEL_WIDTH = 104
HEADER_HEIGHT = 20
GAP = 8
PAD = 2


# ---- layout helpers --------------------------------------------------------------------------------

def _font(size: int = 12):
    return ImageFont.load_default(size=size)


def _text_panel(width: int, height: int, texts: list[tuple[int, int, str, str]]) -> np.ndarray:
    """A white (height, width) uint8 panel with each (x, y, text, anchor) drawn in black; a text with
    line breaks is drawn line under line, centred on y."""
    panel = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(panel)
    font = _font()
    for x, y, text, anchor in texts:
        lines = text.split("\n")
        for i, line in enumerate(lines):
            draw.text((x, y + (i - (len(lines) - 1) / 2) * 14), line, fill=0, font=font, anchor=anchor)
    return np.asarray(panel)


def _rgb(images: np.ndarray) -> np.ndarray:
    """uint8 (..., C) with C = 1 or 3 -> 3 channels, so that grey and coloured cells mix."""
    return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def _labelled(grid: np.ndarray, row_labels: list[str], cell: int, headers: list[tuple[int, str]] | None = None
              ) -> np.ndarray:
    """Add a label column (one label centred on each row of cells) and an optional header strip
    (text centred at x, counted from the grid's left edge)."""
    h, _, c = grid.shape
    rows = [(4, PAD + r * (cell + PAD) + cell // 2, label, "lm") for r, label in enumerate(row_labels)]
    column = _text_panel(LABEL_WIDTH, h, rows)[..., None]
    body = np.concatenate([np.repeat(column, c, axis=2), grid], axis=1)
    if not headers:
        return body
    strip = _text_panel(body.shape[1], HEADER_HEIGHT,
                        [(LABEL_WIDTH + x, HEADER_HEIGHT // 2, text, "mm") for x, text in headers])[..., None]
    return np.concatenate([np.repeat(strip, c, axis=2), body], axis=0)


def _side_by_side(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    gap = np.full((left.shape[0], GAP, left.shape[2]), 255, dtype=np.uint8)
    return np.concatenate([left, gap, right], axis=1)


def _error_map(x: torch.Tensor, x_hat: torch.Tensor) -> np.ndarray:
    """|x - x_hat| (max over channels) through the inferno colour map: uint8 (N, H, W, 3)."""
    from matplotlib import colormaps
    err = (x.float() - x_hat.float()).abs().amax(dim=1).clamp(0, 1).cpu().numpy()
    return np.round(colormaps["inferno"](err)[..., :3] * 255).astype(np.uint8)


def _check_batch(x: torch.Tensor, what: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise DataError(f"{what} expects an image batch (N, C, H, W); got "
                        f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")


def _stage1_decode(model, z: torch.Tensor) -> torch.Tensor:
    if hasattr(model, "stage1_decode"):
        return model.stage1_decode(z).float()
    return model.likelihood.mean(model.decode(z)).float()


def _is_combined(model) -> bool:
    return hasattr(model, "stage2") and hasattr(model, "reconstruct_stage1")


# ---- reconstructions -------------------------------------------------------------------------------

def save_side_by_side(model, x: torch.Tensor, path: str | os.PathLike, max_images: int = 8,
                      error_maps: bool = True) -> Path:
    """One column per input: rows input | stage 1 | combined, then (error_maps) |x - x_hat| of each
    (inferno: black = exact). Each reconstruction row is labelled with its mean BCE (nats per
    image) over the shown inputs. A plain VAE gives input | stage 1."""
    from untwine.multistage.evaluation import reconstruction_metrics, stage1_reconstruction

    _check_batch(x, "save_side_by_side")
    x = x[:max_images]
    with evaluation_mode(model):
        xd = x.to(model_device(model), dtype=torch.float32)
        recons = {"stage 1": stage1_reconstruction(model, xd).clamp(0, 1)}
        if _is_combined(model):
            recons["combined"] = model.reconstruct(xd).float().clamp(0, 1)
    rows, labels = [_rgb(to_uint8(xd))], ["input"]
    for name, recon in recons.items():
        rows.append(_rgb(to_uint8(recon)))
        labels.append(f"{name}\nBCE {reconstruction_metrics(xd, recon)['bce']:.1f}")
    if error_maps:
        for name, recon in recons.items():
            rows.append(_error_map(xd, recon))
            labels.append(f"|error|\n{name}")
    grid = image_grid(np.concatenate(rows), cols=len(x))
    return save_image(_labelled(grid, labels, cell=x.shape[-2]), path)


# ---- traversals --------------------------------------------------------------------------------------

@dataclass
class MultiStageTraversal:
    """`stage1` and `combined`: uint8 (rows, steps, H, W, C); `dims[r]` row r's latent, `kl[r]` its KL
    (nats, mean over the inputs), `values` the traversed coordinate values."""

    stage1: np.ndarray
    combined: np.ndarray
    dims: list[int]
    kl: np.ndarray
    values: np.ndarray


def multistage_traversal(model, x: torch.Tensor, num_steps: int = 9, limit: float = 2.0, dims=None
                         ) -> MultiStageTraversal:
    """Traverse the chosen dimensions (None: all by KL; int k: top k; list: those) from the first
    input's code: stage 1's y = g1(z) and the combined image with w held at the input's own."""
    _check_batch(x, "multistage traversals")
    if not _is_combined(model):
        raise ConfigError(f"multistage traversals need a combined model (stage 1 + stage 2); got "
                          f"{type(model).__name__}: use untwine.viz.save_traversals for a plain VAE")
    if num_steps < 2:
        raise DataError(f"num_steps must be >= 2 to traverse, got {num_steps}")
    with evaluation_mode(model):
        xd = x.to(model_device(model), dtype=torch.float32)
        mu, logvar = model.encode(xd)
        kl = kl_per_dimension(mu.float(), logvar.float())
        rows = _choose_dims(dims, kl)
        values = torch.linspace(-limit, limit, num_steps, device=xd.device)
        stage1, combined = [], []
        for dim in rows:
            codes = mu[:1].float().repeat(num_steps, 1)
            codes[:, dim] = values
            stage1.append(to_uint8(_stage1_decode(model, codes)))
            combined.append(to_uint8(model.traverse(xd[:1], dim, values=values)[:, 0].float()))
    return MultiStageTraversal(np.stack(stage1), np.stack(combined), rows, kl[rows].cpu().numpy(),
                               values.cpu().numpy())


def _traversal_picture(tr: MultiStageTraversal, steps: list[int]) -> np.ndarray:
    """Rows = dimensions; left half stage 1, right half combined, columns = the given steps."""
    cell = tr.stage1.shape[2]
    halves = [image_grid(_rgb(half[:, steps].reshape(-1, *half.shape[2:])), cols=len(steps))
              for half in (tr.stage1, tr.combined)]
    width = halves[0].shape[1]
    if len(steps) == 1:  # a GIF frame: each row's label gives the value its z_j has now
        v = float(tr.values[steps[0]])
        labels = [f"z{d} = {v:+.2f}\nKL {k:.2f}" for d, k in zip(tr.dims, tr.kl)]
    else:
        labels = [f"z{d}  KL {k:.2f}" for d, k in zip(tr.dims, tr.kl)]
    span = f"z_j from {float(tr.values[steps[0]]):+.1f} to {float(tr.values[steps[-1]]):+.1f}"
    if width >= 330:
        names = (f"stage 1: y = g1(z), {span}", "combined (w held)")
    elif width >= 150:
        names = ("stage 1: y = g1(z)", "combined (w held)")
    else:
        names = ("stage 1", "combined")
    headers = [(width // 2, names[0]), (width + GAP + width // 2, names[1])]
    return _labelled(_side_by_side(*halves), labels, cell=cell, headers=headers)


def save_multistage_traversals(model, x: torch.Tensor, png_path: str | os.PathLike,
                               gif_path: str | os.PathLike | None = None, num_steps: int = 9,
                               limit: float = 2.0, dims=None) -> MultiStageTraversal:
    """PNG: per latent dimension a row, stage 1's traversal beside the combined one (w held), a
    column per value in linspace(-limit, limit, num_steps). GIF: frame t shows step t of every row,
    stage 1 | combined, forward then back (2 * num_steps - 2 frames)."""
    tr = multistage_traversal(model, x, num_steps=num_steps, limit=limit, dims=dims)
    save_image(_traversal_picture(tr, list(range(num_steps))), png_path)
    if gif_path is not None:
        order = list(range(num_steps)) + list(range(num_steps - 2, 0, -1))
        save_gif([_traversal_picture(tr, [t]) for t in order], gif_path)
    return tr


# ---- samples ---------------------------------------------------------------------------------------

def save_samples(model, path: str | os.PathLike, n: int = 16, seed: int = 0, cols: int = 8) -> Path:
    """Stage-1 samples y = g1(z), z ~ N(0, I), each directly above the combined sample of the same z
    (w ~ p(w)); rows alternate stage 1 / combined, `cols` samples a row. Seeded; the global RNG is
    left untouched."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise DataError(f"save_samples: n={n!r}; expected a positive integer")
    combined = _is_combined(model)
    stage1 = model.stage1 if combined else model
    device = model_device(model)
    with evaluation_mode(model), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator = torch.Generator(device=device).manual_seed(int(seed))
        z = torch.randn(n, stage1.latent_dim, generator=generator, device=device)
        y = _stage1_decode(model, z)
        halves = [("stage 1: y", _rgb(to_uint8(y)))]
        if combined:
            w = model.stage2.sample_w(n, y, z, generator=generator)
            halves.append(("combined", _rgb(to_uint8(model.stage2.generate(y, z, w).float()))))
    cols = min(cols, n)
    chunks = -(-n // cols)
    tiles, labels = [], []
    fill = np.full((chunks * cols - n, *halves[0][1].shape[1:]), 128, dtype=np.uint8)
    padded = [(name, np.concatenate([imgs, fill])) for name, imgs in halves]
    for r in range(chunks):
        for name, imgs in padded:
            tiles.append(imgs[r * cols:(r + 1) * cols])
            labels.append(name)
    grid = image_grid(np.concatenate(tiles), cols=cols)
    return save_image(_labelled(grid, labels, cell=halves[0][1].shape[1]), path)


# ---- the trade-off plot -------------------------------------------------------------------------------

def plot_tradeoff(rows, path: str | os.PathLike, title: str = "reconstruction against disentanglement",
                  x_key: str = "mig", y_key: str = "bce") -> Path:
    """Reconstruction error against MIG, one labelled point per model (the benchmark's trade-off).

    rows: dicts with "name", "mig" and "bce" (nats per image); optional "group" (one colour per
    group, e.g. "stage 1", "combined", "beta-VAE") and "pair": the name of another row this one
    is joined to by a dashed line (a combined model to its own stage 1, which shares its MIG)."""
    from matplotlib.figure import Figure

    rows = list(rows)
    if not rows:
        raise DataError("plot_tradeoff needs at least one row {'name', 'mig', 'bce'}; got none")
    for i, row in enumerate(rows):
        missing = [k for k in ("name", x_key, y_key) if k not in row]
        if missing:
            raise DataError(f"plot_tradeoff row {i} lacks {missing}; each row needs 'name', {x_key!r}, {y_key!r}")
        for k in (x_key, y_key):
            v = row[k]
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) or not math.isfinite(v):
                raise DataError(f"plot_tradeoff row {i} ({row['name']!r}) has {k}={v!r}; expected a finite number")
    names = {str(r["name"]) for r in rows}
    for row in rows:
        if row.get("pair") is not None and str(row["pair"]) not in names:
            raise DataError(f"plot_tradeoff row {row['name']!r} is paired with {row['pair']!r}, which is not a row; "
                            f"name the stage-1 row it should be joined to, or leave 'pair' out")
    fig = Figure(figsize=(6.4, 4.6), dpi=110, layout="constrained")
    ax = fig.subplots()
    by_name = {str(r["name"]): r for r in rows}
    for row in rows:
        anchor = by_name.get(str(row.get("pair"))) if row.get("pair") is not None else None
        if anchor is not None and anchor is not row:
            ax.plot([anchor[x_key], row[x_key]], [anchor[y_key], row[y_key]], color="grey", lw=1, ls="--", zorder=1)
    groups = list(dict.fromkeys(str(r.get("group", "")) for r in rows))
    # the usual groups keep one colour in every plot, so two datasets' plots read alike
    fixed = {"beta-VAE(1)": "C0", "stage 1": "C1", "combined": "C2"}
    others = iter(f"C{i}" for i in range(3, 13))
    colours = {g: fixed.get(g) or next(others) for g in groups}
    for g in groups:
        members = [r for r in rows if str(r.get("group", "")) == g]
        ax.scatter([r[x_key] for r in members], [r[y_key] for r in members], color=colours[g], s=42, zorder=2,
                   label=g or None, edgecolor="black", linewidth=0.5)
    # Labels of points that nearly coincide (a stage 1 and a combined model that barely improves on
    # it) alternate above and below the point instead of printing over each other.
    xs, ys = [r[x_key] for r in rows], [r[y_key] for r in rows]
    x_span, y_span = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0
    placed: list[tuple[float, float]] = []
    for row in rows:
        near = sum(abs(row[x_key] - px) < 0.05 * x_span and abs(row[y_key] - py) < 0.05 * y_span for px, py in placed)
        placed.append((row[x_key], row[y_key]))
        ax.annotate(str(row["name"]), (row[x_key], row[y_key]), textcoords="offset points",
                    xytext=(6, 4 - 14 * near), fontsize=8)
    ax.set_xlabel("MIG (higher = more disentangled)" if x_key == "mig" else x_key)
    y_labels = {"bce": "reconstruction BCE, nats per image (lower = better)",
                "bce_excess": "reconstruction BCE above the images' entropy,\nnats per image (lower = better)"}
    ax.set_ylabel(y_labels.get(y_key, y_key))
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.margins(0.2)
    if any(groups):
        ax.legend(loc="best", fontsize=8)
    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    return atomic_write(path, lambda fh: fig.savefig(fh, format=fmt))


__all__ = ["MultiStageTraversal", "multistage_traversal", "plot_tradeoff", "save_multistage_traversals",
           "save_samples", "save_side_by_side"]
