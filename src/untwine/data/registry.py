"""Datasets by name: the procedural renderers, or the original files when a path is given."""
from __future__ import annotations

import os

from untwine.data.base import GroundTruthData
from untwine.errors import DataError

# name -> (procedural?, what it is)
_DATASETS = {
    "dsprites": (True, "dSprites: 737,280 binary 64x64 sprites (procedural, or the original .npz with path=)"),
    "shapes3d": (True, "Shapes3D: 480,000 colour 64x64 scenes (procedural, or the original .h5 with path=)"),
    "mpi3d": (False, "MPI3D toy/realistic/real: 1,036,800 colour 64x64 images (the original .npz, path= required; "
                     "variant='toy'|'realistic'|'real')"),
}
_ALIASES = {"3dshapes": "shapes3d", "mpi3d_toy": "mpi3d", "mpi3d_realistic": "mpi3d", "mpi3d_real": "mpi3d"}


def available_datasets() -> dict[str, str]:
    """Known dataset names and a one-line description of each."""
    return {name: desc for name, (_, desc) in _DATASETS.items()}


def _canonical(name: str) -> tuple[str, dict]:
    if not isinstance(name, str):
        raise DataError(f"a dataset name must be a string; got {type(name).__name__}")
    key = name.strip().lower().replace("-", "_")
    extra = {}
    if key.startswith("mpi3d_") and key in _ALIASES:
        extra["variant"] = key.split("_", 1)[1]
    key = _ALIASES.get(key, key)
    if key not in _DATASETS:
        raise DataError(f"unknown dataset {name!r}; the known datasets are {sorted(_DATASETS)} "
                        f"(MPI3D variants also as mpi3d_toy, mpi3d_realistic, mpi3d_real)")
    return key, extra


def get_dataset(name: str, *, cache_dir: str | os.PathLike | None = None,
                path: str | os.PathLike | None = None, **kw) -> GroundTruthData:
    """The dataset `name`: rendered procedurally, or read from the original file at `path`.

    Args:
        name: "dsprites", "shapes3d" or "mpi3d" (see available_datasets()).
        cache_dir: cache directory of the procedural renderers (default $UNTWINE_CACHE or
            ~/.cache/untwine).
        path: the original file (dSprites .npz, Shapes3D .h5, MPI3D .npz); required for MPI3D.
        **kw: passed on: `cached=True` / `progress=` for the renderers, `variant=` for MPI3D.
    """
    key, extra = _canonical(name)
    kw = {**extra, **kw}
    if path is not None:
        from untwine.data import files  # the loaders; imported only when a file is asked for

        if key == "dsprites":
            return files.load_dsprites_npz(path, **kw)
        if key == "shapes3d":
            return files.load_shapes3d_h5(path, **kw)
        return files.load_mpi3d_npz(path, **kw)
    if key == "mpi3d":
        raise DataError(f"dataset {name!r} has no procedural renderer; pass path= (CLI: --path) to the "
                        f"original MPI3D .npz file (from https://github.com/rr-learning/disentanglement_dataset)")
    unknown = set(kw) - {"cached", "progress"}
    if unknown:
        raise DataError(f"procedural {key} takes the options cached= and progress=; got {sorted(unknown)} "
                        f"(variant= is for MPI3D files)")
    if key == "dsprites":
        from untwine.data.dsprites import DSprites

        return DSprites(cache_dir=cache_dir, **kw)
    from untwine.data.shapes3d import Shapes3D

    return Shapes3D(cache_dir=cache_dir, **kw)
