"""Unsupervised scores of a code (disentanglement_lib's unsupervised_metrics); lower = more factorised.

gaussian_total_correlation: KL between the Gaussian fitted to the codes and the product of its
marginals, 0.5 (sum log diag(S) - log det S). gaussian_wasserstein_correlation: 2 tr S - 2 tr sqrt(S diag S).
mutual_info_codes: mean pairwise discrete mutual information of the 20-bin codes (off-diagonal).
Code dimensions with zero variance are independent of everything and are left out (a constant code
scores 0), so these stay defined for collapsed latents.
"""
from __future__ import annotations

import numpy as np
import scipy.linalg

from untwine.metrics._common import check_codes, discrete_mutual_info, histogram_discretize


def _covariance_of_active(codes: np.ndarray) -> np.ndarray:
    cov = np.atleast_2d(np.cov(codes, rowvar=False))
    active = np.diag(cov) > 1e-12 * max(1.0, float(np.abs(codes).max()) ** 2)
    return cov[np.ix_(active, active)]


def gaussian_total_correlation(codes) -> float:
    cov = _covariance_of_active(check_codes(codes))
    if cov.shape[0] < 2:
        return 0.0
    return float(0.5 * (np.sum(np.log(np.diag(cov))) - np.linalg.slogdet(cov)[1]))


def gaussian_wasserstein_correlation(codes, normalise: bool = False) -> float:
    cov = _covariance_of_active(check_codes(codes))
    if cov.shape[0] < 2:
        return 0.0
    sqrtm = scipy.linalg.sqrtm(cov * np.diag(cov)[:, None])
    value = float(2 * np.trace(cov) - 2 * np.real(np.trace(sqrtm)))
    return value / float(np.trace(cov)) if normalise else value


def mutual_info_codes(codes, num_bins: int = 20) -> float:
    c = check_codes(codes)
    if c.shape[1] < 2:
        return 0.0
    binned = histogram_discretize(c, num_bins)
    mi = discrete_mutual_info(binned, binned)
    np.fill_diagonal(mi, 0.0)
    return float(mi.sum() / (c.shape[1] ** 2 - c.shape[1]))


def unsupervised_scores(codes, num_bins: int = 20) -> dict:
    return {"gaussian_total_correlation": gaussian_total_correlation(codes),
            "gaussian_wasserstein_correlation": gaussian_wasserstein_correlation(codes),
            "gaussian_wasserstein_correlation_norm": gaussian_wasserstein_correlation(codes, normalise=True),
            "mutual_info_score": mutual_info_codes(codes, num_bins)}
