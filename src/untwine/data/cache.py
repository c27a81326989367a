"""On-disk cache of rendered datasets: memory-mapped arrays that are never trusted half-written.

Layout of a cache entry `KEY` in the cache directory:

    KEY.bin    the raw array bytes (C order), memory-mapped read-only when opened
    KEY.json   the manifest: format, key, renderer version, shape, dtype, size, and a CRC-32
               checksum of each chunk as it was written

The data file is written to a temporary file in the same directory, fsync'ed and moved into
place with os.replace; the manifest is written the same way, *after* the data. An entry is valid
only when the manifest matches what the caller expects (version, shape, dtype, size) and the
data's chunk checksums match. The checksums are verified the first time an entry is opened in a
process, so a damaged or truncated cache is detected and rebuilt, never used. CRC-32 (zlib) is
there to catch damage, not tampering: it runs at about 3 GB/s here, against 0.5-0.7 GB/s for
blake2b or sha256, which would make opening the 5.9 GB Shapes3D cache take 20 s.

The cache directory is, in order: the `cache_dir` argument, the environment variable
UNTWINE_CACHE, ~/.cache/untwine.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from untwine.errors import DataError
from untwine.io import atomic_write_bytes

ENV_VAR = "UNTWINE_CACHE"
FORMAT = 2
CHECKSUM = "crc32"
_HASH_BLOCK = 1 << 24  # read 16 MiB at a time when verifying

# Entries verified in this process, keyed by file identity, so re-opening is cheap.
_VERIFIED: set[tuple] = set()


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache directory (argument, else $UNTWINE_CACHE, else ~/.cache/untwine), not created."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "untwine"


def writable_cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache directory, created if missing; DataError if it cannot be written."""
    root = cache_root(cache_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-probe-{os.getpid()}-{secrets.token_hex(4)}"
        with open(probe, "wb") as fh:
            fh.write(b"ok")
        probe.unlink()
    except OSError as e:
        raise DataError(
            f"the cache directory {str(root)!r} cannot be written ({e.strerror or e}); set the "
            f"environment variable {ENV_VAR} to a writable directory or pass cache_dir=... "
            f"(CLI: --cache-dir)") from e
    return root


@dataclass(frozen=True)
class CacheEntry:
    """Where an entry lives and what it must contain."""

    root: Path
    key: str
    version: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def data_path(self) -> Path:
        return self.root / f"{self.key}.bin"

    @property
    def manifest_path(self) -> Path:
        return self.root / f"{self.key}.json"

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize

    def expected_header(self) -> dict:
        return {"format": FORMAT, "checksum": CHECKSUM, "key": self.key, "version": self.version,
                "shape": list(self.shape), "dtype": self.dtype, "nbytes": self.nbytes}


def _digest(data: bytes | memoryview) -> str:
    return f"{zlib.crc32(data):08x}"


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**27 else f"{nbytes:,} bytes"


def check_entry(entry: CacheEntry, verify: bool = True) -> str | None:
    """Why the entry is not a valid cache (a short reason), or None when it is valid."""
    if not entry.manifest_path.exists():
        return "no manifest"
    if not entry.data_path.exists():
        return "no data file"
    try:
        manifest = json.loads(entry.manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return f"unreadable manifest ({e})"
    if not isinstance(manifest, dict):
        return "manifest is not a JSON object"
    header = {k: manifest.get(k) for k in entry.expected_header()}
    if header != entry.expected_header():
        return f"manifest {header} does not match the expected {entry.expected_header()}"
    stat = entry.data_path.stat()
    if stat.st_size != entry.nbytes:
        return f"data file has {stat.st_size} bytes, expected {entry.nbytes} (truncated or wrong)"
    chunks = manifest.get("chunks")
    try:
        offsets = [int(c[0]) for c in chunks]
        covered = sum(int(c[1]) for c in chunks)
    except (TypeError, ValueError, IndexError, KeyError):
        return "malformed chunk list in the manifest"
    if covered != entry.nbytes or offsets != sorted(offsets):
        return "manifest chunk list does not cover the data"
    identity = (str(entry.data_path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns,
                manifest.get("chunks_digest"))
    if not verify or identity in _VERIFIED:
        return None
    with open(entry.data_path, "rb") as fh:
        for offset, length, digest in chunks:
            fh.seek(int(offset))
            crc = 0
            left = int(length)
            while left:
                block = fh.read(min(left, _HASH_BLOCK))
                if not block:
                    return f"data file ends early at chunk offset {offset}"
                crc = zlib.crc32(block, crc)
                left -= len(block)
            if f"{crc:08x}" != digest:
                return f"checksum mismatch in the chunk at byte {offset} (damaged data)"
    _VERIFIED.add(identity)
    return None


def _progress(enabled: bool):
    """A rich progress bar over bytes written (on stderr), or a disabled one."""
    from rich.console import Console
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)

    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                    TransferSpeedColumn(), TimeRemainingColumn(),
                    console=Console(stderr=True), transient=True, disable=not enabled)


def build_entry(entry: CacheEntry, chunks: Iterable[np.ndarray], progress: bool = True,
                description: str | None = None) -> None:
    """Write the chunks (consecutive C-order pieces of the array) as the entry, atomically."""
    entry.manifest_path.unlink(missing_ok=True)  # the old entry stops being valid first
    old_size = entry.data_path.stat().st_size if entry.data_path.exists() else 0
    free = shutil.disk_usage(entry.root).free
    if free + old_size < entry.nbytes:
        raise DataError(
            f"the cache {entry.key!r} needs {_size(entry.nbytes)} but {str(entry.root)!r} has "
            f"{_size(free)} free; free some space, or set {ENV_VAR} (or cache_dir=...) to a "
            f"directory on a larger disk")
    tmp = entry.data_path.with_name(f".{entry.data_path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    records = []
    written = 0
    bar = _progress(progress)
    try:
        with bar, open(tmp, "wb") as fh:
            task = bar.add_task(description or f"rendering {entry.key}", total=entry.nbytes)
            for chunk in chunks:
                arr = np.ascontiguousarray(chunk)
                if arr.dtype != np.dtype(entry.dtype):
                    raise DataError(f"cache {entry.key!r}: a chunk has dtype {arr.dtype}, expected {entry.dtype}")
                view = memoryview(arr).cast("B")
                if written + len(view) > entry.nbytes:
                    raise DataError(f"cache {entry.key!r}: chunks exceed the expected {entry.nbytes} bytes")
                fh.write(view)
                records.append([written, len(view), _digest(view)])
                written += len(view)
                bar.update(task, completed=written)
            if written != entry.nbytes:
                raise DataError(f"cache {entry.key!r}: chunks gave {written} bytes, expected {entry.nbytes}")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, entry.data_path)
    except OSError as e:  # disk full, quota, a directory gone read-only while writing
        raise DataError(
            f"writing the cache file {str(entry.data_path)!r} failed ({e.strerror or e}); nothing was "
            f"kept. Free space there, or set {ENV_VAR} (or cache_dir=...) to another directory") from e
    finally:
        if tmp.exists():
            tmp.unlink()
    manifest = dict(entry.expected_header(), chunks=records,
                    chunks_digest=_digest(json.dumps(records).encode()))  # identifies this build
    atomic_write_bytes(entry.manifest_path, json.dumps(manifest, indent=1).encode("utf-8"))
    stat = entry.data_path.stat()
    _VERIFIED.add((str(entry.data_path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns,
                   manifest["chunks_digest"]))


def open_array(key: str, *, shape: tuple[int, ...], dtype: str | np.dtype, version: str,
               chunks: Callable[[], Iterator[np.ndarray]], cache_dir: str | os.PathLike | None = None,
               verify: bool = True, progress: bool = True, description: str | None = None) -> np.memmap:
    """The cached array `key` memory-mapped read-only, built from `chunks()` if missing or damaged.

    Args:
        key: file stem of the entry (e.g. "dsprites-v1").
        shape, dtype: what the array must be.
        version: renderer version; a manifest of another version is rebuilt.
        chunks: called only when (re)building; yields consecutive C-order pieces of the array.
        cache_dir: the cache directory (default $UNTWINE_CACHE or ~/.cache/untwine).
        verify: check the checksums on the first open in this process.
        progress: show a rich progress bar while building.
    """
    entry = CacheEntry(cache_root(cache_dir), key, str(version), tuple(int(s) for s in shape),
                       np.dtype(dtype).str)
    reason = check_entry(entry, verify=verify)  # a valid entry in a read-only directory is fine
    if reason is not None:
        writable_cache_root(cache_dir)
        if entry.manifest_path.exists() or entry.data_path.exists():
            print(f"untwine: cache {str(entry.data_path)!r} is not valid ({reason}); rebuilding",
                  file=sys.stderr)
        build_entry(entry, chunks(), progress=progress, description=description)
    return np.memmap(entry.data_path, dtype=np.dtype(entry.dtype), mode="r", shape=entry.shape)


def entry_status(key: str, *, shape: tuple[int, ...], dtype: str | np.dtype, version: str,
                 cache_dir: str | os.PathLike | None = None, verify: bool = False) -> tuple[Path, str | None]:
    """(data path, reason it is not valid or None) without building anything."""
    entry = CacheEntry(cache_root(cache_dir), key, str(version), tuple(int(s) for s in shape),
                       np.dtype(dtype).str)
    return entry.data_path, check_entry(entry, verify=verify)
