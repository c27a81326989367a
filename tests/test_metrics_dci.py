"""DCI's fast mode (vectorised gradient boosting on binned codes) against the reference mode
(sklearn GradientBoostingClassifier per factor, as disentanglement_lib) on a panel of representations:
D, C and I must agree within 0.05. The full panel (dSprites factor sizes) is slow; a subset runs by default.
"""
import numpy as np
import pytest

from untwine.metrics.dci import dci  # the function (the package attribute `dci` becomes the module once imported)

TOLERANCE = 0.05


def make_panel(sizes, n_train, n_test, seed=0, noise=0.03):
    rng = np.random.default_rng(seed)
    sizes = np.asarray(sizes)
    k = len(sizes)
    f_train = rng.integers(0, sizes, size=(n_train, k))
    f_test = rng.integers(0, sizes, size=(n_test, k))
    rotation = np.linalg.qr(rng.normal(size=(k, k)))[0]
    perm, scale = rng.permutation(k), rng.uniform(0.2, 5.0, size=k)
    mix = np.eye(k)
    mix[0, 1], mix[k - 2, k - 1], mix[k - 1, 0] = 0.5, 0.7, 0.3   # partial entanglement
    noise_train, noise_test = rng.normal(size=(n_train, k)), rng.normal(size=(n_test, k))
    extra_train, extra_test = rng.normal(size=(n_train, 2)), rng.normal(size=(n_test, 2))

    def standardise(f):
        return (f - (sizes - 1) / 2) / sizes

    reps = {
        "identity": lambda f, e, x: standardise(f),
        "permuted_rescaled": lambda f, e, x: standardise(f)[:, perm] * scale,
        "rotation": lambda f, e, x: standardise(f) @ rotation,
        "noisy_with_nuisance_dims": lambda f, e, x: np.column_stack([standardise(f) + noise * e, x]),
        "partial_mixture": lambda f, e, x: standardise(f) @ mix,
    }
    return {name: (g(f_train, noise_train, extra_train), f_train, g(f_test, noise_test, extra_test), f_test)
            for name, g in reps.items()}


def compare(panel, max_bins=1024):
    rows = {}
    for name, args in panel.items():
        fast, ref = dci(*args, mode="fast", max_bins=max_bins), dci(*args, mode="reference")
        rows[name] = {key: (fast[key], ref[key]) for key in
                      ("disentanglement", "completeness", "informativeness_test")}
    return rows


def assert_agree(rows):
    for name, row in rows.items():
        for key, (fast, ref) in row.items():
            assert abs(fast - ref) <= TOLERANCE, f"{name} {key}: fast {fast:.4f} vs reference {ref:.4f}"


def test_fast_mode_agrees_with_reference_on_a_small_panel():
    panel = make_panel([3, 4, 5], 600, 300)
    rows = compare({k: panel[k] for k in ("identity", "rotation", "partial_mixture")})
    assert_agree(rows)
    assert rows["rotation"]["disentanglement"][0] < rows["identity"]["disentanglement"][0] - 0.3


def test_fast_mode_matches_reference_exactly_enough_on_discrete_codes():
    # few distinct code values: the bins are the exact thresholds, so only tie-breaking differs
    panel = make_panel([3, 4, 5], 600, 300)
    ct, ft, cs, fs = panel["identity"]
    fast, ref = dci(ct, ft, cs, fs, mode="fast"), dci(ct, ft, cs, fs, mode="reference")
    assert fast["informativeness_train"] == ref["informativeness_train"]
    assert fast["informativeness_test"] == ref["informativeness_test"]
    np.testing.assert_allclose(fast["importance_matrix"], ref["importance_matrix"], atol=0.01)


@pytest.mark.slow
def test_fast_mode_agrees_with_reference_on_the_dsprites_sized_panel():
    rows = compare(make_panel([3, 6, 40, 32, 32], 2000, 1000))
    for name, row in rows.items():
        print(name, {k: (round(a, 4), round(b, 4)) for k, (a, b) in row.items()})
    assert_agree(rows)


@pytest.mark.slow
def test_heavy_noise_needs_the_exact_thresholds():
    # where the boosting overfits heavy noise (I ~ 0.37) the reference's exact thresholds matter:
    # 1,024 bins put D 0.06 off; 4,096 bins are every distinct value of 2,000 samples, and agree
    panel = make_panel([3, 6, 40, 32, 32], 2000, 1000, noise=0.1)
    rows = compare({"noisy_with_nuisance_dims": panel["noisy_with_nuisance_dims"]}, max_bins=4096)
    print(rows)
    assert_agree(rows)
