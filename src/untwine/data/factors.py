"""Factor spaces: full factorial grids of ground-truth factors, stored row-major.

index = sum_i f_i * prod_{j>i} n_j (last factor fastest), the order of every anchor
(disentanglement_lib, dSprites, Shapes3D), so that files interoperate.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from untwine.errors import DataError


@dataclass(frozen=True)
class Factor:
    """One ground-truth factor: its name and the value of each of its classes."""

    name: str
    values: np.ndarray

    @property
    def size(self) -> int:
        return int(len(self.values))


class FactorSpace:
    """A full factorial grid of factors.

    Factor *classes* are integers 0..n_i-1 (what indices, samplers and metrics use);
    factor *values* are the physical values of the original dataset (scale 0.5..1, ...).
    """

    def __init__(self, factors: Sequence[Factor]):
        if not factors:
            raise DataError("a factor space needs at least one factor; got none")
        names = [f.name for f in factors]
        if len(set(names)) != len(names):
            raise DataError(f"factor names must be unique; got {names}")
        for f in factors:
            if f.size < 1:
                raise DataError(f"factor {f.name!r} has no values; give it at least one")
        self.factors = tuple(factors)
        self.names: tuple[str, ...] = tuple(names)
        self.sizes: tuple[int, ...] = tuple(f.size for f in factors)
        self.num_factors = len(self.factors)
        # strides[i] = prod_{j>i} n_j
        strides = np.ones(self.num_factors, dtype=np.int64)
        for i in range(self.num_factors - 2, -1, -1):
            strides[i] = strides[i + 1] * self.sizes[i + 1]
        self.strides = strides
        self._sizes_arr = np.asarray(self.sizes, dtype=np.int64)

    @classmethod
    def from_values(cls, values: Mapping[str, Sequence[float] | np.ndarray]) -> "FactorSpace":
        return cls([Factor(name, np.asarray(v, dtype=np.float64)) for name, v in values.items()])

    def __len__(self) -> int:
        return int(np.prod(self._sizes_arr))

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}={s}" for n, s in zip(self.names, self.sizes))
        return f"FactorSpace({inner})"

    def factor_index(self, name_or_index: str | int) -> int:
        """Position of a factor given by name or position."""
        if isinstance(name_or_index, (int, np.integer)):
            i = int(name_or_index)
            if not 0 <= i < self.num_factors:
                raise DataError(
                    f"factor position {i} is out of range: this space has {self.num_factors} "
                    f"factors {list(self.names)}; use 0..{self.num_factors - 1} or a name")
            return i
        if name_or_index not in self.names:
            raise DataError(f"unknown factor {name_or_index!r}; the factors are {list(self.names)}")
        return self.names.index(name_or_index)

    # -- validation ---------------------------------------------------------
    def check_classes(self, classes: np.ndarray) -> np.ndarray:
        """Validate an (N, K) array of factor classes and return it as int64."""
        arr = np.asarray(classes)
        if arr.ndim == 1 and arr.shape[0] == self.num_factors:
            arr = arr[None, :]
        if arr.ndim != 2 or arr.shape[1] != self.num_factors:
            raise DataError(
                f"factor classes must have shape (N, {self.num_factors}) for factors "
                f"{list(self.names)}; got shape {arr.shape}")
        if not np.issubdtype(arr.dtype, np.integer):
            if np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
                arr = arr.astype(np.int64)
            else:
                raise DataError(
                    f"factor classes must be integers (class indices, not factor values); got dtype "
                    f"{arr.dtype}; convert values with FactorSpace.classes_of_values")
        arr = arr.astype(np.int64, copy=False)
        bad = (arr < 0) | (arr >= self._sizes_arr)
        if bad.any():
            row, col = map(int, np.argwhere(bad)[0])
            raise DataError(
                f"factor {self.names[col]!r} has class {int(arr[row, col])} at row {row}, out of "
                f"range 0..{self.sizes[col] - 1}")
        return arr

    def check_indices(self, indices: np.ndarray) -> np.ndarray:
        idx = np.asarray(indices)
        if not np.issubdtype(idx.dtype, np.integer):
            raise DataError(f"indices must be integers; got dtype {idx.dtype}")
        idx = idx.astype(np.int64, copy=False)
        n = len(self)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise DataError(f"index out of range: got min {idx.min()}, max {idx.max()}, valid 0..{n - 1}")
        return idx

    # -- conversions (vectorised) ---------------------------------------------
    def index_of(self, classes: np.ndarray, validate: bool = True) -> np.ndarray:
        """(N, K) factor classes -> (N,) row-major flat indices."""
        arr = self.check_classes(classes) if validate else np.asarray(classes, dtype=np.int64)
        return arr @ self.strides

    def classes_of(self, indices: np.ndarray, validate: bool = True) -> np.ndarray:
        """(N,) flat indices -> (N, K) factor classes (int64)."""
        idx = self.check_indices(indices) if validate else np.asarray(indices, dtype=np.int64)
        return (idx[..., None] // self.strides) % self._sizes_arr

    def values_of(self, classes: np.ndarray) -> np.ndarray:
        """(N, K) factor classes -> (N, K) float64 factor values of the original dataset."""
        arr = self.check_classes(classes)
        out = np.empty(arr.shape, dtype=np.float64)
        for i, f in enumerate(self.factors):
            out[:, i] = f.values[arr[:, i]]
        return out

    def classes_of_values(self, values: np.ndarray, atol: float = 1e-6) -> np.ndarray:
        """(N, K) factor values -> (N, K) classes, matching each value to its grid point."""
        vals = np.asarray(values, dtype=np.float64)
        if vals.ndim != 2 or vals.shape[1] != self.num_factors:
            raise DataError(f"factor values must have shape (N, {self.num_factors}); got {vals.shape}")
        out = np.empty(vals.shape, dtype=np.int64)
        for i, f in enumerate(self.factors):
            d = np.abs(vals[:, i, None] - f.values[None, :])
            out[:, i] = d.argmin(axis=1)
            miss = d.min(axis=1) > atol
            if miss.any():
                raise DataError(
                    f"factor {f.name!r} value {vals[miss, i][0]} is not on its grid {f.values.tolist()}")
        return out

    # -- sampling (seeded; never global numpy state) ----------------------------
    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """n factor-class vectors drawn uniformly from the grid, shape (n, K)."""
        if n < 0:
            raise DataError(f"number of samples must be >= 0; got {n}")
        return rng.integers(0, self._sizes_arr, size=(n, self.num_factors), dtype=np.int64)

    def sample_fixed(self, n: int, fixed: Mapping[str | int, int], rng: np.random.Generator) -> np.ndarray:
        """n samples with the given factors held at the given classes, the others uniform."""
        out = self.sample(n, rng)
        for key, cls_ in fixed.items():
            i = self.factor_index(key)
            if not 0 <= int(cls_) < self.sizes[i]:
                raise DataError(f"factor {self.names[i]!r} fixed at class {cls_}, out of range 0..{self.sizes[i] - 1}")
            out[:, i] = int(cls_)
        return out

    def table(self) -> list[dict]:
        """One row per factor: name, size and value range (for `untwine data info`)."""
        return [{"factor": f.name, "size": f.size, "min": float(f.values.min()), "max": float(f.values.max())}
                for f in self.factors]
