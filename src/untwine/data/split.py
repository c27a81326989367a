"""The evaluation split of a factor grid: images that no training sampler ever returns.

Every number reported on "held-out images" (reconstruction, ELBO, Frechet distance, fidelity,
w-invariance, the factor classifier's accuracy) is computed on this set, and every training
sampler (single images, pairs, groups, the factor classifier's batches) draws from its complement.
The split is a property of the grid alone (its factor sizes), not of a run or a seed: two runs,
the procedural renderer and the original file of a dataset all hold out the same images, so
their held-out numbers are comparable.

disentanglement_lib's metric protocols sample their points from the whole grid (the score
describes the representation of the dataset, not a generalisation gap); untwine's metric
functions keep that protocol.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from untwine.data.factors import FactorSpace
from untwine.errors import DataError

#: share of the grid held out: 14,745 dSprites images, 9,600 Shapes3D, 20,736 MPI3D
EVAL_FRACTION = 0.02
#: fixed: the split must not move between runs, versions or machines
_SPLIT_SEED = 20_221_207


@dataclass(frozen=True)
class EvaluationSplit:
    """`eval_indices` (sorted int64) are held out; `train_indices` (sorted int64) are the rest;
    `is_eval` is a boolean mask over the whole grid."""

    is_eval: np.ndarray
    eval_indices: np.ndarray
    train_indices: np.ndarray

    @property
    def num_eval(self) -> int:
        return int(len(self.eval_indices))

    @property
    def num_train(self) -> int:
        return int(len(self.train_indices))


@functools.lru_cache(maxsize=16)
def _split_for_sizes(sizes: tuple[int, ...]) -> EvaluationSplit:
    n = int(np.prod(np.asarray(sizes, dtype=np.int64)))
    num_eval = int(n * EVAL_FRACTION)  # a grid under 50 images reserves none (see evaluation_split)
    rng = np.random.default_rng([_SPLIT_SEED, *sizes])
    eval_idx = np.sort(rng.choice(n, size=num_eval, replace=False)).astype(np.int64)
    mask = np.zeros(n, dtype=bool)
    mask[eval_idx] = True
    train_idx = np.flatnonzero(~mask).astype(np.int64)
    for arr in (mask, eval_idx, train_idx):
        arr.setflags(write=False)  # shared by every caller: nobody may edit it in place
    return EvaluationSplit(mask, eval_idx, train_idx)


def evaluation_split(space: FactorSpace) -> EvaluationSplit:
    """The split of `space` (cached per grid shape): EVAL_FRACTION of the grid, chosen uniformly
    by a fixed seed. A grid of fewer than 1 / EVAL_FRACTION images holds none out."""
    if not isinstance(space, FactorSpace):
        raise DataError(f"evaluation_split takes a FactorSpace; got {type(space).__name__}")
    return _split_for_sizes(tuple(int(s) for s in space.sizes))


def require_eval_indices(space: FactorSpace) -> np.ndarray:
    """The held-out indices, or a DataError when the grid is too small to hold any out."""
    split = evaluation_split(space)
    if split.num_eval == 0:
        raise DataError(f"the grid {dict(zip(space.names, space.sizes))} has {len(space)} images, too few to "
                        f"reserve held-out evaluation images ({EVAL_FRACTION:.0%} of the grid rounds to 0); "
                        f"evaluate on a grid of at least {int(round(1 / EVAL_FRACTION))} images")
    return split.eval_indices


__all__ = ["EVAL_FRACTION", "EvaluationSplit", "evaluation_split", "require_eval_indices"]
