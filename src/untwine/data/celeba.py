"""CelebA, aligned and cropped: 202,599 JPEG faces (178x218) with 40 binary attributes.

    ds = get_dataset("celeba", path="CelebA/")   # decoded once (148-px centre crop, 64x64) into the cache

The folder as distributed (http://mmlab.ie.cuhk.edu.hk/projects/CelebA.html), searched for:

    img_align_celeba/000001.jpg ... 202599.jpg     (also img_align_celeba/img_align_celeba/, Kaggle's)
    list_attr_celeba.txt      line 1: the number of images; line 2: the 40 attribute names;
                              then one line per image: "000001.jpg -1  1  1 -1 ..." (-1 absent, 1 present)
    list_eval_partition.txt   one line per image: "000001.jpg 0" (0 train, 1 validation, 2 test)

(Also in Anno/ and Eval/ subfolders, as in the Google Drive release.) Every image is centre-cropped to
148x148 (the crop of most VAE papers on CelebA, which keeps the face) and resized to 64x64 (BOX
filter). The test partition is the evaluation split: no training batch returns it; training draws
from the train and validation partitions. The attributes are the dataset's `labels`: 40 weak, binary
factors (0 absent, 1 present) for the probes and the classifier of sample quality, not a grid.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from untwine.data.images import ImageData, ImageLabels, _require_count, decode_files
from untwine.errors import DataError

CELEBA_CROP = 148
NUM_ATTRIBUTES = 40
ATTR_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
IMAGE_FOLDER = "img_align_celeba"
TEST_PARTITION = 2


def _find(root: Path, name: str, folder: bool = False) -> Path | None:
    for sub in ("", "Anno", "Eval", IMAGE_FOLDER):
        candidate = root / sub / name if sub else root / name
        if candidate.is_dir() if folder else candidate.is_file():
            return candidate
    return None


def _image_folder(root: Path) -> Path:
    found = _find(root, IMAGE_FOLDER, folder=True)
    if found is None:
        raise DataError(f"CelebA folder {str(root)!r} has no {IMAGE_FOLDER}/ folder of JPEG images; give the folder "
                        f"that holds {IMAGE_FOLDER}/, {ATTR_FILE} and {PARTITION_FILE} (the aligned-and-cropped release)")
    nested = found / IMAGE_FOLDER  # Kaggle's archive nests it once more
    return nested if nested.is_dir() else found


def read_attributes(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """(file names, the 40 attribute names, int8 (N, 40) of 0/1) from list_attr_celeba.txt."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {str(path)!r} ({e}); expected CelebA's {ATTR_FILE}") from e
    if len(lines) < 3:
        raise DataError(f"{str(path)!r} has {len(lines)} lines; {ATTR_FILE} starts with the number of images and "
                        f"the attribute names, then one line per image")
    try:
        count = int(lines[0].strip())
    except ValueError:
        raise DataError(f"{str(path)!r}: the first line should be the number of images; got {lines[0][:40]!r}") from None
    names = lines[1].split()
    if len(names) != NUM_ATTRIBUTES:
        raise DataError(f"{str(path)!r}: the second line should name {NUM_ATTRIBUTES} attributes; found {len(names)}")
    rows = [line.split() for line in lines[2:] if line.strip()]
    if len(rows) != count:
        raise DataError(f"{str(path)!r} announces {count} images but lists {len(rows)}; the file is truncated")
    files = [r[0] for r in rows]
    try:
        values = np.asarray([r[1:] for r in rows], dtype=np.int8)
    except ValueError:
        bad = next(i for i, r in enumerate(rows) if len(r) != NUM_ATTRIBUTES + 1)
        raise DataError(f"{str(path)!r}, line {bad + 3}: expected a file name and {NUM_ATTRIBUTES} values of -1 or 1; "
                        f"got {len(rows[bad]) - 1} values") from None
    if values.ndim != 2 or values.shape[1] != NUM_ATTRIBUTES or not np.isin(values, (-1, 1)).all():
        raise DataError(f"{str(path)!r}: every image needs {NUM_ATTRIBUTES} values of -1 or 1")
    return files, names, (values > 0).astype(np.int8)


def read_partition(path: Path, files: list[str]) -> np.ndarray:
    """The partition (0 train, 1 validation, 2 test) of each of `files`, from list_eval_partition.txt."""
    try:
        pairs = [line.split() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {str(path)!r} ({e}); expected CelebA's {PARTITION_FILE}") from e
    try:
        part = {name: int(p) for name, p in pairs}
    except ValueError:
        raise DataError(f"{str(path)!r}: every line should be 'FILE PARTITION' (0, 1 or 2)") from None
    missing = [f for f in files if f not in part]
    if missing:
        raise DataError(f"{str(path)!r} gives no partition for {len(missing)} images of {ATTR_FILE} (e.g. "
                        f"{missing[0]}); use the two files of one CelebA release")
    out = np.asarray([part[f] for f in files], dtype=np.int8)
    if not np.isin(out, (0, 1, 2)).all():
        raise DataError(f"{str(path)!r}: partitions must be 0 (train), 1 (validation) or 2 (test)")
    return out


def load_celeba(path: str | os.PathLike, *, cache_dir=None, progress: bool = True, workers: int | None = None,
                crop: int = CELEBA_CROP) -> ImageData:
    """CelebA from its folder (see the module's docstring) as an ImageData with 40 binary labels."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"CelebA path {str(root)!r} is not a folder; give the folder that holds {IMAGE_FOLDER}/, "
                        f"{ATTR_FILE} and {PARTITION_FILE}")
    root = root.resolve()
    attr_path, part_path = _find(root, ATTR_FILE), _find(root, PARTITION_FILE)
    for what, found in ((ATTR_FILE, attr_path), (PARTITION_FILE, part_path)):
        if found is None:
            raise DataError(f"CelebA folder {str(root)!r} has no {what} (looked in it and in Anno/, Eval/); it comes "
                            f"with the aligned-and-cropped release")
    images_dir = _image_folder(root)
    names, attr_names, attrs = read_attributes(attr_path)
    partition = read_partition(part_path, names)
    _require_count(len(names), attr_path, "images")
    files = [images_dir / n for n in names]
    arr, ok = decode_files(files, images_dir, channels=3, crop=crop, cache_dir=cache_dir, progress=progress,
                           workers=workers, key_name=f"celeba{crop}", what="CelebA faces")
    rows = np.flatnonzero(ok)
    _require_count(len(rows), images_dir, "readable images")
    labels = ImageLabels(tuple(attr_names), attrs[rows].astype(np.int64), tuple(("absent", "present") for _ in attr_names))
    return ImageData("celeba", arr, labels=labels, eval_mask=partition[rows] == TEST_PARTITION, source=str(root),
                     skipped=[names[i] for i in np.flatnonzero(~ok)], rows=None if len(rows) == len(arr) else rows)


__all__ = ["CELEBA_CROP", "load_celeba", "read_attributes", "read_partition"]
