"""Samplers of factor vectors and of batches: single observations, weakly supervised pairs, groups.

Everything is seeded through `np.random.Generator` (never numpy's global state). The batch
samplers draw batch t from a generator seeded by (seed, t), so a batch depends only on the seed and
its position: `state_dict()` is {seed, step, ...} in plain JSON and resuming reproduces the very
next batches of an uninterrupted run. Batches are index arrays -> one `data.batch(indices)` gather
-> float32 tensors; no per-item Python.
"""
from __future__ import annotations

from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np
import torch

from untwine.data.base import GroundTruthData
from untwine.data.factors import FactorSpace
from untwine.data.split import evaluation_split
from untwine.errors import DataError

PAIR_MODES = ("locatello", "guaranteed")
#: rejection rounds before a draw that keeps hitting excluded images is called impossible
_MAX_REDRAWS = 200


# -- factor-level sampling (pure functions of a Generator) ----------------------------------------

def _check_count(value: Any, what: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise DataError(f"{what} must be an integer >= {minimum}; got {value!r}")
    if value < minimum:
        raise DataError(f"{what} must be >= {minimum}; got {value}")
    return int(value)


def _check_k(k: Any, num_factors: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise DataError(f"k (number of changed factors) must be an integer; got {k!r}")
    k = int(k)
    if num_factors < 2:
        raise DataError(f"weak pairs need at least 2 factors (one changes, one is shared); this space has "
                        f"{num_factors}")
    if k == -1 or 1 <= k <= num_factors - 1:
        return k
    raise DataError(f"k={k} changed factors is impossible with {num_factors} factors: use 1..{num_factors - 1} "
                    f"(at least one factor must stay shared) or -1 to draw k uniformly from 1..{num_factors - 1}")


def _variable_factors(space: FactorSpace) -> np.ndarray:
    """Mask of the factors with more than one value; guaranteed-change pairs need at least 2."""
    variable = np.asarray(space.sizes) > 1
    if variable.sum() < 2:
        names = [n for n, v in zip(space.names, variable) if v]
        raise DataError(f"guaranteed-change pairs need at least 2 factors with more than one value (one changes, "
                        f"one stays shared); {space!r} has {len(names)} ({names}): use mode='locatello' or a "
                        f"space with more variable factors")
    return variable


def _check_exclude(space: FactorSpace, exclude: np.ndarray | None) -> np.ndarray | None:
    if exclude is None:
        return None
    exclude = np.asarray(exclude)
    if exclude.dtype != bool or exclude.shape != (len(space),):
        raise DataError(f"exclude must be a boolean mask over the {len(space)} grid indices; got dtype "
                        f"{exclude.dtype} and shape {exclude.shape}")
    return exclude


def sample_weak_pairs(space: FactorSpace, n: int, rng: np.random.Generator, k: int = 1,
                      mode: str = "locatello",
                      exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs of factor vectors that differ in a few factors (Locatello et al. 2020).

    v1 is uniform on the grid. Per pair, k is the given number or, for k = -1, uniform in 1..K-1;
    the pair changes either 1 or k factors (probability 1/2 each), chosen without replacement.
    mode "locatello" resamples each chosen factor uniformly over all its values (as
    disentanglement_lib does, so it may keep its value); mode "guaranteed" draws a different value,
    so that every chosen factor really changes: factors with a single value are never chosen, and
    at most (number of variable factors - 1) change, so that a variable factor stays shared (it
    needs at least 2 variable factors: DataError otherwise).

    `exclude` (bool mask over the grid, e.g. the evaluation split): a pair with either image
    excluded is drawn again (rejection), so the pairs follow the distribution above conditioned on
    both images lying outside it.

    Returns (classes1, classes2, changed): int64 (n, K), int64 (n, K), bool (n, K) marking the chosen
    factors; every other factor is equal in the pair.
    """
    if mode not in PAIR_MODES:
        raise DataError(f"unknown pair mode {mode!r}; use one of {PAIR_MODES}")
    n = _check_count(n, "number of pairs n", minimum=0)
    k = _check_k(k, space.num_factors)
    exclude = _check_exclude(space, exclude)
    v1, v2, changed = _draw_weak_pairs(space, n, rng, k, mode)
    if exclude is None:
        return v1, v2, changed
    for _ in range(_MAX_REDRAWS):
        bad = exclude[space.index_of(v1, validate=False)] | exclude[space.index_of(v2, validate=False)]
        if not bad.any():
            return v1, v2, changed
        v1[bad], v2[bad], changed[bad] = _draw_weak_pairs(space, int(bad.sum()), rng, k, mode)
    raise DataError(f"could not draw {n} pairs outside the excluded images of {space!r} in {_MAX_REDRAWS} rounds: "
                    f"the exclusion covers too much of the grid")


def _draw_weak_pairs(space: FactorSpace, n: int, rng: np.random.Generator, k: int,
                     mode: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    num_factors = space.num_factors
    sizes = np.asarray(space.sizes, dtype=np.int64)

    v1 = space.sample(n, rng)
    k_obs = rng.integers(1, num_factors, size=n) if k == -1 else np.full(n, k, dtype=np.int64)
    num_changed = np.where(rng.random(n) < 0.5, 1, k_obs)

    # Choose num_changed factors per row without replacement: rank random keys, take the smallest.
    keys = rng.random((n, num_factors))
    if mode == "guaranteed":
        variable = _variable_factors(space)
        keys[:, ~variable] = 2.0  # after every variable factor
        # a single-valued factor is shared by every pair and says nothing: keep a variable one shared
        num_changed = np.minimum(num_changed, int(variable.sum()) - 1)
    order = np.argsort(keys, axis=1)
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(num_factors)[None, :].repeat(n, axis=0), axis=1)
    changed = rank < num_changed[:, None]

    if mode == "guaranteed":
        # Shift by 1..n_i-1 (mod n_i): uniform over the other values.
        shift = rng.integers(0, np.maximum(sizes - 1, 1), size=(n, num_factors)) + 1
        new = (v1 + shift) % sizes
    else:
        new = space.sample(n, rng)
    v2 = np.where(changed, new, v1)
    return v1, v2, changed


def resolve_factors(space: FactorSpace, factors: str | int | Sequence[str | int]) -> np.ndarray:
    """Positions of factors given by name or position (one or a sequence), sorted and unique."""
    if isinstance(factors, (str, int, np.integer)):
        factors = [factors]
    try:
        items = list(factors)
    except TypeError:
        raise DataError(f"factors must be names or positions (or a list of them); got {factors!r}") from None
    return np.unique(np.asarray([space.factor_index(f) for f in items], dtype=np.int64))


def sample_groups(space: FactorSpace, num_groups: int, group_size: int,
                  shared_factors: str | int | Sequence[str | int], rng: np.random.Generator,
                  combinations: np.ndarray | None = None, exclude: np.ndarray | None = None) -> np.ndarray:
    """Groups of factor vectors sharing the content factors, style factors drawn freely.

    Each group draws its content (the `shared_factors`, names or positions) once: uniformly over
    the grid, or a uniform row of `combinations` (n, S) content classes in the sorted order of the
    shared factors (to train on some content combinations and hold the others out); each member
    draws every other factor uniformly and independently. `exclude` (bool mask over the grid, e.g.
    the evaluation split): a member that lands on an excluded image draws its style again (its
    group's content stays). Returns int64 classes (G, M, K).
    """
    num_groups = _check_count(num_groups, "num_groups")
    group_size = _check_count(group_size, "group_size")
    shared = resolve_factors(space, shared_factors)
    if shared.size == 0:
        raise DataError("a group must share at least one factor (its content); name one in shared_factors")
    if shared.size == space.num_factors:
        raise DataError(f"sharing every factor {list(space.names)} makes all members of a group the same image; "
                        f"leave at least one factor out of shared_factors to vary as style")
    classes = space.sample(num_groups * group_size, rng).reshape(num_groups, group_size, space.num_factors)
    if combinations is None:
        content = space.sample(num_groups, rng)[:, shared]
    else:
        combos = np.asarray(combinations, dtype=np.int64)
        if combos.ndim != 2 or combos.shape[1] != shared.size or len(combos) == 0:
            raise DataError(f"combinations must be (n >= 1, {shared.size}) content classes for factors "
                            f"{[space.names[i] for i in shared]}; got shape {combos.shape}")
        content = combos[rng.integers(0, len(combos), size=num_groups)]
    classes[:, :, shared] = content[:, None, :]
    exclude = _check_exclude(space, exclude)
    if exclude is None:
        return classes
    flat = classes.reshape(-1, space.num_factors)
    style = np.setdiff1d(np.arange(space.num_factors), shared)
    for _ in range(_MAX_REDRAWS):
        bad = exclude[space.index_of(flat, validate=False)]
        if not bad.any():
            return classes
        redraw = space.sample(int(bad.sum()), rng)
        rows = np.flatnonzero(bad)
        flat[np.ix_(rows, style)] = redraw[:, style]
    raise DataError(f"could not draw group members outside the excluded images of {space!r} in {_MAX_REDRAWS} "
                    f"rounds: some content has (almost) all of its images excluded")


# -- batch samplers -------------------------------------------------------------------------------

class ObservationBatch(NamedTuple):
    x: torch.Tensor        # float32 (B, C, H, W) in [0, 1]
    classes: torch.Tensor  # int64 (B, K)


class PairBatch(NamedTuple):
    x1: torch.Tensor       # float32 (B, C, H, W)
    x2: torch.Tensor       # float32 (B, C, H, W)
    changed: torch.Tensor  # bool (B, K): factors resampled between x1 and x2


class GroupBatch(NamedTuple):
    x: torch.Tensor        # float32 (G, M, C, H, W)
    classes: torch.Tensor  # int64 (G, M, K)


class _StepSampler:
    """Infinite iterator whose batch t is a function of (seed, t) only.

    Training samplers never return an image of the grid's evaluation split (untwine.data.split):
    `holdout_eval=False` draws from the whole grid (for a study of the split itself, not for
    training a model whose held-out numbers are reported).
    """

    def __init__(self, data: GroundTruthData, seed: int, device: torch.device | str | None,
                 holdout_eval: bool = True):
        if not isinstance(data, GroundTruthData):
            raise DataError(f"data must be a GroundTruthData (a dataset with a factor space); "
                            f"got {type(data).__name__}")
        self.data = data
        self.space = data.factor_space
        self.seed = _check_count(seed, "seed", minimum=0)
        self.device = device
        self.step = 0
        self.holdout_eval = bool(holdout_eval)
        self.split = evaluation_split(self.space)
        self.exclude = self.split.is_eval if self.holdout_eval and self.split.num_eval else None

    def rng_at(self, step: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.seed, int(step)]))

    def _config(self) -> dict:
        raise NotImplementedError

    def batch_at(self, step: int):
        raise NotImplementedError

    def __iter__(self) -> Iterator:
        return self

    def __next__(self):
        out = self.batch_at(self.step)
        self.step += 1
        return out

    def state_dict(self) -> dict:
        return {"sampler": type(self).__name__, "seed": self.seed, "step": self.step,
                "holdout_eval": self.holdout_eval, **self._config()}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or "step" not in state or "seed" not in state:
            raise DataError(f"a sampler state needs keys 'seed' and 'step'; got {state!r}")
        mine = {"sampler": type(self).__name__, "holdout_eval": self.holdout_eval, **self._config()}
        for key, want in mine.items():
            if key in state and state[key] != want:
                raise DataError(f"cannot resume {type(self).__name__}: the saved state has {key}={state[key]!r} "
                                f"but this sampler has {key}={want!r}; build the sampler with the saved settings")
        self.seed = _check_count(state["seed"], "seed", minimum=0)
        self.step = _check_count(state["step"], "step", minimum=0)

    def _to_device(self, arr: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(arr))
        return t.to(self.device) if self.device is not None else t


class ObservationSampler(_StepSampler):
    """Batches of uniformly drawn observations: (x float32 (B, C, H, W), classes int64 (B, K)).

    A batch holds B distinct observations (uniform without replacement within the batch, each batch
    drawn afresh): beta-TCVAE's minibatch-stratified estimator of q(z) is unbiased only for such
    batches (a repeat of x_i among the others biases it: E[q_hat]/q between 0.84 and 1.10 at N = 6,
    B = 3), and a repeat adds nothing to any objective's gradient estimate.
    """

    def __init__(self, data: GroundTruthData, batch_size: int, seed: int = 0,
                 device: torch.device | str | None = None, holdout_eval: bool = True):
        super().__init__(data, seed, device, holdout_eval)
        self.batch_size = _check_count(batch_size, "batch_size")
        self._pool = self.split.train_indices if self.exclude is not None else None
        available = len(self.space) if self._pool is None else len(self._pool)
        if self.batch_size > available:
            raise DataError(f"batch_size={self.batch_size} exceeds the {available} training observations of "
                            f"{self.data.name!r}; a batch holds distinct "
                            f"observations: use batch_size <= {available}")

    def _config(self) -> dict:
        return {"batch_size": self.batch_size}

    def indices_at(self, step: int) -> np.ndarray:
        if self._pool is None:
            return self.rng_at(step).choice(len(self.space), size=self.batch_size, replace=False)
        return self._pool[self.rng_at(step).choice(len(self._pool), size=self.batch_size, replace=False)]

    def batch_at(self, step: int) -> ObservationBatch:
        idx = self.indices_at(step)
        classes = self.space.classes_of(idx, validate=False)
        return ObservationBatch(self.data.batch(idx, device=self.device), self._to_device(classes))


class PairSampler(_StepSampler):
    """Batches of weakly supervised pairs (x1, x2, changed); see `sample_weak_pairs`."""

    def __init__(self, data: GroundTruthData, batch_size: int, k: int = 1, mode: str = "locatello",
                 seed: int = 0, device: torch.device | str | None = None, holdout_eval: bool = True):
        super().__init__(data, seed, device, holdout_eval)
        self.batch_size = _check_count(batch_size, "batch_size")
        self.k = _check_k(k, self.space.num_factors)
        if mode not in PAIR_MODES:
            raise DataError(f"unknown pair mode {mode!r}; use one of {PAIR_MODES}")
        self.mode = mode
        if mode == "guaranteed":
            _variable_factors(self.space)  # fail now, not at the first batch

    def _config(self) -> dict:
        return {"batch_size": self.batch_size, "k": self.k, "mode": self.mode}

    def classes_at(self, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return sample_weak_pairs(self.space, self.batch_size, self.rng_at(step), k=self.k, mode=self.mode,
                                 exclude=self.exclude)

    def batch_at(self, step: int) -> PairBatch:
        c1, c2, changed = self.classes_at(step)
        idx = self.space.index_of(np.concatenate([c1, c2]), validate=False)
        x = self.data.batch(idx, device=self.device)  # one gather for both halves
        b = self.batch_size
        return PairBatch(x[:b], x[b:], self._to_device(changed))


class GroupSampler(_StepSampler):
    """Batches of groups sharing content factors: (x float32 (G, M, C, H, W), classes int64 (G, M, K))."""

    def __init__(self, data: GroundTruthData, num_groups: int, group_size: int,
                 shared_factors: str | int | Sequence[str | int], seed: int = 0,
                 device: torch.device | str | None = None, content_combinations: np.ndarray | None = None,
                 holdout_eval: bool = True):
        """`content_combinations` (n, S): draw each group's content from these rows only (the
        training part of a held-out split), else from the whole grid."""
        super().__init__(data, seed, device, holdout_eval)
        self.num_groups = _check_count(num_groups, "num_groups")
        self.group_size = _check_count(group_size, "group_size")
        shared = resolve_factors(self.space, shared_factors)
        self.combinations = None if content_combinations is None else np.asarray(content_combinations, np.int64)
        # validate once (same rules as sample_groups) with a tiny draw
        sample_groups(self.space, 1, 1, shared.tolist(), np.random.default_rng(0), self.combinations)
        self.shared_factors = [self.space.names[i] for i in shared]

    def _config(self) -> dict:
        config = {"num_groups": self.num_groups, "group_size": self.group_size,
                  "shared_factors": list(self.shared_factors)}
        if self.combinations is not None:
            config["content_combinations"] = len(self.combinations)
        return config

    def classes_at(self, step: int) -> np.ndarray:
        return sample_groups(self.space, self.num_groups, self.group_size, self.shared_factors, self.rng_at(step),
                             self.combinations, exclude=self.exclude)

    def batch_at(self, step: int) -> GroupBatch:
        classes = self.classes_at(step)
        g, m, k = classes.shape
        x = self.data.batch(self.space.index_of(classes.reshape(g * m, k), validate=False), device=self.device)
        return GroupBatch(x.view(g, m, *x.shape[1:]), self._to_device(classes))
