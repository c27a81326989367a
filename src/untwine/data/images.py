"""Your own images as a dataset: a folder of PNG/JPEG/WebP files, or a uint8 array in a .npy/.npz.

    ds = get_dataset("images", path="photos/")          # recursive; decoded once into the cache
    ds = get_dataset("images", path="faces.npz", channels="grey")
    x = ds.batch(ds.evaluation_split.eval_indices[:16])  # float32 (16, C, 64, 64) in [0, 1]

Every image is centre-cropped to a square (the largest one, or `crop` pixels a side) and resized to
64x64: Pillow's BOX filter (the area average) when shrinking, BICUBIC when enlarging. Colour or grey
is chosen (`channels="colour"|"grey"`) or inferred: colour when any file has colour (an RGB/CMYK
image, or a palette with a colour in it). Transparent pixels are laid over white. 16-bit grey is
scaled to 8 bits.

Decoding runs once, in parallel threads (Pillow releases the GIL while it decodes and resizes), with
a progress bar, into the checksummed memory-mapped cache of the procedural datasets (data/cache.py):
one entry holds the (N, 64, 64, C) uint8 images, a second one which files decoded. The key names
the files (relative paths, sizes, modification times) and the options, so a changed folder is
decoded again and an unchanged one is opened in milliseconds. A file that cannot be read (not an
image, truncated, damaged) is skipped with a count on stderr; more than MAX_BAD_SHARE of them is an
error that names them.

These datasets have no factor grid (`factor_space` is None). Their evaluation split holds out
IMAGE_EVAL_FRACTION of the images (data/split.py), which no training batch ever returns. Labels,
where a set has them, are weak factors (`labels`: one class per image and label): the first-level
folder of a folder whose images all lie in subfolders (DIR/cats/..., DIR/dogs/...), the `labels`
array of an .npz, CelebA's 40 attributes (data/celeba.py). They serve the probes (DCI, MIG, SAP, ...
on held-out codes) and the classifier whose features score samples; never the training.
"""
from __future__ import annotations

import hashlib
import os
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from untwine.data.split import EvaluationSplit, count_split, split_from_mask
from untwine.errors import DataError

IMAGE_SIZE = 64
EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
ARRAY_EXTENSIONS = (".npy", ".npz")
#: fewer images than this cannot both train a model and hold out an evaluation split
MIN_IMAGES = 100
#: share of unreadable files above which loading fails (naming them) instead of skipping them
MAX_BAD_SHARE = 0.05
#: bump when decoding changes (crop, filter, mode conversion): old cache entries stop matching
DECODER_VERSION = 1
CHANNELS = {"grey": 1, "gray": 1, "colour": 3, "color": 3}
_CHUNK = 256  # images per decoded chunk (and per progress update)
_BLOCK = 16   # images per gather-and-convert block of a CPU batch
_COLOUR_MODES = {"RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "PA"}


@dataclass(frozen=True)
class ImageLabels:
    """Weak factors of an image set: `classes` int64 (N, K), one class per image and label, with
    the label's `names`, its number of classes (`sizes`) and the name of each class (`values`).
    `classes_of(indices)` reads them as FactorSpace.classes_of reads a grid's."""

    names: tuple[str, ...]
    classes: np.ndarray
    values: tuple[tuple[str, ...], ...]

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(len(v) for v in self.values)

    @property
    def num_factors(self) -> int:
        return len(self.names)

    def classes_of(self, indices: np.ndarray, validate: bool = True) -> np.ndarray:
        return self.classes[np.asarray(indices, dtype=np.int64)]

    def subset(self, rows: np.ndarray) -> "ImageLabels":
        return ImageLabels(self.names, self.classes[rows], self.values)


def labels_from_columns(names: Sequence[str], columns: np.ndarray,
                        values: Sequence[Sequence[str]] | None = None) -> ImageLabels:
    """Labels from raw columns (N, K) of any values: classes by the rank of each column's values."""
    columns = np.asarray(columns)
    if columns.ndim == 1:
        columns = columns[:, None]
    classes = np.empty(columns.shape, dtype=np.int64)
    found = []
    for k in range(columns.shape[1]):
        uniq, classes[:, k] = np.unique(columns[:, k], return_inverse=True)
        found.append(tuple(str(u) for u in uniq))
    return ImageLabels(tuple(str(n) for n in names), classes, tuple(values) if values is not None else tuple(found))


class ImageData:
    """N images (uint8, (N, 64, 64, C), a memory-mapped cache entry or an array) without a factor
    grid: the interface of GroundTruthData that needs no factors (`images`, `batch`, `image_shape`,
    `len`), an evaluation split and, optionally, weak labels."""

    factor_space = None

    def __init__(self, name: str, images: np.ndarray, labels: ImageLabels | None = None,
                 eval_mask: np.ndarray | None = None, source: str | None = None,
                 skipped: Sequence[str] = (), rows: np.ndarray | None = None):
        """`rows`: the rows of `images` that are the dataset (the decoded ones), default all."""
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
            raise DataError(f"image set {name!r}: images must be a uint8 array (N, H, W, C); got "
                            f"{getattr(images, 'dtype', type(images).__name__)} {getattr(images, 'shape', '')}")
        self._rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        n = len(images) if self._rows is None else len(self._rows)
        if labels is not None and len(labels.classes) != n:
            raise DataError(f"image set {name!r}: {len(labels.classes)} label rows for {n} images")
        self.name = name
        self.image_shape = (int(images.shape[3]), int(images.shape[1]), int(images.shape[2]))
        self.labels = labels
        self.source = source
        self.skipped = tuple(skipped)
        self._array = images
        self.evaluation_split: EvaluationSplit = count_split(n) if eval_mask is None else split_from_mask(eval_mask)

    def __len__(self) -> int:
        return int(len(self._array) if self._rows is None else len(self._rows))

    def __repr__(self) -> str:
        c, h, w = self.image_shape
        lab = f", labels {list(self.labels.names)[:4]}{'...' if self.labels.num_factors > 4 else ''}" \
            if self.labels is not None else ""
        return f"ImageData({self.name!r}, {len(self)} images {c}x{h}x{w}{lab})"

    @property
    def array(self) -> np.ndarray:
        return self._array

    def _check(self, indices) -> np.ndarray:
        idx = np.asarray(indices).reshape(-1)
        if not np.issubdtype(idx.dtype, np.integer):
            raise DataError(f"indices must be integers; got dtype {idx.dtype}")
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise DataError(f"index out of range: got min {idx.min()}, max {idx.max()}, valid 0..{len(self) - 1}")
        return idx.astype(np.int64, copy=False)

    def images(self, indices: np.ndarray) -> np.ndarray:
        """uint8 images (B, H, W, C)."""
        idx = self._check(indices)
        return np.asarray(np.take(self._array, idx if self._rows is None else self._rows[idx], axis=0))

    def batch(self, indices: np.ndarray, device: torch.device | str | None = None) -> torch.Tensor:
        """float32 (B, C, H, W) in [0, 1]."""
        if device is not None and torch.device(device).type != "cpu":
            from untwine.data.arrays import uint8_batch
            return uint8_batch(self.images(indices), device)  # move uint8 (4x fewer bytes), convert there
        idx = self._check(indices)
        rows = idx if self._rows is None else self._rows[idx]
        c, h, w = self.image_shape
        out = torch.empty((len(rows), c, h, w), dtype=torch.float32)
        # gather and convert a block at a time while it is in cache: 1.2-1.4x the whole-batch copy at 64-256
        for start in range(0, len(rows), _BLOCK):
            block = torch.from_numpy(np.take(self._array, rows[start:start + _BLOCK], axis=0))
            torch.div(block.permute(0, 3, 1, 2), 255.0, out=out[start:start + len(block)])  # one pass
        return out


# -- decoding one image -------------------------------------------------------------------------------

def _has_colour(im) -> bool:
    mode = im.mode
    if mode == "P":
        pal = np.asarray(im.getpalette() or [], dtype=np.int16).reshape(-1, 3)
        return bool((pal != pal[:, :1]).any())
    return mode in _COLOUR_MODES


def _to_mode(im, channels: int):
    """The image as "L" or "RGB"; transparency laid over white; 16-bit grey scaled to 8 bits."""
    from PIL import Image

    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        im = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info) \
            or (im.mode in ("L", "RGB") and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba)
    return im.convert("L" if channels == 1 else "RGB")


def square_box(width: int, height: int, crop: int | None) -> tuple[int, int, int, int]:
    """The centred square of side `crop` (None: the shorter side; never more than it)."""
    side = min(width, height) if crop is None else min(int(crop), width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def crop_resize(im, channels: int, crop: int | None = None, size: int = IMAGE_SIZE) -> np.ndarray:
    """A PIL image -> uint8 (size, size, channels): centre square, then BOX (shrinking) or BICUBIC."""
    from PIL import Image

    im = _to_mode(im, channels)
    box = square_box(im.width, im.height, crop)
    side = box[2] - box[0]
    resample = Image.Resampling.BOX if side >= size else Image.Resampling.BICUBIC
    # crop first: resizing with box= lets the filter read pixels outside the square
    arr = np.asarray(im.crop(box).resize((size, size), resample=resample), dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def decode_file(path: Path, channels: int, crop: int | None, size: int = IMAGE_SIZE) -> tuple[np.ndarray | None, str]:
    """(image, "") or (None, why it cannot be read)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if crop is None and im.format == "JPEG":
                im.draft(im.mode, (size, size))  # decode a large JPEG at a reduced scale: 4-8x faster
            im.load()
            return crop_resize(im, channels, crop, size), ""
    except Image.DecompressionBombError as e:
        return None, f"too large ({e})"
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as e:  # what Pillow raises on bad files
        return None, f"{type(e).__name__}: {e}"


def _file_has_colour(path: Path) -> bool | None:
    """Whether the file's header announces colour (None: unreadable)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return _has_colour(im)
    except Exception:  # noqa: BLE001 - any failure makes it an unreadable file, counted at decoding
        return None


# -- finding the files --------------------------------------------------------------------------------

def _what_it_is(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in EXTENSIONS:
        return f"a single image ({suffix}); give the folder that holds your images"
    return f"a file of another kind ({suffix or 'no extension'})"


def check_image_path(path: str | os.PathLike) -> Path:
    """The path as a folder or an array file, or a DataError naming it and the fix."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"data.path {str(p)!r} does not exist; give a folder of PNG/JPEG/WebP images or a .npy/.npz "
                        f"file of uint8 images (N, H, W[, C])")
    if p.is_file() and p.suffix.lower() not in ARRAY_EXTENSIONS:
        raise DataError(f"data.path {str(p)!r} is {_what_it_is(p)}; the images dataset reads a folder of "
                        f"PNG/JPEG/WebP images (searched recursively) or a .npy/.npz array of uint8 images")
    if not p.is_file() and not p.is_dir():
        raise DataError(f"data.path {str(p)!r} is neither a folder nor a file")
    return p


def scan_folder(root: Path) -> list[Path]:
    """Image files under `root`, recursively, sorted by relative path; hidden files and folders skipped."""
    found: list[Path] = []
    others: dict[str, int] = {}
    try:
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for fn in filenames:
                if fn.startswith("."):
                    continue
                suffix = os.path.splitext(fn)[1].lower()
                if suffix in EXTENSIONS:
                    found.append(Path(dirpath, fn))
                else:
                    others[suffix or "(none)"] = others.get(suffix or "(none)", 0) + 1
    except OSError as e:
        raise DataError(f"cannot read the folder {str(root)!r} ({e.strerror or e}); check its permissions") from e
    if not found:
        kinds = ", ".join(f"{n} {s}" for s, n in sorted(others.items(), key=lambda t: -t[1])[:5])
        raise DataError(f"no images under {str(root)!r} (searched recursively for {', '.join(EXTENSIONS)})"
                        + (f"; it holds {kinds} files" if kinds else "; the folder is empty")
                        + "; point data.path at the folder of your PNG/JPEG/WebP images")
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _require_count(n: int, path: Path, what: str) -> None:
    if n < MIN_IMAGES:
        raise DataError(f"{str(path)!r} has {n} {what}, too few: untwine needs at least {MIN_IMAGES} to train on "
                        f"and hold out {int(MIN_IMAGES * 0.1)}+ for evaluation; add images (or augment them "
                        f"yourself) and try again")


def folder_labels(root: Path, files: Sequence[Path]) -> ImageLabels | None:
    """The first-level folder as a label "folder", when every image lies in one of 2+ subfolders."""
    tops = [p.relative_to(root).parts for p in files]
    if any(len(parts) < 2 for parts in tops):
        return None
    names = np.asarray([parts[0] for parts in tops])
    if len(np.unique(names)) < 2:
        return None
    return labels_from_columns(["folder"], names)


# -- the cache ----------------------------------------------------------------------------------------

def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._")[:40] or "images"


def files_digest(files: Sequence[Path], root: Path, extra: str) -> str:
    """What the cache key names: each file's relative path, size and modification time, and the options."""
    h = hashlib.sha256(f"{DECODER_VERSION}|{IMAGE_SIZE}|{extra}\n".encode())
    for p in files:
        try:
            st = p.stat()
            h.update(f"{p.relative_to(root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p.relative_to(root).as_posix()}\0missing\n".encode())
    return h.hexdigest()[:16]


def _workers(workers: int | None) -> int:
    return max(1, int(workers) if workers else (os.cpu_count() or 1))


def infer_channels(files: Sequence[Path], workers: int | None = None) -> int:
    """3 when any file announces colour, else 1 (headers only: no decoding)."""
    with ThreadPoolExecutor(_workers(workers)) as pool:
        return 3 if any(pool.map(_file_has_colour, files, chunksize=64)) else 1


def _report_bad(bad: list[tuple[str, str]], total: int, source: str) -> None:
    if not bad:
        return
    listed = "; ".join(f"{name} ({why})" for name, why in bad[:5]) + (" ..." if len(bad) > 5 else "")
    if len(bad) > MAX_BAD_SHARE * total:
        raise DataError(f"{len(bad)} of {total} files under {source!r} cannot be read as images (more than "
                        f"{MAX_BAD_SHARE:.0%}): {listed}. Remove or repair them (e.g. re-export them as PNG)")
    print(f"untwine: skipped {len(bad)} of {total} files under {source!r} that cannot be read as images: {listed}",
          file=sys.stderr)


def decoded_images(key: str, n: int, channels: int, decode_chunks, *, cache_dir=None, progress: bool = True,
                   description: str = "decoding images") -> tuple[np.memmap, np.ndarray]:
    """The cached images (n, 64, 64, C) and the mask of those that decoded: built together by one
    pass of `decode_chunks(ok)` (which yields image chunks and appends one flag per image to `ok`)
    when either entry is missing or damaged."""
    from untwine.data.cache import CacheEntry, build_entry, cache_root, check_entry, writable_cache_root

    version = f"images-{DECODER_VERSION}"
    shape = (n, IMAGE_SIZE, IMAGE_SIZE, channels)
    root = cache_root(cache_dir)
    images = CacheEntry(root, key, version, shape, np.dtype(np.uint8).str)
    decoded = CacheEntry(root, f"{key}-decoded", version, (n,), np.dtype(np.uint8).str)
    if check_entry(images) is not None or check_entry(decoded) is not None:
        writable_cache_root(cache_dir)
        ok: list[bool] = []
        build_entry(images, decode_chunks(ok), progress=progress, description=description)
        build_entry(decoded, [np.asarray(ok, dtype=np.uint8)], progress=False)
    arr = np.memmap(images.data_path, dtype=np.uint8, mode="r", shape=shape)
    mask = np.fromfile(decoded.data_path, dtype=np.uint8).astype(bool)
    return arr, mask


def decode_files(files: Sequence[Path], root: Path, *, channels: int, crop: int | None = None,
                 cache_dir=None, progress: bool = True, workers: int | None = None,
                 key_name: str | None = None, what: str = "images") -> tuple[np.memmap, np.ndarray]:
    """Decode `files` once into the cache (in parallel threads, with a progress bar): (images, decoded
    mask). Unreadable files are zero rows with mask False, reported on stderr (DataError past
    MAX_BAD_SHARE)."""
    key = f"images-{_slug(key_name or root.name)}-{files_digest(files, root, f'{channels}|{crop}')}-c{channels}"
    bad: list[tuple[str, str]] = []

    def chunks(ok: list[bool]) -> Iterator[np.ndarray]:
        with ThreadPoolExecutor(_workers(workers)) as pool:
            for start in range(0, len(files), _CHUNK):
                part = files[start:start + _CHUNK]
                out = np.zeros((len(part), IMAGE_SIZE, IMAGE_SIZE, channels), dtype=np.uint8)
                for i, (img, why) in enumerate(pool.map(lambda p: decode_file(p, channels, crop), part)):
                    ok.append(img is not None)
                    if img is None:
                        bad.append((part[i].relative_to(root).as_posix(), why))
                    else:
                        out[i] = img
                yield out
        _report_bad(bad, len(files), str(root))  # raises (nothing kept) when too many

    return decoded_images(key, len(files), channels, chunks, cache_dir=cache_dir, progress=progress,
                          description=f"decoding {len(files):,} {what} from {root.name or root}")


def _channels_arg(channels) -> int | None:
    if channels in (None, "", "auto"):
        return None
    if isinstance(channels, int) and channels in (1, 3):
        return channels
    key = str(channels).strip().lower()
    if key not in CHANNELS:
        raise DataError(f"channels={channels!r}; use 'grey', 'colour' or leave it out to infer it from the files")
    return CHANNELS[key]


def _cached_channels(files: Sequence[Path], root: Path, crop, cache_dir, key_name) -> int | None:
    """The channels of a valid cache entry of these files (a cache hit needs no header pass)."""
    from untwine.data.cache import entry_status

    for c in (3, 1):
        key = f"images-{_slug(key_name or root.name)}-{files_digest(files, root, f'{c}|{crop}')}-c{c}"
        _, why = entry_status(key, shape=(len(files), IMAGE_SIZE, IMAGE_SIZE, c), dtype=np.uint8,
                              version=f"images-{DECODER_VERSION}", cache_dir=cache_dir)
        if why is None:
            return c
    return None


# -- the loaders --------------------------------------------------------------------------------------

def load_image_folder(path: str | os.PathLike, *, channels=None, crop: int | None = None, cache_dir=None,
                      progress: bool = True, workers: int | None = None, name: str | None = None) -> ImageData:
    """Every PNG/JPEG/WebP under `path` (recursively) as an ImageData (see the module's docstring)."""
    root = check_image_path(path)
    if root.is_file():
        return load_image_array(root, channels=channels, crop=crop, cache_dir=cache_dir, progress=progress, name=name)
    root = root.resolve()
    files = scan_folder(root)
    _require_count(len(files), root, "image files")
    c = _channels_arg(channels)
    if c is None:
        c = _cached_channels(files, root, crop, cache_dir, name) or infer_channels(files, workers)
    arr, ok = decode_files(files, root, channels=c, crop=crop, cache_dir=cache_dir, progress=progress,
                           workers=workers, key_name=name)
    rows = np.flatnonzero(ok)
    _require_count(len(rows), root, "readable images")
    labels = folder_labels(root, [files[i] for i in rows])
    skipped = [files[i].relative_to(root).as_posix() for i in np.flatnonzero(~ok)]
    return ImageData(name or root.name, arr, labels=labels, source=str(root), skipped=skipped,
                     rows=None if len(rows) == len(arr) else rows)


def _read_array_file(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(images, labels or None) of a .npy (the images) or .npz (key images/imgs/x or its only array;
    optional key labels). Never unpickles."""
    try:
        if path.suffix.lower() == ".npy":
            return np.load(path, mmap_mode="r", allow_pickle=False), None
        with np.load(path, allow_pickle=False) as z:
            keys = list(z.keys())
            key = next((k for k in ("images", "imgs", "x") if k in keys), None)
            if key is None:
                if len(keys) != 1:
                    raise DataError(f"{str(path)!r} holds the arrays {keys}; name the images array 'images' "
                                    f"(np.savez(path, images=..., labels=...))")
                key = keys[0]
            labels = np.asarray(z["labels"]) if "labels" in keys else None
            return np.asarray(z[key]), labels
    except DataError:
        raise
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{str(path)!r} cannot be read as a numpy {path.suffix} file ({e}); save your images with "
                        f"np.save / np.savez as uint8 (N, H, W[, C])") from e


def load_image_array(path: str | os.PathLike, *, channels=None, crop: int | None = None, cache_dir=None,
                     progress: bool = True, name: str | None = None, workers: int | None = None) -> ImageData:
    """uint8 images (N, H, W) or (N, H, W, C) with C in 1, 3, 4 from a .npy/.npz, cropped and resized
    as the folder's images into the cache."""
    from PIL import Image

    p = check_image_path(path)
    imgs, labels = _read_array_file(p)
    if imgs.dtype != np.uint8:
        raise DataError(f"{str(p)!r}: images must be uint8 (0..255); got {imgs.dtype}. Convert float images in "
                        f"[0, 1] with (x * 255).round().astype(np.uint8)")
    if imgs.ndim == 3:
        imgs = imgs[..., None]
    if imgs.ndim != 4 or imgs.shape[3] not in (1, 3, 4):
        raise DataError(f"{str(p)!r}: images must have shape (N, H, W) or (N, H, W, C) with C 1, 3 or 4; "
                        f"got {imgs.shape}")
    _require_count(len(imgs), p, "images")
    if labels is not None and len(labels) != len(imgs):
        raise DataError(f"{str(p)!r}: {len(labels)} labels for {len(imgs)} images; give one label row per image")
    c = _channels_arg(channels) or (1 if imgs.shape[3] == 1 else 3)
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[imgs.shape[3]]

    def chunks(ok: list[bool]) -> Iterator[np.ndarray]:
        for start in range(0, len(imgs), _CHUNK):
            part = np.asarray(imgs[start:start + _CHUNK])
            if part.shape[1:3] == (IMAGE_SIZE, IMAGE_SIZE) and part.shape[3] == c:
                out = part  # already what training reads
            else:
                out = np.stack([crop_resize(Image.fromarray(im[..., 0] if mode == "L" else im, mode), c, crop)
                                for im in part])
            ok.extend([True] * len(part))
            yield np.ascontiguousarray(out, dtype=np.uint8)

    root = p.resolve().parent
    key = f"images-{_slug(name or p.stem)}-{files_digest([p.resolve()], root, f'{c}|{crop}')}-c{c}"
    arr, _ = decoded_images(key, len(imgs), c, chunks, cache_dir=cache_dir, progress=progress,
                            description=f"converting {len(imgs):,} images from {p.name}")
    lab = None
    if labels is not None:
        lab = labels_from_columns(["label"] if labels.ndim == 1 or labels.shape[1] == 1
                                  else [f"label_{k}" for k in range(labels.shape[1])], labels)
    return ImageData(name or p.stem, arr, labels=lab, source=str(p.resolve()))


def load_images(path: str | os.PathLike, **kw) -> ImageData:
    """A folder of images or a .npy/.npz array file (see load_image_folder, load_image_array)."""
    p = check_image_path(path)
    return load_image_array(p, **kw) if p.is_file() else load_image_folder(p, **kw)


__all__ = ["EXTENSIONS", "IMAGE_SIZE", "ImageData", "ImageLabels", "MIN_IMAGES", "crop_resize", "decode_file",
           "load_image_array", "load_image_folder", "load_images", "scan_folder"]
