"""Ground-truth factor datasets: factor spaces, procedural dSprites and Shapes3D, the on-disk cache.

    from untwine.data import get_dataset
    ds = get_dataset("dsprites")                  # rendered on demand; cached=True fills the disk cache
    x = ds.batch(ds.factor_space.index_of(ds.factor_space.sample(64, rng)))   # float32 (64, 1, 64, 64)
"""
from untwine.data.base import GroundTruthData
from untwine.data.cache import cache_root
from untwine.data.dsprites import DSprites
from untwine.data.factors import Factor, FactorSpace
from untwine.data.registry import available_datasets, get_dataset
from untwine.data.shapes3d import Shapes3D
from untwine.data.spaces import DSPRITES, MPI3D, SHAPES3D

__all__ = [
    "DSPRITES", "MPI3D", "SHAPES3D", "DSprites", "Factor", "FactorSpace", "GroundTruthData",
    "Shapes3D", "available_datasets", "cache_root", "get_dataset",
]
