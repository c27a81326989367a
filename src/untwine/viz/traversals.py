"""Latent traversals: one row per latent dimension, most active (highest KL) first.

Each row starts from the encoder mean of the first input and replaces one coordinate with
`num_steps` values evenly spaced over [-limit, limit] (as disentanglement_lib's
latent_traversal does), decoding every code in one batch.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from untwine.errors import DataError
from untwine.viz.images import (PAD_VALUE, decoded_mean, evaluation_mode, image_grid, model_device,
                                save_gif, save_image, to_uint8)

#: width in pixels of the label column left of the traversal grid
LABEL_WIDTH = 96
#: height in pixels of the strip above the grid that gives each column's value of z_j
HEADER_HEIGHT = 18
#: images decoded per forward pass (bounds memory for large grids)
_DECODE_CHUNK = 512


@dataclass
class Traversal:
    """`images` (rows, num_steps, H, W, C) uint8; `dims[r]` is row r's latent index, `kl[r]` its KL
    (mean over the inputs, nats); `values` the num_steps coordinate values."""

    images: np.ndarray
    dims: list[int]
    kl: np.ndarray
    values: np.ndarray


def kl_per_dimension(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, 1)) per latent dimension, mean over the batch."""
    return (0.5 * (mu.pow(2) + logvar.exp() - logvar - 1.0)).mean(dim=0)


def _choose_dims(dims, kl: torch.Tensor) -> list[int]:
    latent_dim = kl.numel()
    by_activity = torch.argsort(kl, descending=True, stable=True).tolist()
    if dims is None:
        return by_activity
    if isinstance(dims, (int, np.integer)):
        if not 1 <= dims <= latent_dim:
            raise DataError(f"dims={dims} rows requested but the model has {latent_dim} latent dimensions; "
                            f"pass 1..{latent_dim}, a list of indices, or None for all")
        return by_activity[: int(dims)]
    chosen = [int(d) for d in dims]
    bad = [d for d in chosen if not 0 <= d < latent_dim]
    if bad or not chosen:
        raise DataError(f"latent dimensions {bad or chosen} are not in 0..{latent_dim - 1}; "
                        "pass valid indices, an int (top-k by KL) or None")
    return chosen


def latent_traversal(model, x: torch.Tensor, num_steps: int = 10, limit: float = 2.5, dims=None) -> Traversal:
    """Decode traversals of the chosen latent dimensions (None: all, sorted by KL; int k: top k by KL;
    list: those indices in that order)."""
    if x.dim() != 4:
        raise DataError(f"traversals need a batch (N, C, H, W), got shape {tuple(x.shape)}")
    if num_steps < 2:
        raise DataError(f"num_steps must be >= 2 to traverse, got {num_steps}")
    with evaluation_mode(model):
        device = model_device(model)
        mu, logvar = model.encode(x.to(device, dtype=torch.float32))
        mu, logvar = mu.float(), logvar.float()
        kl = kl_per_dimension(mu, logvar)
        rows = _choose_dims(dims, kl)
        values = torch.linspace(-limit, limit, num_steps, device=device)
        # codes[r, s] = base code with dimension rows[r] set to values[s]
        codes = mu[0].expand(len(rows), num_steps, -1).clone()
        codes[torch.arange(len(rows), device=device), :, torch.tensor(rows, device=device)] = values
        flat = codes.reshape(-1, codes.shape[-1])
        decoded = torch.cat([decoded_mean(model, model.decode(chunk)) for chunk in flat.split(_DECODE_CHUNK)])
    images = to_uint8(decoded)
    return Traversal(images.reshape(len(rows), num_steps, *images.shape[1:]), rows,
                     kl[rows].cpu().numpy(), values.cpu().numpy())


def traversal_grid(traversal: Traversal) -> np.ndarray:
    """The traversal as one uint8 grid: row r = traversal.images[r], columns = steps."""
    rows, steps = traversal.images.shape[:2]
    return image_grid(traversal.images.reshape(rows * steps, *traversal.images.shape[2:]), cols=steps)


def _label_column(traversal: Traversal, height: int, channels: int, cell: int, pad: int = 2) -> np.ndarray:
    """A white column with "z<j>  KL <value>" centred on each row's cells."""
    column = Image.new("L", (LABEL_WIDTH, height), 255)
    draw = ImageDraw.Draw(column)
    font = ImageFont.load_default(size=max(9, min(14, cell // 4)))
    for r, (dim, kl) in enumerate(zip(traversal.dims, traversal.kl)):
        y = pad + r * (cell + pad) + cell // 2
        draw.text((4, y), f"z{dim}  KL {kl:.2f}", fill=0, font=font, anchor="lm")
    array = np.asarray(column)[..., None]
    return np.repeat(array, channels, axis=2) if channels > 1 else array


def _value_strip(values, width: int, channels: int, cell: int, pad: int = 2, left: str = "z_j =") -> np.ndarray:
    """A white strip naming the value of z_j above each column of cells (and `left` over the labels)."""
    strip = Image.new("L", (width, HEADER_HEIGHT), 255)
    draw = ImageDraw.Draw(strip)
    font = ImageFont.load_default(size=max(9, min(12, cell // 5)))
    draw.text((4, HEADER_HEIGHT // 2), left, fill=0, font=font, anchor="lm")
    for s, v in enumerate(values):
        x = LABEL_WIDTH + pad + s * (cell + pad) + cell // 2
        text = "0" if abs(v) < 5e-3 else f"{v:+.1f}" if abs(v * 10 - round(v * 10)) < 1e-4 else f"{v:+.2f}"
        draw.text((x, HEADER_HEIGHT // 2), text, fill=0, font=font, anchor="mm")
    array = np.asarray(strip)[..., None]
    return np.repeat(array, channels, axis=2) if channels > 1 else array


def _frame_strip(value: float, width: int, channels: int) -> np.ndarray:
    """The GIF's caption: the value every row's z_j has in this frame."""
    strip = Image.new("L", (width, HEADER_HEIGHT), 255)
    ImageDraw.Draw(strip).text((3, HEADER_HEIGHT // 2), f"z_j = {value:+.2f}", fill=0,
                               font=ImageFont.load_default(size=11), anchor="lm")
    array = np.asarray(strip)[..., None]
    return np.repeat(array, channels, axis=2) if channels > 1 else array


def save_traversals(model, x: torch.Tensor, png_path: str | os.PathLike, gif_path: str | os.PathLike | None = None,
                    num_steps: int = 10, limit: float = 2.5, dims=None) -> Traversal:
    """Save the traversal grid as PNG (a label column names each row's dimension and KL, a strip
    above the grid each column's value of z_j, over [-limit, limit]) and, when `gif_path` is given, a
    looping GIF whose frame t shows every row's step t, forward then back (2 * num_steps - 2
    frames), the frame's value of z_j written above it."""
    traversal = latent_traversal(model, x, num_steps=num_steps, limit=limit, dims=dims)
    grid = traversal_grid(traversal)
    cell = traversal.images.shape[2]
    labels = _label_column(traversal, grid.shape[0], grid.shape[2], cell=cell)
    body = np.concatenate([labels, grid], axis=1)
    header = _value_strip(traversal.values, body.shape[1], grid.shape[2], cell=traversal.images.shape[3])
    save_image(np.concatenate([header, body], axis=0), png_path)
    if gif_path is not None:
        order = list(range(num_steps)) + list(range(num_steps - 2, 0, -1))
        cols = min(len(traversal.dims), 5)
        frames = []
        for t in order:
            frame = image_grid(traversal.images[:, t], cols=cols, pad_value=PAD_VALUE)
            frames.append(np.concatenate([_frame_strip(float(traversal.values[t]), frame.shape[1], frame.shape[2]),
                                          frame], axis=0))
        save_gif(frames, gif_path)
    return traversal


__all__ = ["HEADER_HEIGHT", "Traversal", "kl_per_dimension", "latent_traversal", "traversal_grid", "save_traversals"]
