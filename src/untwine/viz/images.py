"""Image grids and reconstructions, written as plain PNG pixels (no axes, exact layout).

A grid of N images (H, W, C) with `cols` columns and padding `pad` is exactly
(rows*H + (rows+1)*pad) x (cols*W + (cols+1)*pad) pixels, rows = ceil(N / cols): tests and
readers can find every cell from that formula.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from untwine.errors import DataError
from untwine.io import atomic_write

#: grey between cells: visible against both black (dSprites background) and white shapes
PAD_VALUE = 128


def to_uint8(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """Float images in [0, 1], (N, C, H, W) torch or (N, H, W, C) numpy, -> uint8 (N, H, W, C)."""
    if isinstance(x, torch.Tensor):
        if x.dim() != 4:
            raise DataError(f"expected an image batch shaped (N, C, H, W), got shape {tuple(x.shape)}; "
                            "add a batch dimension with x.unsqueeze(0)")
        x = x.detach().float().cpu().permute(0, 2, 3, 1).numpy()
    arr = np.asarray(x)
    if arr.ndim != 4:
        raise DataError(f"expected images shaped (N, H, W, C), got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr
    return np.round(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8)


def image_grid(images: np.ndarray, cols: int, pad: int = 2, pad_value: int = PAD_VALUE) -> np.ndarray:
    """Tile uint8 images (N, H, W, C) row by row into one (H', W', C) array; empty cells stay pad_value."""
    images = to_uint8(images)
    n, h, w, c = images.shape
    if n == 0:
        raise DataError("cannot make a grid of 0 images; pass at least one image")
    if cols < 1:
        raise DataError(f"cols must be >= 1, got {cols}")
    rows = -(-n // cols)
    # Each cell carries its right and bottom padding; one transpose lays the cells out (no per-image loop).
    cells = np.full((rows * cols, h + pad, w + pad, c), pad_value, dtype=np.uint8)
    cells[:n, :h, :w] = images
    body = cells.reshape(rows, cols, h + pad, w + pad, c).transpose(0, 2, 1, 3, 4)
    grid = np.full((rows * h + (rows + 1) * pad, cols * w + (cols + 1) * pad, c), pad_value, dtype=np.uint8)
    grid[pad:, pad:] = body.reshape(rows * (h + pad), cols * (w + pad), c)
    return grid


def _pil_image(array: np.ndarray) -> Image.Image:
    array = np.ascontiguousarray(array)
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def save_image(array: np.ndarray, path: str | os.PathLike) -> Path:
    """Write a uint8 (H, W, C) array (C = 1 or 3) as PNG, atomically."""
    image = _pil_image(array)
    return atomic_write(path, lambda fh: image.save(fh, format="PNG"))


def save_gif(frames: list[np.ndarray], path: str | os.PathLike, duration_ms: int = 120) -> Path:
    """Write uint8 (H, W, C) frames as a looping GIF, atomically. Pillow merges identical
    consecutive frames, so a static sequence yields fewer frames than given."""
    if not frames:
        raise DataError("a GIF needs at least one frame; got none")
    images = [_pil_image(f) for f in frames]
    return atomic_write(path, lambda fh: images[0].save(
        fh, format="GIF", save_all=True, append_images=images[1:], duration=duration_ms, loop=0))


def decoded_mean(model, x_params: torch.Tensor) -> torch.Tensor:
    """The image a decoder output stands for: the likelihood's mean in [0, 1].

    Uses `model.likelihood.mean(x_params)` where the likelihood offers it; otherwise a
    Bernoulli likelihood's parameters are logits (sigmoid) and a Gaussian's are means (clamped).
    """
    likelihood = getattr(model, "likelihood", None)
    mean = getattr(likelihood, "mean", None)
    if callable(mean):
        out = mean(x_params)
    elif "bernoulli" in type(likelihood).__name__.lower():
        out = torch.sigmoid(x_params)
    else:
        out = x_params
    return out.float().clamp(0.0, 1.0)


@contextlib.contextmanager
def evaluation_mode(model):
    """Eval mode and no grad for pictures; the model's training flag is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def model_device(model) -> torch.device:
    param = next(iter(model.parameters()), None)
    return param.device if param is not None else torch.device("cpu")


def reconstruction_grid(model, x: torch.Tensor, max_images: int = 16, cols: int = 8) -> np.ndarray:
    """Rows of originals, each directly above the row of their reconstructions (encoder mean decoded)."""
    if x.dim() != 4:
        raise DataError(f"save_reconstructions expects a batch (N, C, H, W), got shape {tuple(x.shape)}")
    x = x[:max_images]
    with evaluation_mode(model):
        xd = x.to(model_device(model), dtype=torch.float32)
        mu, _ = model.encode(xd)
        recon = decoded_mean(model, model.decode(mu))
    originals, recons = to_uint8(x), to_uint8(recon)
    n = originals.shape[0]
    cols = min(cols, n)
    rows = -(-n // cols)
    # interleave chunk by chunk: originals row r, then reconstructions row r
    pad_n = rows * cols - n
    fill = np.full((pad_n, *originals.shape[1:]), PAD_VALUE, dtype=np.uint8)
    o = np.concatenate([originals, fill]).reshape(rows, 1, cols, *originals.shape[1:])
    r = np.concatenate([recons, fill]).reshape(rows, 1, cols, *recons.shape[1:])
    tiles = np.concatenate([o, r], axis=1).reshape(rows * 2 * cols, *originals.shape[1:])
    return image_grid(tiles, cols=cols)


#: width in pixels of the label column left of the reconstructions ("input", "reconstruction")
ROW_LABEL_WIDTH = 96


def row_labels(labels: list[str], height: int, channels: int, cell: int, pad: int = 2,
               width: int = ROW_LABEL_WIDTH) -> np.ndarray:
    """A white (height, width, channels) column with labels[r] centred on row r of a grid's cells."""
    from PIL import ImageDraw, ImageFont
    column = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(column)
    font = ImageFont.load_default(size=max(9, min(13, cell // 4)))
    for r, label in enumerate(labels):
        draw.text((4, pad + r * (cell + pad) + cell // 2), label, fill=0, font=font, anchor="lm")
    array = np.asarray(column)[..., None]
    return np.repeat(array, channels, axis=2) if channels > 1 else array


def save_reconstructions(model, x: torch.Tensor, path: str | os.PathLike, max_images: int = 16,
                         cols: int = 8) -> Path:
    """Save up to `max_images` inputs with their reconstructions below them as one PNG grid, each
    row labelled ("input", "reconstruction") in a column on its left."""
    grid = reconstruction_grid(model, x, max_images=max_images, cols=cols)
    cell = x.shape[-2]
    rows = (grid.shape[0] - 2) // (cell + 2)
    labels = row_labels(["input" if r % 2 == 0 else "reconstruction" for r in range(rows)], grid.shape[0],
                        grid.shape[2], cell)
    return save_image(np.concatenate([labels, grid], axis=1), path)
