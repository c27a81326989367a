"""SmallNORB (LeCun et al. 2004), read from the original binary-matrix files of both splits.

Files (https://cs.nyu.edu/~ylclab/data/norb-v1.0-small/), in one folder, plain or gzipped (.mat.gz):

    smallnorb-5x46789x9x18x6x2x96x96-training-{dat,cat,info}.mat   instances 4, 6, 7, 8, 9
    smallnorb-5x01235x9x18x6x2x96x96-testing-{dat,cat,info}.mat    instances 0, 1, 2, 3, 5

These ".mat" are not MATLAB files but the NORB binary matrix format: little-endian int32 magic
(0x1E3D4C55 uint8, 0x1E3D4C54 int32, ...), int32 ndim, max(3, ndim) int32 dims (unused ones 1),
then the data, C order. dat is uint8 (N, 2, 96, 96) (two cameras; the first, the left one, is
used, as by disentanglement_lib and disent), cat int32 (N,) the category, info int32 (N, 4):
instance 0..9, elevation 0..8 (30..70 degrees), azimuth 0, 2, ..., 34 (times 10 degrees), lighting 0..5.

Two protocols:

- "disentanglement_lib" (the default; norb.py there): both splits, 48,600 images, one per
  (category 5, instance 10, elevation 9, azimuth 18, lighting 6). Exposed factors: category,
  elevation, azimuth, lighting (4,860 grid points); the instance is a nuisance factor, drawn
  uniformly for every observation (see untwine.data.nuisance).
- "disent" (disent's SmallNorbData): one split (train by default, 24,300 images), all five
  factors exposed, the instance as a factor of 5 classes (the split's instance numbers, ranked).

Two preprocessings of the 96x96 images to 64x64, both by PIL's Lanczos filter (its former ANTIALIAS):

- "disentanglement_lib" (the default of that protocol; its pixel values exactly): norb.py reads the
  pixels as int8, which PIL's fromarray unpacks as unsigned ("I;8"), i.e. the stored 0..255 levels
  in 32-bit "I" mode; Lanczos there sums in double precision, rounds each pass to an integer and
  never clips, so levels overshoot 0..255 at sharp edges (-37..285 on 300 uniform-noise images)
  and observations are level / 255, a little outside [0, 1]. Held as int16 levels (398 MB).
- "uint8" (the default of the disent protocol): the same filter in PIL's 8-bit "L" mode
  (fixed-point weights, each pass clipped to 0..255), held as uint8 (199 MB); on uniform noise 3.3%
  of the pixels differ from disentanglement_lib's, by up to 24 levels even with its clipped to
  0..255. Use it where a model needs 8-bit images in [0, 1] (dequantised flows, discrete likelihoods).
"""
from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from untwine.data.arrays import ArrayGroundTruthData
from untwine.data.base import GroundTruthData
from untwine.data.factors import Factor, FactorSpace
from untwine.data.nuisance import NuisanceGroundTruthData
from untwine.errors import DataError

SMALLNORB = FactorSpace.from_values({
    "category": np.arange(5, dtype=float),           # animal, human, airplane, truck, car
    "instance": np.arange(10, dtype=float),
    "elevation": 30.0 + 5.0 * np.arange(9),          # degrees from the horizontal
    "azimuth": 20.0 * np.arange(18),                 # degrees (stored labels 0, 2, ..., 34)
    "lighting": np.arange(6, dtype=float),
})
SMALLNORB_CATEGORIES = ("animal", "human", "airplane", "truck", "car")
SPLITS = {"train": "smallnorb-5x46789x9x18x6x2x96x96-training",
          "test": "smallnorb-5x01235x9x18x6x2x96x96-testing"}
PROTOCOLS = ("disentanglement_lib", "disent")
PREPROCESSINGS = ("disentanglement_lib", "uint8")
DEFAULT_PREPROCESSING = {"disentanglement_lib": "disentanglement_lib", "disent": "uint8"}
DESCRIPTIONS = {
    "disentanglement_lib": "SmallNORB, disentanglement_lib protocol: both splits (48,600 images, 64x64x1); "
                           "category, elevation, azimuth, lighting exposed; instance a nuisance factor "
                           "resampled per observation",
    "disent": "SmallNORB, disent protocol: one split (train: 24,300 images, 64x64x1); category, instance (5), "
              "elevation, azimuth, lighting all exposed",
}

# magic number -> dtype of the NORB binary matrix format
MAGIC = {0x1E3D4C55: np.dtype(np.uint8), 0x1E3D4C54: np.dtype("<i4"), 0x1E3D4C56: np.dtype("<i2"),
         0x1E3D4C51: np.dtype("<f4"), 0x1E3D4C53: np.dtype("<f8")}
_MAGIC_OF = {dtype: magic for magic, dtype in MAGIC.items()}
_MAX_NDIM = 16
# no NORB file comes near this (the largest small-NORB file is 442 MB): larger means a damaged header
_MAX_BYTES = 1 << 40
_RESIZE_BLOCK = 2048  # images resized per block (bounded memory when memory-mapped)


# -- the binary matrix format ---------------------------------------------------------------------

def _header(head: bytes, size: int, source: str) -> tuple[np.dtype, tuple[int, ...], int]:
    """Parse magic, ndim, dims from the first bytes; return (dtype, dims, data offset)."""
    if len(head) < 8:
        raise DataError(f"{source} is truncated: expected at least 20 bytes (a NORB binary matrix header), "
                        f"found {size} bytes; re-download it")
    magic, ndim = struct.unpack("<ii", head[:8])
    if magic not in MAGIC:
        known = ", ".join(f"0x{m:08X} ({d})" for m, d in MAGIC.items())
        raise DataError(f"{source} is not a NORB binary matrix: magic number 0x{magic & 0xFFFFFFFF:08X}, expected "
                        f"one of {known}; give the original smallnorb-*.mat files (they are not MATLAB files)")
    if not 1 <= ndim <= _MAX_NDIM:
        raise DataError(f"{source}: the header gives {ndim} dimensions, expected 1..{_MAX_NDIM}; the file is damaged")
    stored = max(3, ndim)  # the format stores at least 3 dims
    offset = 8 + 4 * stored
    if len(head) < offset:
        raise DataError(f"{source} is truncated: expected at least {offset} bytes of header, found {size} bytes")
    dims = struct.unpack(f"<{stored}i", head[8:offset])[:ndim]
    if min(dims) < 0:
        raise DataError(f"{source}: the header gives negative dimensions {dims}; the file is damaged")
    return MAGIC[magic], tuple(int(d) for d in dims), offset


def read_binary_matrix(path: str | os.PathLike, what: str = "SmallNORB") -> np.ndarray:
    """A NORB binary matrix file (.mat, or gzipped .mat.gz) as an array: memory-mapped when plain.

    The file must hold exactly the header and the data it announces: a shorter file is truncated,
    a longer one is not the original (DataError naming the file, expected and found bytes).
    """
    p = Path(path)
    source = f"{what} file {p}"
    if p.suffix == ".gz":
        try:
            with gzip.open(p, "rb") as f:
                raw = f.read()
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{source} is not a readable gzip file or is truncated ({type(e).__name__}: {e}); "
                            f"re-download it") from None
        dtype, dims, offset = _header(raw[:8 + 4 * _MAX_NDIM], len(raw), source + " (decompressed)")
        size = len(raw)
    else:
        size = p.stat().st_size
        with open(p, "rb") as f:
            head = f.read(8 + 4 * _MAX_NDIM)
        dtype, dims, offset = _header(head, size, source)
    # Python integers: a damaged header's huge dims must not wrap around to a negative byte count
    expected = offset + math.prod(dims) * dtype.itemsize
    if expected > _MAX_BYTES:
        raise DataError(f"{source}: the header gives a {dtype} matrix of shape {dims}, {expected:,} bytes, far "
                        f"beyond any NORB file (the file has {size:,} bytes); the header is damaged, re-download it")
    if size < expected:
        raise DataError(f"{source} is truncated: a {dtype} matrix of shape {dims} needs {expected} bytes, found "
                        f"{size} bytes; re-download it")
    if size > expected:
        raise DataError(f"{source} has {size} bytes, expected {expected} for a {dtype} matrix of shape {dims}; "
                        f"it holds trailing data and is not the original file")
    if p.suffix == ".gz":
        return np.frombuffer(raw, dtype=dtype, offset=offset).reshape(dims)
    return np.memmap(p, dtype=dtype, mode="r", offset=offset, shape=dims)


def write_binary_matrix(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write `array` in the NORB binary matrix format (for tests and converted subsets)."""
    arr = np.ascontiguousarray(array)
    dtype = arr.dtype.newbyteorder("<") if arr.dtype.itemsize > 1 else arr.dtype
    if dtype not in _MAGIC_OF:
        raise DataError(f"the NORB format stores {sorted(str(d) for d in _MAGIC_OF)}; got {arr.dtype}")
    dims = list(arr.shape) + [1] * max(0, 3 - arr.ndim)
    with open(path, "wb") as f:
        f.write(struct.pack(f"<ii{len(dims)}i", _MAGIC_OF[dtype], arr.ndim, *dims))
        f.write(arr.astype(dtype, copy=False).tobytes())


# -- one split -----------------------------------------------------------------------------------

def split_file(folder: Path, split: str, kind: str) -> Path:
    """The file of `kind` (dat, cat, info) of `split` in `folder`: .mat, else .mat.gz."""
    name = f"{SPLITS[split]}-{kind}.mat"
    for candidate in (folder / name, folder / (name + ".gz")):
        if candidate.is_file():
            return candidate
    raise DataError(f"SmallNORB file {name} (or {name}.gz) not found in {folder}; the folder must hold the "
                    f"{split} split's dat, cat and info files from https://cs.nyu.edu/~ylclab/data/norb-v1.0-small/")


def _expect(arr: np.ndarray, path: Path, dtype, shape: tuple, meaning: str) -> None:
    ok = arr.dtype == np.dtype(dtype) and len(arr.shape) == len(shape) and all(
        want is None or want == got for want, got in zip(shape, arr.shape))
    if not ok:
        dims = ["N" if s is None else str(s) for s in shape]
        want = f"({dims[0]},)" if len(dims) == 1 else "(" + ", ".join(dims) + ")"
        raise DataError(f"SmallNORB file {path}: expected {np.dtype(dtype)} of shape {want} ({meaning}); found "
                        f"{arr.dtype} of shape {arr.shape}")


def read_split(folder: str | os.PathLike, split: str, space: FactorSpace = SMALLNORB,
               input_hw: tuple[int, int] = (96, 96)) -> tuple[np.ndarray, np.ndarray]:
    """One split -> (left-camera images uint8 (N, H, W), classes int64 (N, 5) in `space`'s order).

    Classes are the stored labels (the azimuth label halved), checked against `space`'s sizes.
    """
    if split not in SPLITS:
        raise DataError(f"unknown SmallNORB split {split!r}; use one of {sorted(SPLITS)}")
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise DataError(f"SmallNORB folder not found or not a folder: {root}; give the folder holding the six "
                        f"smallnorb-*-{{dat,cat,info}}.mat files")
    paths = {kind: split_file(root, split, kind) for kind in ("dat", "cat", "info")}
    dat, cat, info = (read_binary_matrix(paths[k]) for k in ("dat", "cat", "info"))
    _expect(dat, paths["dat"], np.uint8, (None, 2, *input_hw), "images, camera pairs")
    n = dat.shape[0]
    _expect(cat, paths["cat"], "<i4", (n,), "one category per image")
    _expect(info, paths["info"], "<i4", (n, 4), "instance, elevation, azimuth, lighting per image")

    labels = np.column_stack([np.asarray(cat), np.asarray(info)]).astype(np.int64)
    odd = np.flatnonzero(labels[:, 3] % 2)
    if odd.size:
        raise DataError(f"SmallNORB file {paths['info']}: the azimuth labels should be even (0, 2, ..., 34); row "
                        f"{int(odd[0])} has {int(labels[odd[0], 3])}")
    classes = labels.copy()
    classes[:, 3] //= 2  # azimuth labels 0, 2, ..., 34 -> classes 0..17
    for col, (name, size) in enumerate(zip(space.names, space.sizes)):
        bad = np.flatnonzero((classes[:, col] < 0) | (classes[:, col] >= size))
        if bad.size:
            source = paths["cat"] if col == 0 else paths["info"]
            scale = 2 if col == 3 else 1
            raise DataError(f"SmallNORB file {source}: {name} label {int(labels[bad[0], col])} at row {int(bad[0])} "
                            f"is out of range 0..{(size - 1) * scale}{' (even)' if scale == 2 else ''}")
    return dat[:, 0], classes


def _grid_order(classes: np.ndarray, space: FactorSpace, source: str) -> np.ndarray:
    """Flat indices of `classes` in `space`, which they must cover exactly once each."""
    idx = space.index_of(classes, validate=False)
    counts = np.bincount(idx, minlength=len(space))
    if (counts != 1).any():
        twice, missing = np.flatnonzero(counts > 1), np.flatnonzero(counts == 0)
        parts = []
        if twice.size:
            parts.append(f"{twice.size} factor vectors appear more than once (e.g. "
                         f"{dict(zip(space.names, space.classes_of(twice[:1])[0].tolist()))})")
        if missing.size:
            parts.append(f"{missing.size} are missing (e.g. "
                         f"{dict(zip(space.names, space.classes_of(missing[:1])[0].tolist()))})")
        raise DataError(f"{source} should hold every factor vector of {space!r} exactly once: {'; '.join(parts)}; "
                        f"give the original, complete files")
    return idx


def resize_levels(images: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """uint8 (N, H, W) -> int16 levels (N, h, w), disentanglement_lib's SmallNORB resize exactly.

    PIL's Lanczos in 32-bit "I" mode, as norb.py's `_resize_images` runs it: double-precision sums,
    each pass rounded to an integer, nothing clipped (levels may leave 0..255).
    """
    from PIL import Image

    arr = np.asarray(images)
    if arr.dtype != np.uint8 or arr.ndim != 3:
        raise DataError(f"resize_levels takes uint8 (N, H, W); got {arr.dtype} {arr.shape}")
    h, w = (int(v) for v in hw)
    out = np.empty((len(arr), h, w), dtype=np.int16)  # Lanczos overshoots 0..255 by far less than int16's range
    for i in range(len(arr)):
        # int32 input: mode "I", the levels dlib's int8 bytes unpack to ("I;8" is unsigned)
        out[i] = np.asarray(Image.fromarray(arr[i].astype(np.int32)).resize((w, h), Image.Resampling.LANCZOS))
    return out


class LevelsGroundTruthData(GroundTruthData):
    """Grey images held as int16 levels that may leave 0..255 (disentanglement_lib's unclipped resize).

    `batch` gives level / 255 unclipped, the values disentanglement_lib feeds its models;
    `images` (pictures) clips to uint8, as the interface promises.
    """

    def __init__(self, name: str, factor_space: FactorSpace, levels: np.ndarray):
        if not isinstance(levels, np.ndarray) or levels.dtype != np.int16 or levels.ndim != 3:
            raise DataError(f"levels must be an int16 array (N, H, W); got "
                            f"{getattr(levels, 'dtype', type(levels).__name__)} {getattr(levels, 'shape', '')}")
        if len(levels) != len(factor_space):
            raise DataError(f"dataset {name!r}: {len(levels)} images for a factor space of {len(factor_space)} "
                            f"factor vectors {factor_space!r}; give one image per grid point, in row-major order")
        self.name, self.factor_space, self._levels = name, factor_space, levels
        self.image_shape = (1, levels.shape[1], levels.shape[2])

    @property
    def levels(self) -> np.ndarray:
        return self._levels

    def _gather(self, indices: np.ndarray) -> np.ndarray:
        return np.take(self._levels, self.factor_space.check_indices(np.asarray(indices).reshape(-1)), axis=0)

    def images(self, indices: np.ndarray) -> np.ndarray:
        return np.clip(self._gather(indices), 0, 255).astype(np.uint8)[..., None]

    def batch(self, indices: np.ndarray, device: torch.device | str | None = None) -> torch.Tensor:
        levels = torch.from_numpy(self._gather(indices))
        if device is not None:
            levels = levels.to(device)  # move int16 (2x fewer bytes), convert there
        # float32(level) / 255 equals dlib's float32(level / 255.0) (checked for every level in -1000..1299)
        return levels.unsqueeze(1).float().div_(255.0)


def _resized_in_grid_order(parts: list[tuple[np.ndarray, np.ndarray]], n: int, image_hw: tuple[int, int],
                           preprocessing: str, progress: bool | None) -> np.ndarray:
    """Resize each (images, grid indices) part and place image i at its grid index."""
    from untwine.data.cars3d import resize_images
    from untwine.data.files import _progress

    h, w = image_hw
    levels = preprocessing == "disentanglement_lib"
    out = np.empty((n, h, w), dtype=np.int16 if levels else np.uint8)
    show = progress if progress is not None else n > 10_000
    with _progress(n, "reading SmallNORB", bool(show)) as advance:
        for images, idx in parts:
            for s in range(0, len(images), _RESIZE_BLOCK):
                block = np.asarray(images[s:s + _RESIZE_BLOCK])
                resize = resize_levels if levels else resize_images
                out[idx[s:s + _RESIZE_BLOCK]] = resize(block, image_hw)
                advance(len(block))
    return out


def _grid_data(name: str, space: FactorSpace, images: np.ndarray) -> GroundTruthData:
    return LevelsGroundTruthData(name, space, images) if images.dtype == np.int16 else \
        ArrayGroundTruthData(name, space, images)


# -- the protocols ---------------------------------------------------------------------------------

def load_smallnorb(folder: str | os.PathLike, protocol: str = "disentanglement_lib", split: str | None = None,
                   factor_space: FactorSpace = SMALLNORB, input_hw: tuple[int, int] = (96, 96),
                   image_hw: tuple[int, int] = (64, 64), seed: int = 0, preprocessing: str | None = None,
                   progress: bool | None = None) -> GroundTruthData:
    """SmallNORB from the folder of the original files, held in memory (64x64x1; see `preprocessing`).

    Args:
        folder: the folder of the smallnorb-*-{dat,cat,info}.mat(.gz) files.
        protocol: "disentanglement_lib" (both splits; instance a nuisance factor: a
            NuisanceGroundTruthData over category, elevation, azimuth, lighting) or "disent" (one
            split, all five factors).
        split: for "disent", "train" (default) or "test"; "disentanglement_lib" uses both (leave it out).
        factor_space: the full five-factor grid the labels index (smaller only in tests).
        input_hw, image_hw: the stored image size (96x96) and the size images are resized to.
        seed: seed of the nuisance draws (disentanglement_lib protocol; see untwine.data.nuisance).
        preprocessing: "disentanglement_lib" (its pixel values exactly: unclipped levels, observations
            slightly outside [0, 1]; a LevelsGroundTruthData) or "uint8" (8-bit, clipped); None: the
            protocol's own (`DEFAULT_PREPROCESSING`). See the module docstring.
        progress: show a progress bar (default: for more than 10,000 images).
    """
    if protocol not in PROTOCOLS:
        raise DataError(f"unknown SmallNORB protocol {protocol!r}; use one of {PROTOCOLS} "
                        f"(or the dataset name smallnorb_disent)")
    preprocessing = DEFAULT_PREPROCESSING[protocol] if preprocessing is None else preprocessing
    if preprocessing not in PREPROCESSINGS:
        raise DataError(f"unknown SmallNORB preprocessing {preprocessing!r}; use one of {PREPROCESSINGS} "
                        f"(or leave it out for the protocol's own)")
    root = Path(folder).expanduser()
    if protocol == "disentanglement_lib":
        if split not in (None, "both"):
            raise DataError(f"the disentanglement_lib protocol uses both splits; got split={split!r}: leave split "
                            f"out, or use protocol='disent' for one split")
        splits = [read_split(root, s, factor_space, input_hw) for s in ("train", "test")]
        idx = _grid_order(np.concatenate([c for _, c in splits]), factor_space,
                          f"SmallNORB files in {root} (both splits)")
        bounds = np.cumsum([0] + [len(c) for _, c in splits])
        parts = [(images, idx[bounds[i]:bounds[i + 1]]) for i, (images, _) in enumerate(splits)]
        full = _grid_data("smallnorb_all_factors", factor_space,
                          _resized_in_grid_order(parts, len(factor_space), image_hw, preprocessing, progress))
        data = NuisanceGroundTruthData(full, ["instance"], name="smallnorb", seed=seed)
    else:
        split = "train" if split is None else split
        images, classes = read_split(root, split, factor_space, input_hw)
        # the split's own instance numbers (train: 4, 6, 7, 8, 9) become classes 0..4, values kept
        inst = factor_space.factor_index("instance")
        numbers = np.unique(classes[:, inst])
        classes[:, inst] = np.searchsorted(numbers, classes[:, inst])
        factors = list(factor_space.factors)
        factors[inst] = Factor("instance", factors[inst].values[numbers])
        space = FactorSpace(factors)
        idx = _grid_order(classes, space, f"SmallNORB {split} split in {root}")
        data = _grid_data("smallnorb_disent", space,
                          _resized_in_grid_order([(images, idx)], len(space), image_hw, preprocessing, progress))
    data.description = f"{DESCRIPTIONS[protocol]}; {preprocessing} preprocessing"
    data.protocol, data.preprocessing = protocol, preprocessing
    return data
