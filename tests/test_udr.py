"""UDR (Duan et al. 2020, disentanglement_lib's udr.py) against values worked out by hand."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from untwine.errors import DataError
from untwine.metrics.udr import gaussian_kl_per_dim, lasso_matrix, relative_strength, spearman_matrix, udr


def grid_codes(dims: int, levels: int = 6) -> np.ndarray:
    """Every combination of `levels` values in each of `dims` dimensions: the columns are exactly
    uncorrelated (Pearson and Spearman), so that similarity matrices are exactly diagonal."""
    axes = np.meshgrid(*[np.linspace(-1.0, 1.0, levels)] * dims, indexing="ij")
    return np.column_stack([a.ravel() for a in axes])


def test_relative_strength_hand_values():
    assert relative_strength(np.eye(3)) == 1.0
    # columns: 1/2, 1/2, 1 -> 2/3; rows the same -> 2/3 (disentanglement_lib's test: between 0.6 and 0.7)
    assert relative_strength([[1, 1, 0], [1, 1, 0], [0, 0, 1]]) == pytest.approx(2 / 3)
    assert relative_strength(np.ones((3, 3))) == pytest.approx(1 / 3)
    assert relative_strength(np.zeros((3, 3))) == 0.0
    # a zero column counts 0 in the column mean: columns (1/2, 0) -> 1/4, rows (1, 1) -> 1; mean 5/8
    assert relative_strength([[1.0, 0.0], [1.0, 0.0]]) == pytest.approx(0.625)
    # rectangular: columns 0.9^2/0.9=0.9 and 0.3^2/(0.3+0.1)=0.225; rows 0.9^2/1.2=0.675 and 0.1^2/0.1=0.1
    m = [[0.9, 0.3], [0.0, 0.1]]
    assert relative_strength(m) == pytest.approx(((0.9 + 0.225) / 2 + (0.675 + 0.1) / 2) / 2)
    assert relative_strength(np.zeros((0, 4))) == 0.0


def test_spearman_matrix_equals_scipy_and_ignores_sign_and_monotone_maps(rng):
    a = rng.normal(size=(300, 3))
    b = np.column_stack([-a[:, 2], np.exp(a[:, 0]), rng.normal(size=300), a[:, 1] ** 3])
    m = spearman_matrix(a, b)
    ref = np.abs(scipy.stats.spearmanr(a, b).statistic[:3, 3:])
    np.testing.assert_allclose(m, ref, atol=1e-12)
    assert m[2, 0] == pytest.approx(1.0) and m[0, 1] == pytest.approx(1.0) and m[1, 3] == pytest.approx(1.0)
    assert np.isnan(spearman_matrix(a, np.column_stack([b[:, 0], np.zeros(300)]))[:, 1]).all()  # constant dim


def test_lasso_matrix_on_standardised_codes_is_one_minus_alpha():
    # exactly uncorrelated standardised columns: each Lasso coefficient is 1 - alpha, the rest 0
    a = grid_codes(3)
    a = (a - a.mean(0)) / a.std(0)
    m = lasso_matrix(a, a[:, [1, 2, 0]])
    expected = np.zeros((3, 3))
    expected[[1, 2, 0], [0, 1, 2]] = 0.9
    np.testing.assert_allclose(m, expected, atol=1e-6)


def test_udr_of_permuted_and_sign_flipped_copies_is_one_and_independent_codes_score_near_zero(rng):
    a = grid_codes(4)                                     # 1,296 observations, 4 exactly uncorrelated dims
    perm = a[:, [3, 0, 2, 1]] * np.array([1, -1, 2.5, -0.5])
    kl = np.ones(4)
    spear = udr([a, perm, a.copy()], [kl] * 3, correlation="spearman")
    assert spear["model_scores"] == pytest.approx([1.0, 1.0, 1.0])
    # Lasso: 1 - alpha on each matched pair, 0 elsewhere: max^2 / sum = 0.9 for every row and column
    lasso = udr([a, perm], [kl] * 2, correlation="lasso")
    assert lasso["model_scores"] == pytest.approx([0.9, 0.9], abs=1e-6)
    noise = [rng.normal(size=(1000, 5)) for _ in range(3)]
    kl = np.ones(5)
    assert max(udr(noise, [kl] * 3, correlation="lasso")["model_scores"]) < 0.02   # Lasso zeroes chance links
    # Spearman of independent codes: |rho| ~ 1/sqrt(N) everywhere, so max^2/sum is a few hundredths
    assert max(udr(noise, [kl] * 3, correlation="spearman")["model_scores"]) < 0.1


def test_udr_filters_inactive_dimensions_by_kl(rng):
    """disentanglement_lib's test_metric_kl: one informative dimension plus noise dims; with the KL
    filter only the informative one counts (UDR ~1), without it the noise drags UDR toward 0."""
    x = rng.normal(size=1000)
    def model():
        return np.column_stack([x, rng.uniform(size=(1000, 4))])
    kl = np.array([1.0, 0, 0, 0, 0])
    filtered = udr([model(), model()], [kl, kl], correlation="spearman")
    assert filtered["model_scores"] == pytest.approx([1.0, 1.0]) and filtered["active_dims"] == [1, 1]
    unfiltered = udr([model(), model()], [kl, kl], correlation="spearman", filter_low_kl=False)
    # the zeroed dims correlate with nothing: 1 of 5 rows and columns scores 1 -> 0.2
    assert unfiltered["model_scores"] == pytest.approx([0.2, 0.2])


def test_udr_is_the_median_over_the_pairs_into_each_model(rng):
    a = grid_codes(3, levels=8)
    n = len(a)
    half = np.column_stack([a[:, 0], rng.normal(size=(n, 2))])       # shares 1 of 3 axes with a
    kl = np.ones(3)
    out = udr([a, a.copy(), half], [kl] * 3, correlation="spearman")
    pw = np.array(out["pairwise"])
    assert np.isnan(np.diag(pw)).all()
    assert pw[0, 1] == pytest.approx(1.0) and pw[1, 0] == pytest.approx(1.0)
    for j in range(3):
        assert out["model_scores"][j] == pytest.approx(np.median(np.delete(pw[:, j], j)))
    assert out["model_scores"][0] == pytest.approx((1.0 + pw[2, 0]) / 2)   # median of two pairs: their mean
    # half -> a: one matched axis (1 for its row and column), the other 2 rows/cols near chance
    assert 1 / 3 <= pw[2, 0] < 0.45 and out["model_scores"][2] < 0.45 < out["model_scores"][0]


def test_gaussian_kl_per_dim_hand_values():
    mean = np.array([[0.0, 1.0], [0.0, -1.0]])
    logvar = np.array([[0.0, np.log(2.0)], [0.0, np.log(2.0)]])
    # dim 0: the prior itself -> 0; dim 1: 0.5 * (1 + 2 - log 2 - 1)
    np.testing.assert_allclose(gaussian_kl_per_dim(mean, logvar), [0.0, 0.5 * (2 - np.log(2.0))])


def test_udr_bad_input_names_the_problem(rng):
    a = rng.normal(size=(50, 3))
    with pytest.raises(DataError, match="at least 2"):
        udr([a], [np.ones(3)])
    with pytest.raises(DataError, match="same observations"):
        udr([a, a[:40]], [np.ones(3)] * 2)
    with pytest.raises(DataError, match="KL values"):
        udr([a, a], [np.ones(3), np.ones(2)])
    with pytest.raises(DataError, match="correlation"):
        udr([a, a], [np.ones(3)] * 2, correlation="pearson")
    with pytest.raises(DataError, match="nan or inf"):
        udr([a, np.full_like(a, np.nan)], [np.ones(3)] * 2)
