"""Bad input gets a DataError that names the problem, never a silent number."""
import numpy as np
import pytest

from untwine.errors import DataError
from untwine.metrics import (beta_vae_score, dci, dci_from_importance, factor_r2, factor_vae_score, mig,
                             mig_sampling, modularity_explicitness, sap, gaussian_total_correlation,
                             mutual_info_codes, evaluate_arrays)

RNG = np.random.default_rng(0)
F = RNG.integers(0, [3, 4], size=(200, 2))
Z = RNG.normal(size=(200, 3))

TRAIN_TEST = [
    lambda c, f: dci(c, f, Z, F),
    lambda c, f: sap(c, f, Z, F),
    lambda c, f: modularity_explicitness(c, f, Z, F),
    lambda c, f: factor_r2(c, f, Z, F),
    lambda c, f: mig(c, f),
]
IDS = ["dci", "sap", "modularity_explicitness", "factor_r2", "mig"]


@pytest.mark.parametrize("fn", TRAIN_TEST, ids=IDS)
def test_nan_and_inf(fn):
    for bad in (np.nan, np.inf):
        z = Z.copy()
        z[5, 1] = bad
        with pytest.raises(DataError, match=r"NaN/inf value\(s\) \(first at row 5, dim 1\)"):
            fn(z, F)


@pytest.mark.parametrize("fn", TRAIN_TEST, ids=IDS)
def test_shapes_and_sizes(fn):
    with pytest.raises(DataError, match=r"shape \(N, D\)"):
        fn(Z[:, 0], F)
    with pytest.raises(DataError, match="199 rows but the codes have 200"):
        fn(Z, F[:199])
    with pytest.raises(DataError, match="1 sample"):
        fn(Z[:1], F[:1])
    with pytest.raises(DataError, match="factor column\\(s\\) \\[1\\].*single value"):
        fn(Z, np.column_stack([F[:, 0], np.zeros(200, int)]))
    with pytest.raises(DataError, match="integer factor classes"):
        fn(Z, F + 0.5)
    with pytest.raises(DataError, match="1-d array"):
        fn(Z, F[:, 0])


def test_train_test_dimension_mismatch():
    with pytest.raises(DataError, match="train codes have 3 dims but test codes have 2"):
        dci(Z, F, Z[:, :2], F)


def test_special_batch_metrics():
    a = RNG.normal(size=(10, 4, 3))
    lab = np.arange(10) % 3
    with pytest.raises(DataError, match="points, batch, D"):
        beta_vae_score(a, a[:, :, :2], lab, a, a, lab)
    with pytest.raises(DataError, match="single factor"):
        beta_vae_score(a, a, np.zeros(10, int), a, a, lab)
    bad = a.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        beta_vae_score(bad, a, lab, a, a, lab)
    with pytest.raises(DataError, match="batch >= 2"):
        factor_vae_score(Z, a[:, :1], lab, a, lab)
    with pytest.raises(DataError, match="labels"):
        factor_vae_score(Z, a, lab[:5], a, lab)
    with pytest.raises(DataError, match="NaN"):
        factor_vae_score(Z, bad, lab, a, lab)


def test_mig_sampling_and_unsupervised_and_importance():
    with pytest.raises(DataError, match="logvars have shape"):
        mig_sampling(Z, Z[:, :2], F, [3, 4])
    with pytest.raises(DataError, match="factors_to_use"):
        mig_sampling(Z, Z, F, [3, 4], factors_to_use=[5])
    with pytest.raises(DataError, match="factor_sizes says 2"):
        mig_sampling(Z, Z, F, [3, 2])
    with pytest.raises(DataError, match="NaN"):
        gaussian_total_correlation(np.array([[0.0, np.nan], [1.0, 2.0]]))
    with pytest.raises(DataError, match="1 sample"):
        mutual_info_codes(Z[:1])
    with pytest.raises(DataError, match="non-negative"):
        dci_from_importance(-np.eye(2))
    with pytest.raises(DataError, match="mode must be"):
        dci(Z, F, Z, F, mode="slow")
    with pytest.raises(DataError, match="199 rows"):
        evaluate_arrays(Z, F[:199])


def _not_npz_files(tmp_path):
    """(name, path) of files that are not a readable codes/factors .npz."""
    import pickle
    rng = np.random.default_rng(0)
    files = {}
    files["random_bytes"] = rng.bytes(2000)
    np.savez(tmp_path / "ok.npz", codes=Z, factors=F)
    whole = (tmp_path / "ok.npz").read_bytes()
    files["truncated_zip"] = whole[: len(whole) // 2]
    damaged = bytearray(whole)
    damaged[80:120] = b"x" * 40
    files["damaged_zip"] = bytes(damaged)
    files["pickle"] = pickle.dumps({"codes": [1, 2]})
    files["empty"] = b""
    paths = {}
    for name, data in files.items():
        paths[name] = tmp_path / f"{name}.npz"
        paths[name].write_bytes(data)
    np.savez(tmp_path / "objects.npz", codes=np.array([{}, {}], dtype=object), factors=F[:2])
    paths["object_arrays"] = tmp_path / "objects.npz"
    np.save(tmp_path / "lone.npy", Z)
    (tmp_path / "lone.npy").rename(tmp_path / "lone.npz")
    paths["lone_npy"] = tmp_path / "lone.npz"
    return paths


def test_load_codes_npz_rejects_files_that_are_not_codes_npz(tmp_path):
    from untwine.metrics.commands import load_codes_npz
    for name, path in _not_npz_files(tmp_path).items():
        with pytest.raises(DataError, match="expected a .npz of numeric arrays 'codes'") as info:
            load_codes_npz(path)
        assert str(path) in str(info.value), name
        assert "allow_pickle" not in str(info.value) or name == "object_arrays", name   # never advise unpickling
    codes, factors, sizes = load_codes_npz(tmp_path / "ok.npz")
    np.testing.assert_array_equal(codes, Z) and np.testing.assert_array_equal(factors, F)
    assert sizes is None


def test_cli_evaluate_garbage_file_is_a_clear_error(tmp_path, capsys):
    from untwine.cli import main
    paths = _not_npz_files(tmp_path)
    for name in ("random_bytes", "truncated_zip"):
        assert main(["evaluate", str(paths[name])]) == 2, name
        err = capsys.readouterr().err
        assert str(paths[name]) in err and "expected a .npz" in err, (name, err)
        assert "Traceback" not in err
