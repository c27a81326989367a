"""Cars3D (Reed et al. 2015, "Deep Visual Analogy-Making"), read from the original archive's .mat files.

The archive (http://www.scottreed.info/files/nips2015-analogy-data.tar.gz) holds `data/cars/*.mat`,
one MATLAB v5 file per car model, each with the key "im": uint8 of shape (128, 128, 3, 24, 4) =
(H, W, RGB, azimuth, elevation). As in disentanglement_lib (cars3d.py), image im[..., a, e] has
azimuth a and elevation e, the car files in name order are the objects 0..182 (disentanglement_lib
takes the directory listing's order, lexicographic on its storage), and images are shrunk to 64x64
with PIL's antialiasing Lanczos filter (PIL's ANTIALIAS, which its `thumbnail` used): on uint8 RGB
that is PIL's 8-bit path, the same as `resize_images` here, so the pixels match.

The factor space is row-major over (elevation 4, azimuth 24, object 183) (DESIGN section 3), held
in memory as uint8: 17,568 images, 216 MB. The archive gives no physical angles, so the factor
values are the class numbers.
"""
from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np

from untwine.data.arrays import ArrayGroundTruthData
from untwine.data.factors import FactorSpace
from untwine.errors import DataError

NUM_ELEVATIONS, NUM_AZIMUTHS, NUM_OBJECTS = 4, 24, 183
MAT_KEY = "im"


def cars3d_space(num_objects: int = NUM_OBJECTS) -> FactorSpace:
    return FactorSpace.from_values({
        "elevation": np.arange(NUM_ELEVATIONS, dtype=float),
        "azimuth": np.arange(NUM_AZIMUTHS, dtype=float),
        "object": np.arange(num_objects, dtype=float),
    })


CARS3D = cars3d_space()


def resize_images(images: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """uint8 (N, H, W) or (N, H, W, C) with C in {1, 3} -> uint8 (N, h, w[, C]) by PIL's Lanczos filter.

    Lanczos is PIL's antialiasing filter (the former Image.ANTIALIAS). On uint8 images PIL runs its
    8-bit path (fixed-point weights, each pass clipped to 0..255): disentanglement_lib's Cars3D
    pixels exactly (its `thumbnail` on uint8 RGB), but not its SmallNORB ones, which it resizes in
    32-bit mode without clipping (see untwine.data.smallnorb.resize_levels).
    """
    from PIL import Image

    arr = np.asarray(images)
    if arr.dtype != np.uint8 or arr.ndim not in (3, 4) or (arr.ndim == 4 and arr.shape[3] not in (1, 3)):
        raise DataError(f"resize_images takes uint8 (N, H, W) or (N, H, W, 1|3); got {arr.dtype} {arr.shape}")
    h, w = (int(v) for v in hw)
    if arr.shape[1:3] == (h, w):
        return np.array(arr, copy=True)
    gray = arr.ndim == 4 and arr.shape[3] == 1
    src = arr[..., 0] if gray else arr
    out = np.empty((len(arr), h, w, *src.shape[3:]), dtype=np.uint8)
    for i in range(len(src)):
        # PIL takes (width, height)
        out[i] = np.asarray(Image.fromarray(src[i]).resize((w, h), Image.Resampling.LANCZOS))
    return out[..., None] if gray else out


def _mat_errors() -> tuple[type[BaseException], ...]:
    from scipy.io.matlab import MatReadError

    # what scipy raises on a damaged, truncated or foreign file (measured: cut headers give IndexError)
    return (MatReadError, OSError, ValueError, IndexError, TypeError, EOFError, NotImplementedError, zlib.error)


def read_car_mat(path: str | os.PathLike, input_hw: tuple[int, int] = (128, 128)) -> np.ndarray:
    """One car's .mat -> uint8 (elevation, azimuth, H, W, 3) = (4, 24, H, W, 3), not resized."""
    from scipy.io import loadmat, whosmat

    p = Path(path)
    h, w = input_hw
    want = (h, w, 3, NUM_AZIMUTHS, NUM_ELEVATIONS)
    expected = f"expected key {MAT_KEY!r}: uint8 of shape {want} (H, W, RGB, azimuth, elevation)"
    try:
        contents = loadmat(p, variable_names=[MAT_KEY])
    except _mat_errors() as e:
        raise DataError(f"Cars3D file {p} is not a readable MATLAB v5 .mat file or is truncated "
                        f"({type(e).__name__}: {e}); {expected}; re-extract it from the original archive") from None
    if MAT_KEY not in contents:
        found = sorted(entry[0] for entry in whosmat(p))  # only "im" was read: list what the file holds
        raise DataError(f"Cars3D file {p} has no key {MAT_KEY!r} (found keys {found}); {expected}")
    im = contents[MAT_KEY]
    if not isinstance(im, np.ndarray) or im.dtype != np.uint8 or im.shape != want:
        found = f"{im.dtype} of shape {im.shape}" if isinstance(im, np.ndarray) else type(im).__name__
        raise DataError(f"Cars3D file {p}: {expected}; found {found}")
    # (H, W, 3, azimuth, elevation) -> (elevation, azimuth, H, W, 3): row-major over the factors
    return np.ascontiguousarray(im.transpose(4, 3, 0, 1, 2))


def car_files(folder: str | os.PathLike) -> list[Path]:
    """The .mat files of `folder` (or of its `cars` subfolder, as the archive extracts), in name order."""
    root = Path(folder).expanduser()
    if not root.exists():
        raise DataError(f"Cars3D folder not found: {root}; give the folder holding the car .mat files "
                        f"(data/cars of nips2015-analogy-data.tar.gz)")
    if not root.is_dir():
        raise DataError(f"Cars3D path {root} is not a folder; give the folder holding the car .mat files "
                        f"(data/cars of the original archive), not one file")
    files = sorted(p for p in root.iterdir() if p.suffix == ".mat" and p.is_file())
    if not files and (root / "cars").is_dir():
        return car_files(root / "cars")
    if not files:
        raise DataError(f"Cars3D folder {root} holds no .mat files; give the folder data/cars of the original "
                        f"archive (183 files, one per car model)")
    return files


def load_cars3d(folder: str | os.PathLike, num_objects: int | None = NUM_OBJECTS,
                input_hw: tuple[int, int] = (128, 128), image_hw: tuple[int, int] = (64, 64),
                progress: bool | None = None) -> ArrayGroundTruthData:
    """Cars3D from the folder of original .mat files, as an in-memory uint8 dataset (216 MB).

    Args:
        folder: the folder of the car .mat files (data/cars of the archive, or a folder above it).
        num_objects: the number of car files required (183 in the original); None takes as many as
            the folder holds (a subset of cars, e.g. in tests).
        input_hw: the image size stored in the files (128x128 in the original).
        image_hw: the size the images are resized to (64x64, as disentanglement_lib).
        progress: show a progress bar (default: for more than 16 files).
    """
    from untwine.data.files import _progress  # the loaders' progress bar

    files = car_files(folder)
    if num_objects is not None and len(files) != num_objects:
        raise DataError(f"Cars3D folder {Path(folder).expanduser()} holds {len(files)} .mat files; expected "
                        f"{num_objects} (one per car model); give the complete data/cars folder of the original "
                        f"archive, or num_objects=None to use the cars found")
    space = cars3d_space(len(files))
    h, w = image_hw
    # (elevation, azimuth, object, h, w, 3): reshaped, the row-major order of `space`
    grid = np.empty((NUM_ELEVATIONS, NUM_AZIMUTHS, len(files), h, w, 3), dtype=np.uint8)
    show = progress if progress is not None else len(files) > 16
    with _progress(len(files), "reading Cars3D", bool(show)) as advance:
        for obj, path in enumerate(files):
            views = read_car_mat(path, input_hw).reshape(NUM_ELEVATIONS * NUM_AZIMUTHS, *input_hw, 3)
            small = resize_images(views, image_hw)
            grid[:, :, obj] = small.reshape(NUM_ELEVATIONS, NUM_AZIMUTHS, h, w, 3)
            advance(1)
    return ArrayGroundTruthData("cars3d", space, grid.reshape(len(space), h, w, 3))
