"""Validation and the discrete-information helpers shared by the metrics.

Conventions (as disentanglement_lib, but row = sample): codes are (N, D) floats, factors are
(N, K) integer classes. Information is in nats.
"""
from __future__ import annotations

import numpy as np

from untwine.errors import DataError


def check_codes(codes, name: str = "codes", min_samples: int = 2) -> np.ndarray:
    """(N, D) finite float64 codes, or a DataError saying what is wrong."""
    arr = np.asarray(codes)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise DataError(f"{name} must be a numeric array of shape (N, D); got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise DataError(f"{name} must have shape (N, D) (one row per sample); got shape {arr.shape}; "
                        f"reshape with codes.reshape(len(codes), -1)")
    if arr.shape[0] < min_samples:
        raise DataError(f"{name} has {arr.shape[0]} sample(s); a metric needs at least {min_samples}: "
                        f"pass more samples")
    if arr.shape[1] < 1:
        raise DataError(f"{name} has no code dimensions (shape {arr.shape})")
    arr = arr.astype(np.float64, copy=False)
    bad = ~np.isfinite(arr)
    if bad.any():
        row, col = map(int, np.argwhere(bad)[0])
        raise DataError(f"{name} contains {int(bad.sum())} NaN/inf value(s) (first at row {row}, dim {col}); "
                        f"a diverged encoder or a bad file: fix the codes before scoring")
    return arr


def check_factors(factors, n: int | None = None, name: str = "factors",
                  require_variation: bool = True) -> np.ndarray:
    """(N, K) int64 factor classes >= 0, each factor taking at least two values."""
    arr = np.asarray(factors)
    if arr.ndim == 1:
        raise DataError(f"{name} must have shape (N, K); got a 1-d array of length {arr.shape[0]}; "
                        f"for one factor use factors[:, None]")
    if arr.ndim != 2 or arr.shape[1] < 1:
        raise DataError(f"{name} must have shape (N, K) (one row per sample, one column per factor); "
                        f"got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise DataError(f"{name} must be integer factor classes 0..n-1, not factor values; got dtype "
                            f"{arr.dtype}; convert with FactorSpace.classes_of_values")
    arr = arr.astype(np.int64, copy=False)
    if n is not None and arr.shape[0] != n:
        raise DataError(f"{name} has {arr.shape[0]} rows but the codes have {n}: one factor row per code row")
    if arr.size and arr.min() < 0:
        raise DataError(f"{name} contains negative classes (min {arr.min()}); classes are 0..n-1")
    if require_variation:
        lo, hi = arr.min(axis=0), arr.max(axis=0)
        const = np.flatnonzero(lo == hi)
        if const.size:
            raise DataError(f"factor column(s) {const.tolist()} of {name} take a single value; a factor with "
                            f"one value carries no information and makes the scores undefined: drop it")
    return arr


def check_pair(codes, factors, name: str = "") -> tuple[np.ndarray, np.ndarray]:
    sfx = f" ({name})" if name else ""
    c = check_codes(codes, "codes" + sfx)
    f = check_factors(factors, n=c.shape[0], name="factors" + sfx)
    return c, f


def check_train_test(codes_train, factors_train, codes_test, factors_test):
    ct, ft = check_pair(codes_train, factors_train, "train")
    cs, fs = check_pair(codes_test, factors_test, "test")
    if ct.shape[1] != cs.shape[1]:
        raise DataError(f"train codes have {ct.shape[1]} dims but test codes have {cs.shape[1]}")
    if ft.shape[1] != fs.shape[1]:
        raise DataError(f"train factors have {ft.shape[1]} columns but test factors have {fs.shape[1]}")
    return ct, ft, cs, fs


def histogram_discretize(codes: np.ndarray, num_bins: int = 20) -> np.ndarray:
    """Per-dimension equal-width bins, exactly as disentanglement_lib's histogram discretizer:
    np.digitize(x, np.histogram(x, num_bins)[1][:-1]) -> classes 1..num_bins (0-based here)."""
    if int(num_bins) < 1:
        raise DataError(f"num_bins must be >= 1; got {num_bins}")
    out = np.empty(codes.shape, dtype=np.int64)
    for d in range(codes.shape[1]):  # D is small; each column is vectorised
        edges = np.histogram_bin_edges(codes[:, d], bins=num_bins)
        out[:, d] = np.digitize(codes[:, d], edges[:-1]) - 1
    return out


def _dense_labels(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Relabel each column to 0..m_c-1; returns labels and the per-column offsets into a stacked one-hot."""
    dense = np.empty_like(x)
    sizes = np.empty(x.shape[1], dtype=np.int64)
    for c in range(x.shape[1]):
        _, dense[:, c] = np.unique(x[:, c], return_inverse=True)
        sizes[c] = dense[:, c].max() + 1
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    return dense, offsets


def discrete_mutual_info(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(D, K) matrix of I(a_d; b_k) in nats for discrete columns, equal to sklearn's
    mutual_info_score(b[:, k], a[:, d]) for every pair, from one contingency product."""
    n = a.shape[0]
    da, oa = _dense_labels(a)
    db, ob = _dense_labels(b)
    rows = np.arange(n)
    ha = np.zeros((n, oa[-1]), dtype=np.float64)
    ha[rows[:, None], da + oa[:-1]] = 1.0
    hb = np.zeros((n, ob[-1]), dtype=np.float64)
    hb[rows[:, None], db + ob[:-1]] = 1.0
    joint = ha.T @ hb / n                       # all pairwise joint distributions at once
    pa, pb = ha.mean(axis=0), hb.mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(joint > 0, joint * np.log(joint / np.outer(pa, pb)), 0.0)
    # sum each (a_d, b_k) block
    per_row = np.add.reduceat(terms, ob[:-1], axis=1)
    mi = np.add.reduceat(per_row, oa[:-1], axis=0)
    return np.maximum(mi, 0.0)


def discrete_entropy(x: np.ndarray) -> np.ndarray:
    """(K,) entropy in nats of each discrete column."""
    out = np.empty(x.shape[1])
    for c in range(x.shape[1]):
        p = np.unique(x[:, c], return_counts=True)[1] / x.shape[0]
        out[c] = -(p * np.log(p)).sum()
    return out


def factor_sizes_of(factors: np.ndarray, factor_sizes=None) -> np.ndarray:
    if factor_sizes is None:
        return factors.max(axis=0) + 1
    sizes = np.asarray(factor_sizes, dtype=np.int64)
    if sizes.shape != (factors.shape[1],):
        raise DataError(f"factor_sizes must list one size per factor column ({factors.shape[1]}); got {sizes.tolist()}")
    if (factors.max(axis=0) >= sizes).any():
        k = int(np.argmax(factors.max(axis=0) >= sizes))
        raise DataError(f"factor column {k} has class {int(factors[:, k].max())} but factor_sizes says {int(sizes[k])}")
    return sizes


def to_floats(x) -> list[float]:
    return [float(v) for v in np.asarray(x).ravel()]
