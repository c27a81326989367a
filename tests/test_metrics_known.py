"""Known answers small enough to check by hand."""
import json

import numpy as np
import pytest

from untwine.metrics import (beta_vae_score, dci_from_importance, factor_vae_score, mig, mig_sampling, sap,
                             gaussian_total_correlation, mutual_info_codes)
from untwine.metrics._common import discrete_entropy, discrete_mutual_info, histogram_discretize
from untwine.metrics.modularity import modularity_from_mutual_info


def test_mig_on_a_tiny_discrete_table():
    # factor v in {0,1}, 4 samples; z0 = v (full information), z1 splits the samples independently of v
    v = np.array([[0], [0], [1], [1]])
    z = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    # I(z0; v) = H(v) = log 2; I(z1; v) = 0  ->  MIG = (log2 - 0) / log2 = 1
    assert mig(z, v)["mig"] == pytest.approx(1.0)
    # z1 = v as well: both carry log 2, gap 0
    assert mig(np.column_stack([v[:, 0], v[:, 0]]).astype(float), v)["mig"] == pytest.approx(0.0)
    # z0 = v, z1 = half-informative: z1 is 0,0,0,1 -> I(z1; v) = H(z1) - H(z1|v) = h(1/4) - 0.5 log 2
    z1 = np.array([0.0, 0.0, 0.0, 1.0])
    i1 = -(0.25 * np.log(0.25) + 0.75 * np.log(0.75)) - 0.5 * np.log(2)
    got = mig(np.column_stack([v[:, 0].astype(float), z1]), v)["mig"]
    assert got == pytest.approx((np.log(2) - i1) / np.log(2))


def test_discrete_mutual_info_matches_sklearn():
    from sklearn.metrics import mutual_info_score
    rng = np.random.default_rng(3)
    a = rng.integers(0, 5, size=(400, 3))
    b = np.column_stack([a[:, 0] // 2, rng.integers(0, 3, 400)])
    mi = discrete_mutual_info(a, b)
    for d in range(3):
        for k in range(2):
            assert mi[d, k] == pytest.approx(mutual_info_score(b[:, k], a[:, d]), abs=1e-12)
    assert discrete_entropy(b)[0] == pytest.approx(mutual_info_score(b[:, 0], b[:, 0]))


def test_histogram_discretize_matches_disentanglement_lib():
    x = np.random.default_rng(0).normal(size=(1000, 2))
    got = histogram_discretize(x, 20)
    for d in range(2):
        ref = np.digitize(x[:, d], np.histogram(x[:, d], 20)[1][:-1])
        np.testing.assert_array_equal(got[:, d], ref - 1)


def test_dci_entropy_weighting_on_a_fixed_matrix():
    # code 0 -> factor 0 only; code 1 split evenly between both factors; code 2 unused
    r = np.array([[2.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    out = dci_from_importance(r)
    # per code: 1 - H_2: code0 1, code1 0, code2 (uniform after +eps) 0; weights 2/4, 2/4, 0
    assert out["disentanglement"] == pytest.approx(0.5, abs=1e-6)
    # per factor (base 3): f0 has (2/3, 1/3, 0): 1 - H3; f1 has (0, 1, 0): 1; weights 3/4, 1/4
    h = -(2 / 3 * np.log(2 / 3) + 1 / 3 * np.log(1 / 3)) / np.log(3)
    assert out["completeness"] == pytest.approx(0.75 * (1 - h) + 0.25, abs=1e-6)
    assert dci_from_importance(np.eye(4))["disentanglement"] == pytest.approx(1.0, abs=1e-6)
    assert dci_from_importance(np.ones((4, 4)))["completeness"] == pytest.approx(0.0, abs=1e-6)


def test_modularity_by_hand():
    # dim 0 informs one factor only -> 1; dim 1 informs two factors equally (K=2) -> 1 - 1 = 0
    mi = np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 0.0]])
    # dim 2 has no information -> 0 (as disentanglement_lib)
    assert modularity_from_mutual_info(mi) == pytest.approx((1 + 0 + 0) / 3)


def test_sap_on_separable_toy_codes():
    rng = np.random.default_rng(0)
    f = rng.integers(0, 2, size=(600, 2))
    # dim 0 separates factor 0 perfectly, dim 1 separates factor 1; each is useless for the other
    z = np.column_stack([f[:, 0] * 4.0 - 2.0, f[:, 1] * 4.0 - 2.0]) + rng.normal(scale=0.05, size=(600, 2))
    out = sap(z[:400], f[:400], z[400:], f[400:])
    m = np.array(out["score_matrix"])
    assert np.diag(m) == pytest.approx([1.0, 1.0])
    assert m[0, 1] == pytest.approx(0.5, abs=0.1) and m[1, 0] == pytest.approx(0.5, abs=0.1)
    assert out["sap"] == pytest.approx(np.mean([1 - m[1, 0], 1 - m[0, 1]]))
    # continuous variant: squared correlations, top1 - top2 by hand
    cont = sap(z[:400], f[:400], z[400:], f[400:], continuous=True)
    r = np.corrcoef(np.column_stack([z[:400], f[:400]]), rowvar=False)[:2, 2:] ** 2
    assert cont["sap"] == pytest.approx(np.mean(np.abs(r[0] - r[1])))


def test_beta_vae_on_constructed_codes():
    # 3 factors; the code dimension of the fixed factor has zero difference, the others differ by 1
    rng = np.random.default_rng(0)
    def batches(p):
        labels = rng.integers(0, 3, p)
        a = rng.normal(size=(p, 8, 3))
        b = a + rng.choice([-1.0, 1.0], size=a.shape)
        b[np.arange(p), :, labels] = a[np.arange(p), :, labels]
        return a, b, labels
    out = beta_vae_score(*batches(300), *batches(150))
    assert out == {"train_accuracy": 1.0, "eval_accuracy": 1.0}
    # codes identical in both batches carry no label: chance (majority class) accuracy
    a, b, lab = batches(300)
    out = beta_vae_score(a, a, lab, a[:150], a[:150], lab[:150])
    assert out["eval_accuracy"] == pytest.approx(np.mean(lab[:150] == np.bincount(lab).argmax()))


def test_factor_vae_votes_and_count():
    # dims 0..2 follow factors 0..2; dim 3 is a collapsed latent (std < 0.05) and must be pruned
    rng = np.random.default_rng(0)
    glob = np.column_stack([rng.normal(size=(500, 3)), 0.001 * rng.normal(size=500)])
    def batches(p, lab):
        c = rng.normal(size=(p, 16, 4))
        c[..., 3] *= 0.001
        c[np.arange(p), :, lab] = 0.3   # the fixed factor's dim has no variance within the batch
        return c
    lab = np.arange(30) % 3
    out = factor_vae_score(glob, batches(30, lab), lab, batches(30, lab), lab)
    assert out == {"train_accuracy": 1.0, "eval_accuracy": 1.0, "num_active_dims": 3}
    # dim 0 answers for factors 0 and 1: majority vote maps it to one of them -> 2/3 of votes right
    votes_lab = np.array([0, 0, 1, 2, 2, 2])
    c = rng.normal(size=(6, 16, 4)); c[..., 3] *= 0.001
    c[[0, 1, 2], :, 0] = 0.0
    c[[3, 4, 5], :, 2] = 0.0
    out = factor_vae_score(glob, c, votes_lab, c, votes_lab)
    assert out["train_accuracy"] == pytest.approx(5 / 6)
    assert factor_vae_score(np.zeros((10, 2)), c[..., :2], votes_lab, c[..., :2], votes_lab)["num_active_dims"] == 0


def test_gaussian_total_correlation_closed_form():
    rng = np.random.default_rng(0)
    rho = 0.6
    z = rng.multivariate_normal([0, 0], [[1, rho], [rho, 1]], size=40000)
    assert gaussian_total_correlation(z) == pytest.approx(-0.5 * np.log(1 - rho ** 2), abs=0.015)
    assert gaussian_total_correlation(np.column_stack([z[:, 0], np.ones(len(z))])) == 0.0
    assert mutual_info_codes(np.column_stack([z[:, 0], z[:, 0]])) > 1.0


def test_mig_sampling_separated_posteriors():
    # two factors of 4 values on the full grid; dim 0 = factor 0, dim 1 = factor 1, tiny posterior
    # variance: q(z_j) is 4 separated spikes, so I(z_j; v_j) = log 4 and the other MI is 0 -> MIG 1
    grid = np.stack(np.meshgrid(np.arange(4), np.arange(4), indexing="ij"), -1).reshape(-1, 2)
    grid = np.repeat(grid, 64, axis=0)   # 64 images per grid point, so the estimates are tight
    means = grid.astype(float)
    logvars = np.full(means.shape, np.log(1e-4))
    out = mig_sampling(means, logvars, grid, [4, 4], num_samples=1024, seed=0)
    assert out["mig"] == pytest.approx(1.0, abs=1e-3)
    assert out["marginal_entropies"] == pytest.approx([np.log(4) + 0.5 * np.log(2 * np.pi * np.e * 1e-4)] * 2,
                                                      abs=0.05)
    # swapping the code dims changes nothing; a single factor can be chosen
    swapped = mig_sampling(means[:, ::-1], logvars, grid, [4, 4], num_samples=1024, seed=0, factors_to_use=[1])
    assert swapped["mig"] == pytest.approx(1.0, abs=1e-3) and swapped["factors_used"] == [1]
    json.dumps(out)


def test_entropy_estimate_matches_the_direct_formula_in_float64():
    import torch
    from untwine.metrics.mig_sampling import _entropy_estimate
    gen = torch.Generator().manual_seed(0)
    mu = 3 * torch.randn(500, 3, generator=gen)
    logvar = torch.randn(500, 3, generator=gen) * 0.5 - 9      # variances around 1e-4
    z = mu[:50] + torch.randn(50, 3, generator=gen) * torch.exp(0.5 * logvar[:50])
    m64, l64, z64 = mu.double(), logvar.double(), z.double()
    logq = (-0.5 * (l64[:, None] + np.log(2 * np.pi)) - 0.5 * (z64[None] - m64[:, None]) ** 2 / l64.exp()[:, None])
    direct = -(torch.logsumexp(logq, dim=0) - np.log(500)).mean(dim=0)
    assert _entropy_estimate(z, mu, logvar).numpy() == pytest.approx(direct.numpy(), abs=2e-3)
