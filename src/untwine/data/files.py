"""Loaders for the original dataset files, exposing the same factor spaces as the procedural ones.

- dSprites  `dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz` (keys imgs, latents_values,
  latents_classes): streamed out of the archive chunk by chunk and held bit-packed (377 MB).
- Shapes3D  `3dshapes.h5` (datasets images, labels): lazily, memory-mapped when stored contiguous
  or read through h5py in index-sorted blocks when chunked, or into memory as uint8 only when
  asked (5.5 GB; never as float32).
- MPI3D     `mpi3d_{toy,realistic,real}.npz` (key images): memory-mapped when the archive member is
  stored uncompressed, otherwise read as uint8. Two grids, told apart by the number of images:
  the complete 6 colours x 6 shapes (1,036,800 images, the rr-learning release) and the 4 x 4 grid
  without the held-out colours and shapes (460,800 images: disentanglement_lib's mpi3d_toy and
  mpi3d_realistic, sim_{toy,realistic}_64x_ordered_without_heldout_factors.npz).

Labels map to factor classes by the rank of the distinct values of each column (the hue
convention 0..0.9 vs 0..1 differs between documents), and the stored order must be the factor
space's row-major order. Every wrong file raises a DataError naming the file, what was expected and
what was found. The npz readers parse the .npy headers themselves and never unpickle anything
(the dSprites archive also holds a pickled `metadata` entry, which is skipped).
The factor space and image size are arguments (the standard ones by default) so that tests can
write tiny files of the same format.
"""
from __future__ import annotations

import math
import os
import struct
import tokenize
import zipfile
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from untwine.data.arrays import ArrayGroundTruthData
from untwine.data.base import GroundTruthData
from untwine.data.factors import FactorSpace
from untwine.data.spaces import DSPRITES, MPI3D, MPI3D_WITHOUT_HELDOUT, SHAPES3D
from untwine.errors import DataError

MPI3D_VARIANTS = ("toy", "realistic", "real")
# the MPI3D grids a file may hold, told apart by its number of images (see load_mpi3d_npz)
MPI3D_GRIDS = {"complete": MPI3D, "without_heldout": MPI3D_WITHOUT_HELDOUT}
MPI3D_GRID_SOURCES = {
    "complete": "6 colours x 6 shapes: the rr-learning release, mpi3d_{toy,realistic,real}.npz",
    "without_heldout": "4 colours x 4 shapes: disentanglement_lib's mpi3d_toy and mpi3d_realistic, "
                       "sim_{toy,realistic}_64x_ordered_without_heldout_factors.npz",
}
# errors that a damaged or truncated archive / stream can raise while reading
_READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError)
# and what numpy's .npy header parser raises on a damaged header (it tokenizes the header's dict literal)
_HEADER_ERRORS = (*_READ_ERRORS, tokenize.TokenError, SyntaxError, RecursionError, MemoryError)
_NPY_VERSIONS = ((1, 0), (2, 0), (3, 0))
_CHUNK_BYTES = 64 << 20  # stream images in chunks of about 64 MB


# -- small helpers --------------------------------------------------------------------------------

def _existing_file(path: str | os.PathLike, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{what} file not found: {p}; check the path (expected {what} as distributed)")
    if not p.is_file():
        raise DataError(f"{what} path {p} is not a file; give the path of the {what} file itself")
    return p


@contextmanager
def _progress(total: int, description: str, enabled: bool):
    """Yield `advance(n)` of a transient rich progress bar over images (on stderr), or of a disabled one."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True), transient=True, disable=not enabled) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


def _show_progress(progress: bool | None, nbytes: int) -> bool:
    return bool(progress) if progress is not None else nbytes > (256 << 20)


# -- .npz archives, read without np.load (no pickle, streaming, memory-mapping) ---------------------

class _NpzArchive:
    """An .npz (zip of .npy) opened for header inspection, streaming and memory-mapping."""

    def __init__(self, path: Path, what: str):
        self.path, self.what = path, what
        try:
            self.zf = zipfile.ZipFile(path)
        except zipfile.BadZipFile as e:
            raise DataError(f"{what} file {path} is not a valid .npz (zip) archive or is truncated ({e}); "
                            f"expected the {what} .npz as distributed, re-download it") from None
        self.keys = sorted(n[:-4] for n in self.zf.namelist() if n.endswith(".npy"))

    def close(self) -> None:
        self.zf.close()

    def _info(self, key: str) -> zipfile.ZipInfo:
        if key not in self.keys:
            raise DataError(f"{self.what} file {self.path} has no key {key!r}; found keys {self.keys}; "
                            f"expected the {self.what} .npz as distributed")
        return self.zf.getinfo(key + ".npy")

    def _damaged(self, key: str, e: BaseException) -> DataError:
        return DataError(f"{self.what} file {self.path}: key {key!r} is damaged or truncated "
                         f"({type(e).__name__}: {e}); re-download the file")

    def _bad_header(self, key: str, problem: str) -> DataError:
        return DataError(f"{self.what} file {self.path}: the .npy header of key {key!r} is damaged ({problem}); "
                         f"the file is corrupt or not the original, re-download it")

    def _open_header(self, key: str):
        """Open the member and parse its .npy header: (stream, shape, fortran_order, dtype).

        The header must announce exactly the bytes the member holds, so a damaged shape (negative,
        huge, or cut) fails here, by name, before anything is read or mapped.
        """
        info = self._info(key)
        try:
            f = self.zf.open(info)
        except _READ_ERRORS as e:
            raise self._damaged(key, e) from None
        try:
            version = np.lib.format.read_magic(f)
            if version not in _NPY_VERSIONS:
                raise ValueError(f"unknown .npy format version {version[0]}.{version[1]}")
            # format 3.0 differs from 2.0 only in the header's text encoding (utf-8 vs latin-1)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(f)
            header_len = f.tell()
        except _HEADER_ERRORS as e:
            f.close()
            raise self._bad_header(key, f"{type(e).__name__}: {e}") from None
        if dtype.hasobject:
            f.close()
            raise DataError(f"{self.what} file {self.path}: key {key!r} holds Python objects (dtype {dtype}); "
                            f"untwine never unpickles data; expected a numeric array")
        shape = tuple(int(s) for s in shape)
        if any(s < 0 for s in shape):
            f.close()
            raise self._bad_header(key, f"negative dimension in shape {shape}")
        # Python integers: a huge damaged shape must not wrap around to a small or negative size
        data_bytes = math.prod(shape) * dtype.itemsize
        if header_len + data_bytes != info.file_size:
            f.close()
            raise self._bad_header(key, f"it announces {dtype} of shape {shape}, {data_bytes} bytes of data, but the "
                                        f"archive member holds {info.file_size - header_len}")
        return f, shape, bool(fortran), dtype

    def header(self, key: str) -> tuple[tuple[int, ...], np.dtype]:
        f, shape, _, dtype = self._open_header(key)
        f.close()
        return shape, dtype

    def expect(self, key: str, shape: tuple[int, ...], dtype) -> None:
        """Fail unless the member has exactly this shape and dtype."""
        found_shape, found_dtype = self.header(key)
        if found_shape != tuple(shape) or found_dtype != np.dtype(dtype):
            raise DataError(f"{self.what} file {self.path}: key {key!r} should be {np.dtype(dtype)} of shape "
                            f"{tuple(shape)}; found {found_dtype} of shape {found_shape}")

    def read(self, key: str) -> np.ndarray:
        """The whole member as an array (for label arrays of a few tens of MB)."""
        f, shape, fortran, dtype = self._open_header(key)
        with f:
            try:
                count = math.prod(shape)
                raw = f.read(count * dtype.itemsize)
                if len(raw) != count * dtype.itemsize:
                    raise EOFError(f"{len(raw)} of {count * dtype.itemsize} bytes")
                f.read(1)  # reach the end so that zipfile checks the CRC
            except _READ_ERRORS as e:
                raise self._damaged(key, e) from None
        arr = np.frombuffer(raw, dtype=dtype)
        return arr.reshape(shape, order="F" if fortran else "C")

    def stream_rows(self, key: str, rows_per_chunk: int,
                    row_shape: tuple[int, ...] | None = None) -> Iterator[np.ndarray]:
        """Yield consecutive blocks of rows of a C-ordered member.

        Rows are the first axis, or blocks of `row_shape` (the trailing axes) when given.
        """
        f, shape, fortran, dtype = self._open_header(key)
        with f:
            if fortran and len(shape) > 1:
                raise DataError(f"{self.what} file {self.path}: key {key!r} is stored in Fortran order; "
                                f"expected C order as written by numpy.savez of the original arrays")
            row_shape = tuple(row_shape) if row_shape is not None else shape[1:]
            n = math.prod(shape) // max(1, math.prod(row_shape))
            row_bytes = math.prod(row_shape) * dtype.itemsize
            done = 0
            try:
                while done < n:
                    m = min(rows_per_chunk, n - done)
                    raw = f.read(m * row_bytes)
                    if len(raw) != m * row_bytes:
                        raise EOFError(f"rows {done}..{done + m} cut short: got {len(raw)} of {m * row_bytes} bytes")
                    yield np.frombuffer(raw, dtype=dtype).reshape((m, *row_shape))
                    done += m
                f.read(1)  # reach the end so that zipfile checks the CRC
            except _READ_ERRORS as e:
                raise self._damaged(key, e) from None

    def memmap(self, key: str) -> np.memmap | None:
        """A read-only memory map of an uncompressed, C-ordered member, or None if it cannot be mapped."""
        info = self._info(key)
        if info.compress_type != zipfile.ZIP_STORED:
            return None
        f, shape, fortran, dtype = self._open_header(key)
        with f:
            header_len = f.tell()
        if fortran and len(shape) > 1:
            return None
        # member data start: local file header (30 bytes + name + extra) + .npy header
        with open(self.path, "rb") as raw:
            raw.seek(info.header_offset)
            local = raw.read(30)
        if len(local) != 30 or local[:4] != b"PK\x03\x04":
            raise DataError(f"{self.what} file {self.path}: the zip entry of key {key!r} is damaged; re-download it")
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        offset = info.header_offset + 30 + name_len + extra_len + header_len
        needed = offset + math.prod(shape) * dtype.itemsize
        if needed > self.path.stat().st_size:
            raise DataError(f"{self.what} file {self.path} is truncated: key {key!r} needs {needed} bytes, the file "
                            f"has {self.path.stat().st_size}; re-download it")
        return np.memmap(self.path, dtype=dtype, mode="r", offset=offset, shape=shape)


@contextmanager
def _npz(path: str | os.PathLike, what: str):
    arc = _NpzArchive(_existing_file(path, what), what)
    try:
        yield arc
    finally:
        arc.close()


# -- labels -> classes ------------------------------------------------------------------------------

def classes_by_rank(labels: np.ndarray, space: FactorSpace, source: str) -> np.ndarray:
    """(N, K) label values -> (N, K) classes: the rank of each value among its column's distinct values.

    Values are rounded to 6 decimals first, so float noise in a stored label does not split a class.
    """
    out = np.empty(labels.shape, dtype=np.int64)
    for i, (name, size) in enumerate(zip(space.names, space.sizes)):
        uniq, inv = np.unique(np.round(labels[:, i], 6), return_inverse=True)
        if len(uniq) != size:
            raise DataError(f"{source}: label column {i} ({name}) has {len(uniq)} distinct values; expected {size} "
                            f"(factor space {space!r})")
        out[:, i] = inv.reshape(-1)
    return out


def check_row_major(classes: np.ndarray, space: FactorSpace, source: str) -> None:
    """Fail unless row i of `classes` is the factor vector of flat index i."""
    n = len(space)
    block = 1 << 18  # bounded memory on millions of rows
    for start in range(0, n, block):
        stop = min(n, start + block)
        want = space.classes_of(np.arange(start, stop), validate=False)
        bad = np.flatnonzero((classes[start:stop] != want).any(axis=1))
        if bad.size:
            row = start + int(bad[0])
            raise DataError(
                f"{source} is not stored in the row-major order of {space!r} (last factor fastest): row {row} has "
                f"classes {classes[row].tolist()}, the order expects {want[bad[0]].tolist()}; "
                f"{bad.size}+ rows differ. Use the original file, or reorder its rows to the row-major order")


# -- dSprites ---------------------------------------------------------------------------------------

def load_dsprites_npz(path: str | os.PathLike, factor_space: FactorSpace = DSPRITES, name: str = "dsprites",
                      image_hw: tuple[int, int] = (64, 64), progress: bool | None = None) -> ArrayGroundTruthData:
    """The original dSprites .npz as a bit-packed in-memory dataset (about 377 MB).

    Expected keys: imgs (N, 64, 64) uint8 of 0/1, latents_values (N, 6) float64, latents_classes (N, 6)
    int64, N = 737,280; the first latent (color) has a single value and is dropped.
    """
    what = "dSprites"
    n, k = len(factor_space), factor_space.num_factors
    h, w = image_hw
    with _npz(path, what) as arc:
        arc.expect("imgs", (n, h, w), np.uint8)
        arc.expect("latents_values", (n, k + 1), np.float64)
        arc.expect("latents_classes", (n, k + 1), np.int64)
        values, stored = arc.read("latents_values"), arc.read("latents_classes")
        source = f"{what} file {arc.path}"
        if np.unique(values[:, 0]).size != 1 or np.unique(stored[:, 0]).size != 1:
            raise DataError(f"{source}: the first latent (color) should have a single value; found "
                            f"{np.unique(values[:, 0]).size} distinct values")
        classes = classes_by_rank(values[:, 1:], factor_space, source)
        bad = np.flatnonzero((classes != stored[:, 1:]).any(axis=1))
        if bad.size:
            raise DataError(f"{source}: latents_classes disagree with the ranks of latents_values at row "
                            f"{int(bad[0])} ({stored[bad[0], 1:].tolist()} vs {classes[bad[0]].tolist()}); "
                            f"the file is inconsistent, re-download it")
        check_row_major(classes, factor_space, source)

        row_bytes = (h * w + 7) // 8
        packed = np.empty((n, row_bytes), dtype=np.uint8)
        rows_per_chunk = max(1, _CHUNK_BYTES // (h * w))
        done = 0
        with _progress(n, f"reading {what} images", _show_progress(progress, n * h * w)) as advance:
            for block in arc.stream_rows("imgs", rows_per_chunk):
                top = int(block.max(initial=0))
                if top > 1:
                    raise DataError(f"{source}: imgs should be binary (0/1); found value {top} in rows "
                                    f"{done}..{done + len(block) - 1}")
                packed[done:done + len(block)] = np.packbits(block.reshape(len(block), -1), axis=1)
                done += len(block)
                advance(len(block))
    return ArrayGroundTruthData(name, factor_space, packed, image_shape=(1, h, w), packed=True)


# -- Shapes3D -------------------------------------------------------------------------------------

class H5GroundTruthData(GroundTruthData):
    """Images read on demand from a chunked (e.g. compressed) HDF5 dataset in row-major factor order.

    (A contiguous uncompressed dataset is memory-mapped instead; see `load_shapes3d_h5`.)

    Each request reads its distinct indices in increasing order (what HDF5 reads fastest), in
    blocks of `read_block` rows, and scatters them back to the requested order. The file opens
    lazily once per process, so the object can go to DataLoader workers.
    """

    def __init__(self, path: Path, name: str, factor_space: FactorSpace, image_shape: tuple[int, int, int],
                 key: str = "images", read_block: int = 1024, chunk_cache_bytes: int = 256 << 20):
        self.path, self.name, self.factor_space, self.image_shape = Path(path), name, factor_space, image_shape
        self.key, self.read_block, self.chunk_cache_bytes = key, int(read_block), int(chunk_cache_bytes)
        self._file = None
        self._pid = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_file"], state["_pid"] = None, None
        return state

    def _dataset(self):
        import h5py

        if self._file is None or self._pid != os.getpid():
            try:
                # a large chunk cache: random reads from compressed chunks decompress each chunk once
                self._file = h5py.File(self.path, "r", rdcc_nbytes=self.chunk_cache_bytes, rdcc_nslots=100_003)
            except OSError as e:
                raise DataError(f"cannot open {self.name} file {self.path} ({e}); check that it still exists") from None
            self._pid = os.getpid()
        return self._file[self.key]

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None

    def images(self, indices: np.ndarray) -> np.ndarray:
        idx = self.factor_space.check_indices(np.asarray(indices).reshape(-1))
        uniq, inv = np.unique(idx, return_inverse=True)
        ds = self._dataset()
        c, h, w = self.image_shape
        rows = np.empty((len(uniq), h, w, c), dtype=np.uint8)
        try:
            for s in range(0, len(uniq), self.read_block):
                part = uniq[s:s + self.read_block]
                if part[-1] - part[0] + 1 == len(part):  # a contiguous run: one slab
                    ds.read_direct(rows, np.s_[int(part[0]):int(part[-1]) + 1], np.s_[s:s + len(part)])
                else:
                    rows[s:s + len(part)] = ds[part]
        except (OSError, ValueError) as e:
            raise DataError(f"{self.name} file {self.path}: reading images failed ({e}); the file may be "
                            f"truncated or damaged, re-download it") from None
        return rows[inv.reshape(-1)]


def load_shapes3d_h5(path: str | os.PathLike, factor_space: FactorSpace = SHAPES3D, name: str = "shapes3d",
                     image_hw: tuple[int, int] = (64, 64), in_memory: bool = False,
                     progress: bool | None = None) -> GroundTruthData:
    """The original Shapes3D .h5: lazy by default, or read into memory as uint8 (5.5 GB) with in_memory=True.

    Lazy means memory-mapped when the images are stored contiguous and uncompressed (as fast as
    memory once the OS has the pages), else read through h5py on demand (`H5GroundTruthData`).

    Expected datasets: images (480000, 64, 64, 3) uint8 and labels (480000, 6) float.
    """
    import h5py

    what = "Shapes3D"
    p = _existing_file(path, what)
    n, k = len(factor_space), factor_space.num_factors
    h, w = image_hw
    source = f"{what} file {p}"
    try:
        f = h5py.File(p, "r")
    except OSError as e:
        raise DataError(f"{source} is not a readable HDF5 file or is truncated ({e}); expected the {what} .h5 "
                        f"as distributed (3dshapes.h5), re-download it") from None
    with f:
        for key in ("images", "labels"):
            if not isinstance(f.get(key), h5py.Dataset):
                raise DataError(f"{source} has no dataset {key!r}; found {sorted(f.keys())}; expected datasets "
                                f"'images' and 'labels'")
        images, labels = f["images"], f["labels"]
        if images.shape != (n, h, w, 3) or images.dtype != np.uint8:
            raise DataError(f"{source}: dataset 'images' should be uint8 of shape {(n, h, w, 3)}; found "
                            f"{images.dtype} of shape {images.shape}")
        if labels.shape != (n, k) or labels.dtype.kind != "f":
            raise DataError(f"{source}: dataset 'labels' should be float64 of shape {(n, k)}; found "
                            f"{labels.dtype} of shape {labels.shape}")
        try:
            values = labels[...]
            images[0], images[n - 1]  # noqa: B018 - probe both ends: a truncated file fails here
        except (OSError, ValueError) as e:
            raise DataError(f"{source}: reading failed ({e}); the file is truncated or damaged, "
                            f"re-download it") from None
        check_row_major(classes_by_rank(values, factor_space, source), factor_space, source)
        offset = images.id.get_offset() if images.chunks is None and images.compression is None else None
        if not in_memory:
            if offset is not None:
                # contiguous and uncompressed: map the bytes directly (HDF5 reads cost ~100 us an image)
                if offset + n * h * w * 3 > p.stat().st_size:
                    raise DataError(f"{source} is truncated: 'images' needs {offset + n * h * w * 3} bytes, the "
                                    f"file has {p.stat().st_size}; re-download it")
                return ArrayGroundTruthData(name, factor_space,
                                            np.memmap(p, dtype=np.uint8, mode="r", offset=offset, shape=(n, h, w, 3)))
            return H5GroundTruthData(p, name, factor_space, (3, h, w))
        out = np.empty((n, h, w, 3), dtype=np.uint8)
        block = max(1, _CHUNK_BYTES // (h * w * 3))
        with _progress(n, f"reading {what} images", _show_progress(progress, out.nbytes)) as advance:
            for s in range(0, n, block):
                e_ = min(n, s + block)
                try:
                    images.read_direct(out, np.s_[s:e_], np.s_[s:e_])
                except (OSError, ValueError) as e:
                    raise DataError(f"{source}: reading images {s}..{e_} failed ({e}); the file is truncated "
                                    f"or damaged, re-download it") from None
                advance(e_ - s)
    return ArrayGroundTruthData(name, factor_space, out)


# -- MPI3D ----------------------------------------------------------------------------------------

def _mpi3d_shapes(space: FactorSpace, h: int, w: int) -> list[tuple[int, ...]]:
    """The image array shapes a file of `space` may have: flat rows, or the grid reshaped."""
    return [(len(space), h, w, 3), (*space.sizes, h, w, 3)]


def _mpi3d_expected(grid: str, space: FactorSpace, h: int, w: int, known: bool) -> str:
    shapes = " or ".join(str(s) for s in _mpi3d_shapes(space, h, w))
    source = f", {MPI3D_GRID_SOURCES[grid]}" if known else ""
    return f"{shapes} ({grid} grid, {len(space):,} images{source})"


def load_mpi3d_npz(path: str | os.PathLike, variant: str = "toy", grid: str | None = None,
                   factor_space: FactorSpace | None = None, image_hw: tuple[int, int] = (64, 64),
                   progress: bool | None = None) -> ArrayGroundTruthData:
    """An MPI3D .npz (key images: uint8 (N, 64, 64, 3), or the grid reshaped) in row-major factor order.

    Two grids exist and the file's number of images says which it holds (`MPI3D_GRIDS`):

    - "complete": 6 colours x 6 shapes x 2 x 3 x 3 x 40 x 40 = 1,036,800 images, the rr-learning
      release (mpi3d_toy / realistic / real.npz); dataset name `mpi3d_{variant}`.
    - "without_heldout": 4 colours x 4 shapes x ... = 460,800 images, the NeurIPS 2019 challenge
      files that disentanglement_lib's mpi3d_toy and mpi3d_realistic read (factor sizes
      [4, 4, 2, 3, 3, 40, 40]; sim_{toy,realistic}_64x_ordered_without_heldout_factors.npz);
      dataset name `mpi3d_{variant}_without_heldout`. Colour and shape are class numbers 0..3:
      the file does not record which 4 of the 6 colours and shapes it keeps.

    Args:
        variant: "toy", "realistic" or "real", the rendering (a label: the file decides the grid).
        grid: "complete" or "without_heldout" to require that grid; None accepts either.
        factor_space: a custom grid instead (tests), named by `grid` (default "complete").
        image_hw: the image size (64x64 in the originals).
        progress: show a progress bar while reading a compressed file.

    Memory-mapped when the archive stores the array uncompressed (as numpy.savez does), otherwise
    read into memory (12.7 GB for the complete grid, 5.7 GB without the held-out factors).
    """
    if variant not in MPI3D_VARIANTS:
        raise DataError(f"unknown MPI3D variant {variant!r}; use one of {MPI3D_VARIANTS}")
    if grid is not None and grid not in MPI3D_GRIDS:
        raise DataError(f"unknown MPI3D grid {grid!r}; use one of {tuple(MPI3D_GRIDS)} or leave it out "
                        f"(the file's number of images decides)")
    if factor_space is not None:
        grids = {grid or "complete": factor_space}
    else:
        grids = dict(MPI3D_GRIDS) if grid is None else {grid: MPI3D_GRIDS[grid]}
    what = f"MPI3D-{variant}"
    h, w = image_hw
    with _npz(path, what) as arc:
        shape, dtype = arc.header("images")
        chosen = [g for g, space in grids.items() if shape in _mpi3d_shapes(space, h, w)]
        if dtype != np.uint8 or not chosen:
            wanted = "; or ".join(_mpi3d_expected(g, space, h, w, known=factor_space is None)
                                  for g, space in grids.items())
            hint = ""
            if dtype == np.uint8 and factor_space is None:
                other = [g for g, space in MPI3D_GRIDS.items()
                         if g not in grids and shape in _mpi3d_shapes(space, h, w)]
                hint = f"; the file holds the {other[0]} grid: leave grid= out to accept it" if other else ""
            raise DataError(f"{what} file {arc.path}: key 'images' should be uint8 of shape {wanted}; found "
                            f"{dtype} of shape {shape}{hint}")
        grid = chosen[0]
        space = grids[grid]
        n = len(space)
        images = arc.memmap("images")
        if images is None:
            images = np.empty((n, h, w, 3), dtype=np.uint8)
            rows = max(1, _CHUNK_BYTES // (h * w * 3))
            done = 0
            with _progress(n, f"reading {what} images", _show_progress(progress, images.nbytes)) as advance:
                for block in arc.stream_rows("images", rows, row_shape=(h, w, 3)):
                    images[done:done + len(block)] = block
                    done += len(block)
                    advance(len(block))
        images = images.reshape(n, h, w, 3)
    name = f"mpi3d_{variant}" if grid == "complete" else f"mpi3d_{variant}_{grid}"
    data = ArrayGroundTruthData(name, space, images)
    data.grid = grid
    data.description = (f"MPI3D-{variant}, {grid} grid: {n:,} colour {h}x{w} images, factors "
                        + " x ".join(f"{f} {k}" for f, k in zip(space.names, space.sizes)))
    return data
