"""Datasets by name: the procedural renderers, the original files when a path is given, and image
sets without factors (a folder or array of your own images, CelebA)."""
from __future__ import annotations

import os

from typing import TYPE_CHECKING

from untwine.data.base import GroundTruthData
from untwine.errors import DataError

if TYPE_CHECKING:
    from untwine.data.images import ImageData

# name -> (procedural?, what it is)
_DATASETS = {
    "dsprites": (True, "dSprites: 737,280 binary 64x64 sprites (procedural, or the original .npz with path=)"),
    "shapes3d": (True, "Shapes3D: 480,000 colour 64x64 scenes (procedural, or the original .h5 with path=)"),
    "mpi3d": (False, "MPI3D toy/realistic/real: colour 64x64 images (the original .npz, path= required; "
                     "variant='toy'|'realistic'|'real'): the complete 6 colours x 6 shapes grid, 1,036,800 images, "
                     "or disentanglement_lib's 4 x 4 grid without the held-out factors, 460,800 images (name "
                     "mpi3d_<variant>_without_heldout), chosen by the file's size or required with grid="),
    "cars3d": (False, "Cars3D: 17,568 colour 64x64 renders, elevation 4 x azimuth 24 x object 183 (path= the folder "
                      "of the original car .mat files, data/cars)"),
    "smallnorb": (False, "SmallNORB: grey 64x64 photos (path= the folder of the original smallnorb-*.mat files). "
                         "protocol='disentanglement_lib' (default): both splits, 48,600 images; category, elevation, "
                         "azimuth, lighting exposed, instance a nuisance factor resampled per observation. "
                         "protocol='disent' (or name smallnorb_disent): train split, 24,300 images, all five "
                         "factors incl. instance"),
    "images": (False, "your own images: path= a folder of PNG/JPEG/WebP files (recursive, any size: centre crop "
                      "and resize to 64x64) or a .npy/.npz of uint8 (N, H, W[, C]); channels='grey'|'colour' (else "
                      "inferred). No factors: evaluation reports what needs no labels"),
    "celeba": (False, "CelebA aligned and cropped: path= the folder of img_align_celeba/, list_attr_celeba.txt and "
                      "list_eval_partition.txt; 148-px centre crop to 64x64; the 40 binary attributes are weak labels"),
}
# image sets without a factor grid (data/images.py): their loaders take these options
_IMAGE_SETS = {"images": ("channels", "crop", "progress", "workers"), "celeba": ("progress", "workers")}
# alias -> (dataset, the options the alias stands for)
_ALIASES = {
    "3dshapes": ("shapes3d", {}),
    "mpi3d_toy": ("mpi3d", {"variant": "toy"}),
    "mpi3d_realistic": ("mpi3d", {"variant": "realistic"}),
    "mpi3d_real": ("mpi3d", {"variant": "real"}),
    "cars": ("cars3d", {}),
    "small_norb": ("smallnorb", {}),
    "smallnorb_dlib": ("smallnorb", {"protocol": "disentanglement_lib"}),
    "smallnorb_disent": ("smallnorb", {"protocol": "disent"}),
    "image_folder": ("images", {}),
    "folder": ("images", {}),
}
_DOWNLOADS = {
    "mpi3d": "the original MPI3D .npz file (from https://github.com/rr-learning/disentanglement_dataset)",
    "cars3d": "the folder of the original Cars3D .mat files (data/cars of "
              "http://www.scottreed.info/files/nips2015-analogy-data.tar.gz)",
    "smallnorb": "the folder of the six original SmallNORB files smallnorb-*-{dat,cat,info}.mat[.gz] (from "
                 "https://cs.nyu.edu/~ylclab/data/norb-v1.0-small/)",
    "images": "a folder of your PNG/JPEG/WebP images or a .npy/.npz array of uint8 images (untwine train: "
              "data.path=DIR)",
    "celeba": "the CelebA folder (img_align_celeba/, list_attr_celeba.txt, list_eval_partition.txt from "
              "http://mmlab.ie.cuhk.edu.hk/projects/CelebA.html)",
}


def available_datasets() -> dict[str, str]:
    """Known dataset names and a one-line description of each."""
    return {name: desc for name, (_, desc) in _DATASETS.items()}


def _canonical(name: str) -> tuple[str, dict]:
    if not isinstance(name, str):
        raise DataError(f"a dataset name must be a string; got {type(name).__name__}")
    key = name.strip().lower().replace("-", "_")
    key, extra = _ALIASES.get(key, (key, {}))
    if key not in _DATASETS:
        raise DataError(f"unknown dataset {name!r}; the known datasets are {sorted(_DATASETS)} "
                        f"(also as {sorted(_ALIASES)})")
    return key, dict(extra)


def _merge(name: str, extra: dict, kw: dict) -> dict:
    """The alias's options plus the caller's; an option given both ways must agree."""
    for key, value in extra.items():
        if key in kw and kw[key] != value:
            raise DataError(f"dataset name {name!r} means {key}={value!r}, but {key}={kw[key]!r} was given; "
                            f"use the plain name with {key}=, or drop {key}=")
    return {**extra, **kw}


def get_dataset(name: str, *, cache_dir: str | os.PathLike | None = None,
                path: str | os.PathLike | None = None, **kw) -> "GroundTruthData | ImageData":
    """The dataset `name`: rendered procedurally, or read from the original file(s) at `path`.

    Args:
        name: "dsprites", "shapes3d", "mpi3d", "cars3d" or "smallnorb", or an alias such as
            "mpi3d_real" or "smallnorb_disent" (see available_datasets()).
        cache_dir: cache directory of the procedural renderers (default $UNTWINE_CACHE or
            ~/.cache/untwine).
        path: the original file (dSprites .npz, Shapes3D .h5, MPI3D .npz) or folder (Cars3D .mat
            files, SmallNORB binary matrices); required for MPI3D, Cars3D and SmallNORB.
        **kw: passed on: `cached=True` / `progress=` for the renderers, `variant=` (and `grid=`) for MPI3D,
            `protocol=` (and `split=`, `seed=`) for SmallNORB, `num_objects=` for Cars3D, `channels=`
            ("grey"/"colour") and `crop=` for an image folder (an ImageData, without factors).
    """
    if isinstance(name, str) and name.strip().lower() == "table":
        # a table fit's runs (MODEL/stage1_run, MODEL/stage2_run) get their rows from `untwine tabular fit`
        raise DataError("data.name='table' is a run of `untwine tabular fit`, which hands the engine the "
                        "table's rows; continue an interrupted fit with `untwine tabular fit DATA.csv --out "
                        "MODEL_DIR --resume` (the fit's data and options), not `untwine train --resume`")
    key, extra = _canonical(name)
    kw = _merge(name, extra, kw)
    if key in _IMAGE_SETS and path is not None:
        unknown = set(kw) - set(_IMAGE_SETS[key]) - {"cached"}  # an image set is always cached
        if unknown:
            raise DataError(f"dataset {key!r} takes the options {list(_IMAGE_SETS[key])}; got {sorted(unknown)}")
        kw.pop("cached", None)
        if key == "celeba":
            from untwine.data.celeba import load_celeba

            return load_celeba(path, cache_dir=cache_dir, **kw)
        from untwine.data.images import load_images

        return load_images(path, cache_dir=cache_dir, **kw)
    if path is not None:
        if key == "cars3d":
            from untwine.data.cars3d import load_cars3d

            return load_cars3d(path, **kw)
        if key == "smallnorb":
            from untwine.data.smallnorb import load_smallnorb

            return load_smallnorb(path, **kw)
        from untwine.data import files  # the loaders; imported only when a file is asked for

        if key == "dsprites":
            return files.load_dsprites_npz(path, **kw)
        if key == "shapes3d":
            return files.load_shapes3d_h5(path, **kw)
        return files.load_mpi3d_npz(path, **kw)
    if key in _DOWNLOADS:
        raise DataError(f"dataset {name!r} has no procedural renderer; pass path= (CLI: --path) to "
                        f"{_DOWNLOADS[key]}")
    unknown = set(kw) - {"cached", "progress"}
    if unknown:
        raise DataError(f"procedural {key} takes the options cached= and progress=; got {sorted(unknown)} "
                        f"(variant= is for MPI3D files)")
    if key == "dsprites":
        from untwine.data.dsprites import DSprites

        return DSprites(cache_dir=cache_dir, **kw)
    from untwine.data.shapes3d import Shapes3D

    return Shapes3D(cache_dir=cache_dir, **kw)
