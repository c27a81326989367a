"""Unsupervised Disentanglement Ranking, UDR (Duan et al. 2020), as disentanglement_lib's
`evaluation/udr/metrics/udr.py` computes it; no factor labels are used.

Models that differ only in their seed encode the same observations. Each model's codes are
standardised and its dimensions with average KL (to the prior, over the observations) at most
`kl_threshold` are zeroed and masked. For every ordered pair (i, j), i != j, a similarity matrix
between i's dimensions (rows) and j's (columns) is computed: |coefficients| of a Lasso (alpha 0.1)
regressing j's codes on i's, or |Spearman correlation|; it is restricted to i's active rows and j's
active columns and scored by relative strength (`relative_strength`). Model j's UDR is the median
of the scores of the pairs (i, j) over every other model i. A model that learnt the same axes as its
seed-siblings scores 1; models whose axes share nothing score about 0.

    kl = gaussian_kl_per_dim(mean, logvar)            # per model, over the shared observations
    scores = udr([codes_a, codes_b, codes_c], [kl_a, kl_b, kl_c])
    scores["model_scores"]                            # one UDR per model
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import scipy.stats

from untwine.errors import DataError

CORRELATIONS = ("lasso", "spearman")
KL_THRESHOLD = 0.01
LASSO_ALPHA = 0.1


def gaussian_kl_per_dim(mean, logvar) -> np.ndarray:
    """Average KL(N(mean, exp(logvar)) || N(0, 1)) per code dimension over the rows: (N, D) -> (D,)."""
    mean, logvar = np.asarray(mean, dtype=np.float64), np.asarray(logvar, dtype=np.float64)
    if mean.shape != logvar.shape or mean.ndim != 2:
        raise DataError(f"mean and logvar must be (N, D) arrays of one shape; got {mean.shape} and {logvar.shape}")
    return np.mean(0.5 * (mean ** 2 + np.exp(logvar) - logvar - 1.0), axis=0)


def relative_strength(matrix) -> float:
    """disentanglement_lib's relative strength of a non-negative similarity matrix: for each column
    max^2 / sum, averaged over the columns; the same over the rows; the two averages averaged. A
    row or column of zeros counts 0 (disentanglement_lib's nan_to_num). A permutation matrix scores
    1, a matrix of ones 1/D. An empty matrix (a model with no active dimension) scores 0."""
    m = np.abs(np.asarray(matrix, dtype=np.float64))
    if m.ndim != 2:
        raise DataError(f"a similarity matrix must be 2-d; got shape {m.shape}")
    if m.size == 0:
        return 0.0
    m = np.nan_to_num(m, nan=0.0)  # a constant dimension's Spearman correlation is undefined: no similarity

    def side(axis: int) -> float:
        total = m.sum(axis=axis)
        with np.errstate(divide="ignore", invalid="ignore"):
            share = np.where(total > 0, m.max(axis=axis) ** 2 / np.where(total > 0, total, 1.0), 0.0)
        return float(share.mean())

    return (side(0) + side(1)) / 2.0


def spearman_matrix(codes_a, codes_b) -> np.ndarray:
    """|Spearman correlation| between every dimension of a (rows) and of b (columns): (Da, Db).
    The rank-then-Pearson form of scipy.stats.spearmanr, vectorised; a constant dimension gives nan."""
    a, b = _two_dimensional(codes_a, "codes_a"), _two_dimensional(codes_b, "codes_b")
    if len(a) != len(b):
        raise DataError(f"both models must encode the same observations; got {len(a)} and {len(b)} rows")
    ra, rb = scipy.stats.rankdata(a, axis=0), scipy.stats.rankdata(b, axis=0)
    ra, rb = ra - ra.mean(0), rb - rb.mean(0)
    na, nb = np.sqrt((ra ** 2).sum(0)), np.sqrt((rb ** 2).sum(0))
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = (ra.T @ rb) / np.outer(na, nb)
    corr[(na == 0)[:, None] | (nb == 0)[None, :]] = np.nan
    return np.abs(np.clip(corr, -1.0, 1.0))


def lasso_matrix(codes_a, codes_b, alpha: float = LASSO_ALPHA) -> np.ndarray:
    """|coefficients| of a Lasso regressing b's codes on a's: entry (k, l) is how much a's dimension k
    predicts b's dimension l, (Da, Db)."""
    from sklearn.linear_model import Lasso
    a, b = _two_dimensional(codes_a, "codes_a"), _two_dimensional(codes_b, "codes_b")
    if len(a) != len(b):
        raise DataError(f"both models must encode the same observations; got {len(a)} and {len(b)} rows")
    model = Lasso(alpha=alpha).fit(a, b)
    return np.abs(np.atleast_2d(model.coef_)).T


def _two_dimensional(codes, name: str) -> np.ndarray:
    c = np.asarray(codes, dtype=np.float64)
    if c.ndim != 2 or c.shape[0] < 2 or c.shape[1] < 1:
        raise DataError(f"{name} must be an (N, D) array with N >= 2 observations; got shape {c.shape}")
    if not np.all(np.isfinite(c)):
        raise DataError(f"{name} holds nan or inf; UDR needs finite codes")
    return c


def _standardised(codes: np.ndarray) -> np.ndarray:
    # sklearn's StandardScaler: a constant dimension keeps scale 1 (it becomes 0, not nan)
    std = codes.std(axis=0)
    return (codes - codes.mean(axis=0)) / np.where(std > 0, std, 1.0)


def udr(codes: Sequence, kl: Sequence, correlation: str = "lasso", kl_threshold: float = KL_THRESHOLD,
        filter_low_kl: bool = True) -> dict:
    """UDR of each of M >= 2 models from their codes of the same N observations (M arrays (N, D))
    and their average KL per dimension (M arrays (D,), `gaussian_kl_per_dim`).

    Returns {"model_scores": [M], "pairwise": M x M (nan on the diagonal; entry (i, j) scores pair
    i -> j), "active_dims": [M], "correlation", "kl_threshold"}."""
    if correlation not in CORRELATIONS:
        raise DataError(f"UDR correlation {correlation!r} is unknown; choose one of {list(CORRELATIONS)}")
    if len(codes) != len(kl):
        raise DataError(f"UDR needs a KL vector per model; got {len(codes)} code arrays and {len(kl)} KL vectors")
    if len(codes) < 2:
        raise DataError(f"UDR compares models of one setting that differ in seed: give at least 2; got {len(codes)}")
    reps, masks = [], []
    for i, (c, k) in enumerate(zip(codes, kl)):
        c = _two_dimensional(c, f"codes of model {i}")
        k = np.asarray(k, dtype=np.float64).reshape(-1)
        if k.shape[0] != c.shape[1]:
            raise DataError(f"model {i}: {c.shape[1]} code dimensions but {k.shape[0]} KL values")
        # disentanglement_lib zeroes the dimensions at KL <= 0.01 before any correlation, whatever
        # the filter's own threshold, then masks by the threshold
        reps.append(_standardised(c) * (k > KL_THRESHOLD))
        masks.append(k > kl_threshold if filter_low_kl else np.ones_like(k, dtype=bool))
    n = {len(r) for r in reps}
    if len(n) != 1:
        raise DataError(f"every model must encode the same observations; got row counts {sorted(n)}")
    m = len(reps)
    pairwise = np.full((m, m), np.nan)
    similarity = lasso_matrix if correlation == "lasso" else spearman_matrix
    for i in range(m):
        for j in range(m):
            if i != j:
                pairwise[i, j] = relative_strength(similarity(reps[i], reps[j])[np.ix_(masks[i], masks[j])])
    model_scores = [float(np.median(np.delete(pairwise[:, j], j))) for j in range(m)]
    return {"model_scores": model_scores, "pairwise": pairwise.tolist(),
            "active_dims": [int(mask.sum()) for mask in masks], "correlation": correlation,
            "kl_threshold": float(kl_threshold)}


__all__ = ["CORRELATIONS", "gaussian_kl_per_dim", "lasso_matrix", "relative_strength", "spearman_matrix", "udr"]
