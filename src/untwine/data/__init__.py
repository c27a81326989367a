"""Ground-truth factor datasets: factor spaces, procedural dSprites and Shapes3D, the on-disk cache,
loaders of the original files and the samplers.

    from untwine.data import get_dataset, ObservationSampler
    ds = get_dataset("dsprites")                  # rendered on demand; cached=True fills the disk cache
    x = ds.batch(ds.factor_space.index_of(ds.factor_space.sample(64, rng)))   # float32 (64, 1, 64, 64)
"""
from __future__ import annotations

import importlib

from untwine.data.base import GroundTruthData
from untwine.data.cache import cache_root
from untwine.data.dsprites import DSprites
from untwine.data.factors import Factor, FactorSpace
from untwine.data.registry import available_datasets, get_dataset
from untwine.data.shapes3d import Shapes3D
from untwine.data.spaces import DSPRITES, MPI3D, SHAPES3D

# Imported on first use (h5py and the samplers are not needed to render).
_LAZY = {
    "ArrayGroundTruthData": "untwine.data.arrays",
    "pack_binary_images": "untwine.data.arrays",
    "load_dsprites_npz": "untwine.data.files",
    "load_shapes3d_h5": "untwine.data.files",
    "load_mpi3d_npz": "untwine.data.files",
    "load_cars3d": "untwine.data.cars3d",
    "load_smallnorb": "untwine.data.smallnorb",
    "NuisanceGroundTruthData": "untwine.data.nuisance",
    "ObservationSampler": "untwine.data.samplers",
    "PairSampler": "untwine.data.samplers",
    "GroupSampler": "untwine.data.samplers",
    "sample_weak_pairs": "untwine.data.samplers",
    "sample_groups": "untwine.data.samplers",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'untwine.data' has no attribute {name!r}")


__all__ = [
    "DSPRITES", "MPI3D", "SHAPES3D", "DSprites", "Factor", "FactorSpace", "GroundTruthData",
    "Shapes3D", "available_datasets", "cache_root", "get_dataset", *_LAZY,
]
