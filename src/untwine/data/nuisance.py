"""Nuisance factors: factors of the stored grid that a dataset does not expose, drawn afresh per observation.

SmallNORB under disentanglement_lib's protocol stores every (category, instance, elevation, azimuth,
lighting) once but exposes only category, elevation, azimuth and lighting: the instance is a
nuisance factor, sampled uniformly whenever an observation is asked for
(disentanglement_lib's `SplitDiscreteStateSpace.sample_all_factors`).

`NuisanceGroundTruthData` wraps a dataset over the full grid. Its `factor_space` holds the exposed
factors only, so samplers, metrics and index arithmetic work on exposed indices as for any other
dataset; each exposed index stands for the set of stored images that share its exposed factors, and
every request picks one member of that set per requested item, independently.

Which member: from the generator `rng` when the caller gives one; otherwise from a generator
seeded by (`seed`, a hash of the requested index array). The default makes `batch(indices)` a pure
function of its indices: a sampler whose batch t depends only on (seed, t) stays reproducible and
resumes exactly (no hidden per-call counter to lose on restart), calling twice with the same
indices gives the same images, and the same exposed index still gets an independently drawn
nuisance value in every other batch it appears in (a different index array seeds a different
draw), as well as at each position of one array (repeats inside a request draw separately).
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np
import torch

from untwine.data.base import GroundTruthData
from untwine.data.factors import FactorSpace
from untwine.errors import DataError


class NuisanceGroundTruthData(GroundTruthData):
    """The exposed factors of `full`; the `nuisance` factors are drawn uniformly per observation.

    Args:
        full: a dataset over the full grid (exposed and nuisance factors, row-major).
        nuisance: names (or positions) of the factors of `full` to hide and resample.
        name: the dataset name (default: the full dataset's).
        seed: seed of the default nuisance draws (see the module docstring).

    Attributes:
        factor_space: the exposed factors, in the order of the full grid.
        nuisance_space: the nuisance factors.
        full: the wrapped dataset (its indices address single stored images).
    """

    def __init__(self, full: GroundTruthData, nuisance: Sequence[str | int], name: str | None = None,
                 seed: int = 0):
        if not isinstance(full, GroundTruthData):
            raise DataError(f"full must be a GroundTruthData over the full grid; got {type(full).__name__}")
        space = full.factor_space
        if isinstance(nuisance, (str, int, np.integer)):
            nuisance = [nuisance]
        hidden = sorted({space.factor_index(f) for f in nuisance})
        if not hidden:
            raise DataError("name at least one nuisance factor; without one use the full dataset itself")
        exposed = [i for i in range(space.num_factors) if i not in hidden]
        if not exposed:
            raise DataError(f"every factor {list(space.names)} is a nuisance factor; leave at least one exposed")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise DataError(f"seed must be an integer >= 0; got {seed!r}")
        self.full = full
        self.name = name or full.name
        self.seed = int(seed)
        self.image_shape = full.image_shape
        self.factor_space = FactorSpace([space.factors[i] for i in exposed])
        self.nuisance_space = FactorSpace([space.factors[i] for i in hidden])
        self.exposed_positions = np.asarray(exposed, dtype=np.int64)
        self.nuisance_positions = np.asarray(hidden, dtype=np.int64)
        self._exposed_strides = space.strides[self.exposed_positions]
        self._nuisance_strides = space.strides[self.nuisance_positions]

    def default_rng(self, indices: np.ndarray) -> np.random.Generator:
        """The generator of the nuisance draws for `indices` when the caller gives none."""
        idx = np.ascontiguousarray(np.asarray(indices, dtype="<i8").reshape(-1))
        digest = hashlib.blake2b(idx.tobytes(), digest_size=16).digest()
        return np.random.default_rng(np.random.SeedSequence([self.seed, int.from_bytes(digest, "little")]))

    def full_indices(self, indices: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """(N,) exposed indices -> (N,) indices of `full`, one nuisance draw per item."""
        idx = self.factor_space.check_indices(np.asarray(indices).reshape(-1))
        if rng is None:
            rng = self.default_rng(idx)
        elif not isinstance(rng, np.random.Generator):
            raise DataError(f"rng must be a numpy Generator (np.random.default_rng(seed)); got {type(rng).__name__}")
        exposed = self.factor_space.classes_of(idx, validate=False)
        drawn = self.nuisance_space.sample(len(idx), rng)
        return exposed @ self._exposed_strides + drawn @ self._nuisance_strides

    def full_classes(self, indices: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """(N, K_full) classes of the stored images that `images(indices, rng)` returns."""
        return self.full.factor_space.classes_of(self.full_indices(indices, rng), validate=False)

    def images(self, indices: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        return self.full.images(self.full_indices(indices, rng))

    def batch(self, indices: np.ndarray, device: torch.device | str | None = None,
              rng: np.random.Generator | None = None) -> torch.Tensor:
        return self.full.batch(self.full_indices(indices, rng), device=device)

    def observations(self, classes: np.ndarray, device: torch.device | str | None = None,
                     rng: np.random.Generator | None = None) -> torch.Tensor:
        return self.batch(self.factor_space.index_of(classes), device=device, rng=rng)
