"""The evaluation split of a factor grid: images that no training sampler ever returns.

Every number reported on "held-out images" (reconstruction, ELBO, Frechet distance, fidelity,
w-invariance, the factor classifier's accuracy) is computed on this set, and every training
sampler (single images, pairs, groups, the factor classifier's batches) draws from its complement.
The split is a property of the grid alone (its factor sizes), not of a run or a seed: two runs,
the procedural renderer and the original file of a dataset all hold out the same images, so
their held-out numbers are comparable.

Image sets without a factor grid (image folders, arrays, CelebA) use the same mechanism over their
N images (`count_split`): IMAGE_EVAL_FRACTION of them (at most MAX_IMAGE_EVAL), a function of N
alone; a dataset with an official partition (CelebA's list_eval_partition.txt) holds out that
partition instead (its `evaluation_split`). `dataset_split(data)` is the split of any dataset.

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
#: image sets without a grid: a few hundred images need more than 2% held out for a held-out
#: reconstruction to mean something; capped so that a large set keeps its images for training
IMAGE_EVAL_FRACTION = 0.1
MAX_IMAGE_EVAL = 10_000
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


def split_from_mask(mask: np.ndarray) -> EvaluationSplit:
    """The split whose held-out images are `mask` (bool over the dataset), read-only."""
    mask = np.array(mask, dtype=bool)
    eval_idx = np.flatnonzero(mask).astype(np.int64)
    train_idx = np.flatnonzero(~mask).astype(np.int64)
    for arr in (mask, eval_idx, train_idx):
        arr.setflags(write=False)  # shared by every caller: nobody may edit it in place
    return EvaluationSplit(mask, eval_idx, train_idx)


@functools.lru_cache(maxsize=16)
def _split_for_sizes(sizes: tuple[int, ...], num_eval: int | None = None) -> EvaluationSplit:
    n = int(np.prod(np.asarray(sizes, dtype=np.int64)))
    if num_eval is None:
        num_eval = int(n * EVAL_FRACTION)  # a grid under 50 images reserves none (see evaluation_split)
    rng = np.random.default_rng([_SPLIT_SEED, *sizes])
    eval_idx = rng.choice(n, size=num_eval, replace=False)
    mask = np.zeros(n, dtype=bool)
    mask[eval_idx] = True
    return split_from_mask(mask)


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


def count_split(n: int) -> EvaluationSplit:
    """The split of a set of n images without a grid: IMAGE_EVAL_FRACTION of them (at most
    MAX_IMAGE_EVAL, at least 1 for n >= 10), chosen uniformly by the fixed seed and n."""
    n = int(n)
    if n < 1:
        raise DataError(f"an image set needs at least one image to split; got {n}")
    return _split_for_sizes((n,), min(MAX_IMAGE_EVAL, int(n * IMAGE_EVAL_FRACTION)))


def dataset_split(data) -> EvaluationSplit | None:
    """The evaluation split of a dataset: its grid's (factor datasets), its own `evaluation_split`
    (image sets: a count split or an official partition), or None (tables, which hold out their
    own validation rows)."""
    space = getattr(data, "factor_space", None)
    if isinstance(space, FactorSpace):
        return evaluation_split(space)
    own = getattr(data, "evaluation_split", None)
    return own if isinstance(own, EvaluationSplit) else None


def held_out_pool(data, at_least: int = 1) -> np.ndarray:
    """Indices to draw evaluation images from: the dataset's held-out split, or every index when it
    holds fewer than `at_least` out (tests' toy grids, a table)."""
    split = dataset_split(data)
    pool = split.eval_indices if split is not None else np.empty(0, np.int64)
    return pool if len(pool) >= max(1, at_least) else np.arange(len(data))


def require_dataset_eval_indices(data) -> np.ndarray:
    """The held-out indices of any dataset, or a DataError when it holds none out."""
    space = getattr(data, "factor_space", None)
    if isinstance(space, FactorSpace):
        return require_eval_indices(space)
    split = dataset_split(data)
    name = getattr(data, "name", type(data).__name__)
    if split is None:
        raise DataError(f"dataset {name!r} has no evaluation split of held-out images")
    if split.num_eval == 0:
        raise DataError(f"dataset {name!r} holds out no images ({len(data)} images); evaluate on a set of at "
                        f"least {int(round(1 / IMAGE_EVAL_FRACTION))} images")
    return split.eval_indices


__all__ = ["EVAL_FRACTION", "EvaluationSplit", "IMAGE_EVAL_FRACTION", "MAX_IMAGE_EVAL", "count_split",
           "dataset_split", "evaluation_split", "require_dataset_eval_indices", "require_eval_indices",
           "split_from_mask"]
