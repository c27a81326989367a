"""The sanity facts of DESIGN section 8, for every metric: ground-truth factors as the code score about 1,
constant and pure-noise codes about 0 (or chance, for the accuracy-type scores, as stated per metric),
a random rotation of the factors scores lower than the factors, and the order of code dims changes nothing.
"""
import json

import numpy as np
import pytest

from untwine.metrics import (beta_vae_score, dci, factor_r2, factor_vae_score, mig, modularity_explicitness,
                             mutual_info_codes, gaussian_total_correlation, sample_beta_vae_factors,
                             sample_factor_vae_factors, sap)

SIZES = np.array([4, 5, 6])
RNG = np.random.default_rng(7)
F_TRAIN = RNG.integers(0, SIZES, size=(1500, 3))
F_TEST = RNG.integers(0, SIZES, size=(700, 3))
ROTATION = np.linalg.qr(RNG.normal(size=(3, 3)))[0]
PERM = np.array([2, 0, 1])


def standardise(f):
    return (f - (SIZES - 1) / 2) / SIZES


REPRESENTATIONS = {
    "identity": standardise,
    "rotation": lambda f: standardise(f) @ ROTATION,
    "permuted": lambda f: standardise(f)[:, PERM],
    "constant": lambda f: np.ones((len(f), 3)),
    "noise": lambda f: np.random.default_rng(len(f)).normal(size=(len(f), 3)),
}

_DCI_CACHE = {}


def _dci(a, b, c, d):
    key = a.tobytes()
    if key not in _DCI_CACHE:   # D and C come from the same fit
        _DCI_CACHE[key] = dci(a, b, c, d)
    return _DCI_CACHE[key]


# metric -> (score of (codes_tr, f_tr, codes_te, f_te), value of a constant code, of a noise code, tolerance)
CHANCE_MAJORITY = max(np.mean(F_TEST[:, k] == np.bincount(F_TRAIN[:, k]).argmax()) for k in range(3))
METRICS = {
    "mig": (lambda a, b, c, d: mig(a, b)["mig"], 0.0, 0.0, 0.05),
    "dci_disentanglement": (lambda a, b, c, d: _dci(a, b, c, d)["disentanglement"], 0.0, 0.0, 0.15),
    "dci_completeness": (lambda a, b, c, d: _dci(a, b, c, d)["completeness"], 0.0, 0.0, 0.15),
    "sap_continuous": (lambda a, b, c, d: sap(a, b, c, d, continuous=True)["sap"], 0.0, 0.0, 0.05),
    "sap_discrete": (lambda a, b, c, d: sap(a, b, c, d)["sap"], 0.0, 0.0, 0.05),
    "modularity": (lambda a, b, c, d: modularity_explicitness(a, b, c, d)["modularity"], 0.0, 0.0, 0.5),
    "factor_r2_single": (lambda a, b, c, d: factor_r2(a, b, c, d)["factor_r2_single"], 0.0, 0.0, 0.05),
}


def score(metric, rep):
    fn = METRICS[metric][0]
    g = REPRESENTATIONS[rep]
    return fn(g(F_TRAIN), F_TRAIN, g(F_TEST), F_TEST)


@pytest.fixture(scope="module")
def table():
    return {m: {r: score(m, r) for r in REPRESENTATIONS} for m in METRICS}


@pytest.mark.parametrize("metric", list(METRICS))
def test_sanity_facts(table, metric):
    t = table[metric]
    _, const, noise, tol = METRICS[metric]
    if metric == "sap_discrete":
        # a linear SVM on one dimension cannot separate middle classes of a 4..6-class factor: the
        # identity is far from 1 here (see test_sap_discrete_binary_factors) but still beats a rotation
        assert t["identity"] > 0.15
    else:
        assert t["identity"] > 0.9, t
    assert t["constant"] == pytest.approx(const, abs=0.01), t
    assert t["noise"] == pytest.approx(noise, abs=tol), t
    assert t["rotation"] < t["identity"] - 0.1, t
    assert t["permuted"] == pytest.approx(t["identity"], abs=1e-9), t


def test_sap_discrete_binary_factors():
    # with classifiers the other dims score chance accuracy (0.5 for balanced binary factors), so the
    # ground truth scores 1 - chance, not 1: a property of SAP's discrete protocol
    f = RNG.integers(0, 2, size=(900, 3))
    z = f - 0.5   # centred, like an encoder's code (LinearSVC also penalises its intercept)
    out = sap(z[:600], f[:600], z[600:], f[600:])
    m = np.array(out["score_matrix"])
    assert np.diag(m) == pytest.approx([1.0, 1.0, 1.0])
    assert out["sap"] == pytest.approx(0.5, abs=0.1)


def test_informativeness_explicitness_and_r2_are_at_chance_for_noise():
    noise = REPRESENTATIONS["noise"]
    ident = standardise
    d_id = dci(ident(F_TRAIN), F_TRAIN, ident(F_TEST), F_TEST)
    d_no = dci(noise(F_TRAIN), F_TRAIN, noise(F_TEST), F_TEST)
    assert d_id["informativeness_test"] == pytest.approx(1.0)
    assert d_no["informativeness_test"] < 1 / SIZES.min() + 0.1
    e_id = modularity_explicitness(ident(F_TRAIN), F_TRAIN, ident(F_TEST), F_TEST)
    e_no = modularity_explicitness(noise(F_TRAIN), F_TRAIN, noise(F_TEST), F_TEST)
    assert e_id["explicitness_test"] > 0.95 and e_no["explicitness_test"] == pytest.approx(0.5, abs=0.05)
    r_id = factor_r2(ident(F_TRAIN), F_TRAIN, ident(F_TEST), F_TEST)
    r_rot = factor_r2(ident(F_TRAIN) @ ROTATION, F_TRAIN, ident(F_TEST) @ ROTATION, F_TEST)
    assert r_id["factor_r2"] == pytest.approx(1.0) and r_rot["factor_r2"] == pytest.approx(1.0)  # linear readout
    assert factor_r2(noise(F_TRAIN), F_TRAIN, noise(F_TEST), F_TEST)["factor_r2"] == pytest.approx(0.0, abs=0.02)


def _special_batches(code_fn, seed=0):
    rng = np.random.default_rng(seed)
    fa, fb, lab = sample_beta_vae_factors(SIZES, 400, 32, rng)
    fa2, fb2, lab2 = sample_beta_vae_factors(SIZES, 200, 32, rng)
    beta = beta_vae_score(code_fn(fa), code_fn(fb), lab, code_fn(fa2), code_fn(fb2), lab2)
    var_f = rng.integers(0, SIZES, size=(2000, 3))
    ft, lt = sample_factor_vae_factors(SIZES, 400, 32, rng)
    fe, le = sample_factor_vae_factors(SIZES, 200, 32, rng)
    fvae = factor_vae_score(code_fn(var_f), code_fn(ft), lt, code_fn(fe), le)
    return beta["eval_accuracy"], fvae["eval_accuracy"]


def _on_last_axis(fn):
    return lambda f: fn(f.reshape(-1, 3)).reshape(f.shape[:-1] + (3,))


def test_beta_vae_and_factor_vae_sanity():
    ident = _special_batches(_on_last_axis(standardise))
    rot = _special_batches(_on_last_axis(REPRESENTATIONS["rotation"]))
    perm = _special_batches(_on_last_axis(REPRESENTATIONS["permuted"]))
    noise = _special_batches(lambda f: np.random.default_rng(1).normal(size=f.shape[:-1] + (3,)))
    const = _special_batches(lambda f: np.ones(f.shape[:-1] + (3,)))
    assert ident == (1.0, 1.0)
    assert perm == ident
    assert rot[1] < 1.0 - 0.1                 # FactorVAE: a rotation spreads every factor over dims
    assert rot[0] <= ident[0]                 # BetaVAE's linear classifier sees through rotations partly
    assert noise[0] < 1 / 3 + 0.1 and noise[1] < 1 / 3 + 0.15   # chance is 1/3
    assert const[1] == 0.0                    # no active dimension
    assert const[0] < 1 / 3 + 0.1


def test_unsupervised_sanity():
    rng = np.random.default_rng(0)
    f = rng.uniform(-1, 1, size=(5000, 3))
    mixed = f @ np.array([[1.0, 0.8, 0.0], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
    assert gaussian_total_correlation(f) == pytest.approx(0.0, abs=0.01)
    assert gaussian_total_correlation(mixed) > 0.1
    assert gaussian_total_correlation(f[:, PERM]) == pytest.approx(gaussian_total_correlation(f))
    rotated = f @ np.linalg.qr(rng.normal(size=(3, 3)))[0]
    assert mutual_info_codes(rotated) > mutual_info_codes(f) + 0.02
    assert mutual_info_codes(f[:, PERM]) == pytest.approx(mutual_info_codes(f))
    assert mutual_info_codes(np.ones((100, 3))) == 0.0


def test_results_are_json_ready_and_deterministic():
    a = dci(standardise(F_TRAIN) @ ROTATION, F_TRAIN, standardise(F_TEST) @ ROTATION, F_TEST)
    b = dci(standardise(F_TRAIN) @ ROTATION, F_TRAIN, standardise(F_TEST) @ ROTATION, F_TEST)
    assert json.loads(json.dumps(a)) == b
