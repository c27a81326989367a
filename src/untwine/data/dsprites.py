"""Procedural dSprites: 737,280 binary 64x64 images of a square, an ellipse or a heart.

Factors (untwine.data.spaces.DSPRITES, row-major, posY fastest): shape 3, scale 6
(linspace(0.5, 1, 6)), orientation 40 (linspace(0, 2pi, 40)), posX 32, posY 32 (linspace(0, 1, 32)).

How an image is made (deterministic, bit for bit):
- Each of the 3*6*40 = 720 shape/scale/orientation sprites is drawn once on a 32x32 patch whose
  centre is the patch's middle: 4x4 supersampled inside tests on the pixel grid, a pixel is on when
  at least half its samples are inside. Orientation rotates the shape counter-clockwise as seen on
  screen; scale multiplies its size (at scale 1: square side 18 px, ellipse 24 x 12 px, heart about
  21 px wide).
- The patch is placed at integer offsets: posX class i moves the object i pixels right and posY
  class j moves it j pixels down, so the object's centre is at pixel coordinate 16 + 31 * pos
  (pos = normalised centre in 0..1; rows count downwards as in every image array).
- Rows are kept bit-packed as one uint64 per image row (64 pixels): placing a sprite is a shift.
  Bytes are big-endian, so the packed form is exactly np.packbits of the (64, 64) image
  (512 bytes an image, 377 MB for the whole dataset).

Symmetries, as in the original: orientation 0 and 2pi (classes 0 and 39) give the same image.
The square is symmetric under 90 degree turns and the ellipse under 180 degree turns. The grid's
step is 360/39 degrees, so no two grid orientations are exact symmetric copies, but reduced modulo
the symmetry the square's orientations lie only 2.3 degrees apart and the ellipse's 4.6, and at
64x64 some of them pixelate to the same sprite: distinct orientations per scale (0.5 .. 1) are
square 22, 24, 33, 36, 36, 36; ellipse 33, 39, 39, 39, 39, 39; heart 39 at every scale (649 distinct
sprites of 720). Every coincidence is between orientations of one square or ellipse that are
symmetric copies to within one grid step; the tests check this on all 720 sprites. Metrics that
score orientation meet the same ambiguity as with the original's symmetric shapes.

By default images are composed on demand from the 720 sprites (a few MB); `cached=True` renders
the whole packed dataset once into the on-disk cache (untwine.data.cache) and memory-maps it.
"""
from __future__ import annotations

import functools
import os

import numpy as np
import torch

from untwine.data.cache import open_array
from untwine.data.base import GroundTruthData
from untwine.data.spaces import DSPRITES, DSPRITES_SHAPES
from untwine.errors import DataError

RENDERER_VERSION = "dsprites-1"
SIZE = 64           # canvas side (pixels)
PATCH = 32          # sprite patch side; the sprite's centre is at (16, 16) in patch coordinates
SUPERSAMPLE = 4     # samples per pixel side
N_POS = 32
PACKED_BYTES = SIZE * SIZE // 8  # 512

# Shape sizes at scale 1, in pixels.
SQUARE_HALF_SIDE = 9.0
ELLIPSE_SEMI_AXES = (12.0, 6.0)
HEART_HALF_WIDTH = 10.5


def _inside(shape: str, u: np.ndarray, v: np.ndarray, scale: float) -> np.ndarray:
    """Inside test in the shape's own frame (u right, v up, pixels from the centre)."""
    if shape == "square":
        h = SQUARE_HALF_SIDE * scale
        return (np.abs(u) <= h) & (np.abs(v) <= h)
    if shape == "ellipse":
        a, b = ELLIPSE_SEMI_AXES[0] * scale, ELLIPSE_SEMI_AXES[1] * scale
        return (u / a) ** 2 + (v / b) ** 2 <= 1.0
    if shape == "heart":
        # (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0 spans x in [-1.14, 1.14], y in [-1, 1.24]; centre its box.
        k = HEART_HALF_WIDTH * scale / 1.139
        x = u / k
        y = v / k + 0.12
        return (x * x + y * y - 1.0) ** 3 - x * x * y ** 3 <= 0.0
    raise DataError(f"unknown dSprites shape {shape!r}; expected one of {list(DSPRITES_SHAPES)}")


def render_sprites() -> np.ndarray:
    """The 720 sprite patches as bool (3, 6, 40, 32, 32), on = inside the shape."""
    scales = DSPRITES.factors[1].values
    angles = DSPRITES.factors[2].values
    # Sample points of every pixel, relative to the patch centre (16, 16); v points up.
    offs = (np.arange(SUPERSAMPLE) + 0.5) / SUPERSAMPLE
    coords = (np.arange(PATCH)[:, None] + offs[None, :]).reshape(-1) - PATCH / 2  # (PATCH*S,)
    x = coords[None, :]
    y = -coords[:, None]
    cos, sin = np.cos(angles)[:, None, None], np.sin(angles)[:, None, None]
    # Rotating the shape by +theta = sampling it at the points rotated by -theta.
    u = cos * x + sin * y
    v = -sin * x + cos * y
    out = np.empty((len(DSPRITES_SHAPES), len(scales), len(angles), PATCH, PATCH), dtype=bool)
    s = SUPERSAMPLE
    for i, shape in enumerate(DSPRITES_SHAPES):
        for j, scale in enumerate(scales):
            hits = _inside(shape, u, v, float(scale)).reshape(len(angles), PATCH, s, PATCH, s)
            out[i, j] = hits.sum(axis=(2, 4), dtype=np.int32) * 2 >= s * s
    return out


def _padded_rows(sprites: np.ndarray) -> np.ndarray:
    """(720, 32 + 63) uint64: each sprite row as a 64-pixel word (pixel 0 = most significant bit),
    the sprite's rows at 31..62 and zeros around, so image row y at vertical offset p is row y - p + 31."""
    flat = sprites.reshape(-1, PATCH, PATCH)
    weights = np.uint64(1) << np.arange(63, 63 - PATCH, -1, dtype=np.uint64)  # columns 0..31
    words = (flat.astype(np.uint64) * weights).sum(axis=2, dtype=np.uint64)
    padded = np.zeros((flat.shape[0], PATCH + SIZE - 1), dtype=np.uint64)
    padded[:, N_POS - 1:N_POS - 1 + PATCH] = words
    return padded


@functools.lru_cache(maxsize=1)
def _sprite_tables() -> tuple[np.ndarray, np.ndarray]:
    """The sprites and their padded row words, rendered once per process (read-only, 1 MB)."""
    sprites = render_sprites()
    rows = _padded_rows(sprites)
    sprites.flags.writeable = False
    rows.flags.writeable = False
    return sprites, rows


_ROWS = np.arange(SIZE)


class DSprites(GroundTruthData):
    """Procedural dSprites (1 x 64 x 64, binary), rendered on demand or from the on-disk cache.

    Args:
        cached: render the whole dataset once into the cache (377 MB, bit-packed) and memory-map it;
            default False composes each requested image from the 720 sprites (as fast, no disk).
        cache_dir: cache directory (default $UNTWINE_CACHE or ~/.cache/untwine).
        progress: show a progress bar while building the cache.
    """

    name = "dsprites"
    factor_space = DSPRITES
    image_shape = (1, SIZE, SIZE)

    def __init__(self, cached: bool = False, cache_dir: str | os.PathLike | None = None,
                 progress: bool = True):
        self.sprites, self._rows = _sprite_tables()
        self._packed: np.ndarray | None = None
        if cached:
            self._packed = open_array(
                "dsprites-packed", shape=(len(DSPRITES), PACKED_BYTES), dtype=np.uint8,
                version=RENDERER_VERSION, chunks=self._packed_chunks, cache_dir=cache_dir,
                progress=progress, description="rendering dSprites")

    @property
    def cached(self) -> bool:
        return self._packed is not None

    # -- packed images ---------------------------------------------------------
    def _compose_words(self, indices: np.ndarray) -> np.ndarray:
        """(N,) valid flat indices -> (N, 64) uint64 image rows."""
        sprite = indices // (N_POS * N_POS)
        pos_x = ((indices // N_POS) % N_POS).astype(np.uint64)
        pos_y = indices % N_POS
        rows = self._rows[sprite[:, None], (N_POS - 1) - pos_y[:, None] + _ROWS[None, :]]
        return rows >> pos_x[:, None]

    def _packed_chunks(self):
        """The whole packed dataset in index order, one shape/scale (40 sprites) per chunk."""
        pos = np.arange(N_POS)
        row_idx = (N_POS - 1) - pos[:, None] + _ROWS[None, :]            # (posY, row)
        shifts = pos.astype(np.uint64)[:, None, None]                   # (posX, 1, 1)
        per_chunk = len(DSPRITES.factors[2].values)
        for start in range(0, self._rows.shape[0], per_chunk):
            rows = self._rows[start:start + per_chunk][:, row_idx]      # (40, posY, 64)
            words = rows[:, None, :, :] >> shifts[None]                 # (40, posX, posY, 64)
            yield words.astype(">u8", order="C").view(np.uint8).reshape(-1, PACKED_BYTES)

    def packed(self, indices: np.ndarray) -> np.ndarray:
        """Bit-packed images (N, 512) uint8, equal to np.packbits of each (64, 64) image."""
        idx = self.factor_space.check_indices(np.asarray(indices).reshape(-1))
        if self._packed is not None:
            return np.take(self._packed, idx, axis=0)
        return self._compose_words(idx).astype(">u8", order="C").view(np.uint8)

    # -- GroundTruthData -------------------------------------------------------
    def images(self, indices: np.ndarray) -> np.ndarray:
        """uint8 images (N, 64, 64, 1) with values 0 and 255."""
        bits = np.unpackbits(self.packed(indices), axis=1)
        return (bits * np.uint8(255)).reshape(-1, SIZE, SIZE, 1)

    def batch(self, indices: np.ndarray, device: torch.device | str | None = None) -> torch.Tensor:
        """float32 (N, 1, 64, 64) of 0.0 / 1.0, unpacked straight from the packed rows."""
        bits = torch.from_numpy(np.unpackbits(self.packed(indices), axis=1))
        if device is not None:
            bits = bits.to(device)  # move 1 byte a pixel, convert there
        return bits.view(-1, 1, SIZE, SIZE).float()

    def __repr__(self) -> str:
        return f"DSprites(cached={self.cached})"
