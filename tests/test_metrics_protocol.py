"""evaluate() on a tiny synthetic dataset, evaluate_arrays(), presets, and the `untwine evaluate` command."""
import json

import numpy as np
import pytest
import torch

from untwine.cli import main
from untwine.data.base import GroundTruthData
from untwine.data.factors import FactorSpace
from untwine.errors import ConfigError
from untwine.metrics import PRESETS, evaluate, evaluate_arrays, resolve_metrics


class FactorImages(GroundTruthData):
    """1 x 1 x K 'images' whose pixels are the factor classes: the perfect representation is the image."""

    name = "factor_images"

    def __init__(self, sizes=(3, 4, 5)):
        self.factor_space = FactorSpace.from_values({f"f{i}": np.arange(s, dtype=float) for i, s in enumerate(sizes)})
        self.image_shape = (1, 1, len(sizes))
        self.calls = 0
        self.encoded = 0

    def images(self, indices):
        self.calls += 1
        self.encoded += len(indices)
        classes = self.factor_space.classes_of(np.asarray(indices))
        return classes.astype(np.uint8).reshape(len(indices), 1, -1, 1)   # (N, H=1, W=K, C=1)


def identity_code(x):
    return x.reshape(len(x), -1) * 255.0


SMALL = {"mig": {"num_train": 600}, "dci": {"num_train": 600, "num_test": 300},
         "sap": {"num_train": 600, "num_test": 300}, "modularity_explicitness": {"num_train": 600, "num_test": 300},
         "factor_r2": {"num_train": 600, "num_test": 300}, "unsupervised": {"num_train": 600},
         "beta_vae": {"num_train": 200, "num_eval": 100, "batch_size": 16},
         "factor_vae": {"num_train": 200, "num_eval": 100, "batch_size": 16, "num_variance_estimate": 500}}


def test_evaluate_identity_scores_one_and_encodes_each_image_once():
    data = FactorImages()
    res = evaluate(identity_code, data, metrics=SMALL, seed=0, batch_size=32)
    assert res["mig"]["mig"] > 0.9
    assert res["dci"]["disentanglement"] > 0.95 and res["dci"]["informativeness_test"] == pytest.approx(1.0)
    assert res["beta_vae"]["eval_accuracy"] == 1.0 and res["factor_vae"]["eval_accuracy"] == 1.0
    assert res["factor_r2"]["factor_r2"] == pytest.approx(1.0)
    meta = res["_meta"]
    # 60 grid points only; thousands of requested samples collapse onto them
    assert meta["num_encoded"] == data.encoded <= len(data.factor_space) == 60
    assert meta["num_requested"] > 10 * meta["num_encoded"]
    assert data.calls == -(-meta["num_encoded"] // 32)
    json.dumps(res)


def test_evaluate_is_deterministic_and_seed_dependent():
    data = FactorImages()
    rot = torch.as_tensor(np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0], dtype=torch.float32)
    rep = lambda x: identity_code(x) @ rot  # noqa: E731
    metrics = {"mig": {"num_train": 300}, "factor_vae": SMALL["factor_vae"]}
    a = evaluate(rep, data, metrics=metrics, seed=3)
    b = evaluate(rep, data, metrics=metrics, seed=3)
    c = evaluate(rep, data, metrics=metrics, seed=4)
    strip = lambda r: {k: v for k, v in r.items() if k != "_meta"}  # noqa: E731
    assert strip(a) == strip(b)
    assert strip(a) != strip(c)


def test_metric_samples_do_not_depend_on_other_requested_metrics():
    data = FactorImages()
    alone = evaluate(identity_code, data, metrics={"mig": {"num_train": 300}}, seed=1)
    together = evaluate(identity_code, data, metrics={"mig": {"num_train": 300}, "beta_vae": SMALL["beta_vae"]}, seed=1)
    assert alone["mig"] == together["mig"]


def test_mig_sampling_needs_the_posterior():
    data = FactorImages((4, 4))
    res = evaluate(identity_code, data, metrics={"mig_sampling": {"num_samples": 64}})
    assert "skipped" in res["mig_sampling"] and "logvar" in res["mig_sampling"]["skipped"]

    def posterior(x):
        mu = identity_code(x)
        return mu, torch.full_like(mu, np.log(1e-4))
    res = evaluate(posterior, data, metrics={"mig_sampling": {"num_samples": 64}})
    assert res["mig_sampling"]["mig"] == pytest.approx(1.0, abs=0.02)
    assert res["_meta"]["num_encoded"] == 16
    res2 = evaluate(identity_code, data, metrics={"mig_sampling": {"num_samples": 64}}, posterior=posterior)
    assert res2["mig_sampling"] == res["mig_sampling"]


def test_one_value_factors_are_left_out():
    data = FactorImages((3, 1, 4))
    res = evaluate(identity_code, data, metrics={"mig": {"num_train": 200}, "factor_vae": SMALL["factor_vae"]})
    assert res["_meta"]["factors"] == ["f0", "f2"]
    assert len(res["mig"]["mig_per_factor"]) == 2 and res["factor_vae"]["eval_accuracy"] == 1.0


def test_resolve_metrics_presets_and_errors():
    assert set(resolve_metrics(None)) == set(PRESETS["full"])
    fast = resolve_metrics("fast")
    assert "mig_sampling" not in fast and fast["dci"]["num_train"] < 10000 and fast["dci"]["mode"] == "fast"
    assert resolve_metrics("mig,sap") == {"mig": {"num_train": 10000, "num_bins": 20},
                                          "sap": {"num_train": 10000, "num_test": 5000, "continuous": False}}
    assert resolve_metrics(["dci"], overrides={"dci": {"mode": "reference"}})["dci"]["mode"] == "reference"
    with pytest.raises(ConfigError, match="unknown metric 'migg'"):
        resolve_metrics("migg")
    with pytest.raises(ConfigError, match="no parameter"):
        resolve_metrics({"mig": {"bins": 3}})
    with pytest.raises(ConfigError, match="not requested"):
        resolve_metrics("mig", overrides={"dci": {}})


def test_evaluate_arrays_scores_and_skips():
    rng = np.random.default_rng(0)
    f = rng.integers(0, [3, 4, 5], size=(1200, 3))
    res = evaluate_arrays(f.astype(float), f, metrics="full", seed=0,
                          overrides={"dci": {"num_train": 600, "num_test": 300}})
    assert res["mig"]["mig"] > 0.9 and res["dci"]["completeness"] > 0.95
    for name in ("beta_vae", "factor_vae", "mig_sampling"):
        assert "skipped" in res[name]
    assert res["_meta"]["num_train"] == 800 and res["_meta"]["num_test"] == 400
    again = evaluate_arrays(f.astype(float), f, metrics="full", seed=0,
                            overrides={"dci": {"num_train": 600, "num_test": 300}})
    assert {k: v for k, v in res.items() if k != "_meta"} == {k: v for k, v in again.items() if k != "_meta"}


def test_cli_evaluate_npz(tmp_path, capsys):
    rng = np.random.default_rng(0)
    f = rng.integers(0, [3, 4], size=(600, 2))
    np.savez(tmp_path / "codes.npz", codes=f.astype(np.float32), factors=f)
    out = tmp_path / "res" / "scores.json"
    assert main(["evaluate", str(tmp_path / "codes.npz"), "--metrics", "mig,factor_r2", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert set(res) == {"mig", "factor_r2", "_meta"} and res["mig"]["mig"] > 0.9
    assert "mig" in capsys.readouterr().out
    np.savez(tmp_path / "bad.npz", codes=f.astype(np.float32))
    assert main(["evaluate", str(tmp_path / "bad.npz")]) == 2
    assert "lacks array(s) ['factors']" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "nope.npz")]) == 2


def _grid_code_float64(x):
    # float64 codes on a 0.1 grid: every value of dim 0 sits on one of the 20 histogram bin edges,
    # so rounding to float32 moves about half of them into the bin below
    classes = torch.round(x.reshape(len(x), -1).double() * 255.0)
    return classes * torch.tensor([0.1, 0.3], dtype=torch.float64)


def test_evaluate_keeps_the_representations_dtype():
    data = FactorImages(sizes=(21, 4))
    plan = {"mig": {"num_train": 600}}
    res64 = evaluate(_grid_code_float64, data, metrics=plan, seed=0)["mig"]["mig"]
    res32 = evaluate(lambda x: _grid_code_float64(x).float(), data, metrics=plan, seed=0)["mig"]["mig"]
    # the same codes rounded to float32 score lower: the float64 ones must not be rounded on the way
    assert res32 < res64 - 0.01
    # and equal the MIG of the float64 codes computed directly
    from untwine.metrics import mig
    codes, _ = _encoder_of(_grid_code_float64, data)(np.arange(len(data.factor_space)))
    assert codes.dtype == np.float64
    classes = data.factor_space.classes_of(np.arange(len(data.factor_space)))
    np.testing.assert_array_equal(codes, classes * np.array([0.1, 0.3]))
    assert mig(codes, classes)["mig"] > mig(codes.astype(np.float32), classes)["mig"] + 0.01


def test_encoder_widens_only_half_precision():
    data = FactorImages()
    idx = np.arange(5)
    for dtype, expected in ((torch.bfloat16, np.float32), (torch.float16, np.float32), (torch.float32, np.float32),
                            (torch.float64, np.float64)):
        codes, _ = _encoder_of(lambda x, dt=dtype: x.reshape(len(x), -1).to(dt), data)(idx)
        assert codes.dtype == expected, dtype


def _encoder_of(fn, data):
    from untwine.metrics.protocol import _Encoder
    return _Encoder(fn, data, 4, None)


def test_factor_vae_batches_are_encoded_only_when_a_dimension_survives_pruning():
    # an encoder whose codes barely vary (an untrained network): disentanglement_lib's early exit
    # gives 0 after the variance estimate, so the fixed-factor batches are never encoded
    metrics = {"factor_vae": SMALL["factor_vae"]}
    quiet_data, busy_data = FactorImages((8, 8, 8)), FactorImages((8, 8, 8))
    quiet = evaluate(lambda x: identity_code(x) * 1e-4, quiet_data, metrics=metrics, seed=0)
    busy = evaluate(identity_code, busy_data, metrics=metrics, seed=0)
    assert quiet["factor_vae"] == {"train_accuracy": 0.0, "eval_accuracy": 0.0, "num_active_dims": 0}
    assert busy["factor_vae"]["eval_accuracy"] == 1.0 and busy["factor_vae"]["num_active_dims"] == 3
    # the variance estimate draws 500 of 512 grid points (about 320 distinct); the batches cover the rest
    assert quiet_data.encoded == quiet["_meta"]["num_encoded"] < 360
    assert busy_data.encoded == busy["_meta"]["num_encoded"] > 480
    # the same variance-estimate draw either way: batches come from their own stream
    both = evaluate(identity_code, FactorImages((8, 8, 8)), metrics={**metrics, "mig": {"num_train": 300}}, seed=0)
    assert both["factor_vae"] == busy["factor_vae"]


def test_encoding_batch_defaults_to_the_devices_fast_size_and_scores_do_not_depend_on_it():
    from untwine.metrics.protocol import default_encode_batch_size
    from untwine.train.config import load_config
    assert default_encode_batch_size() == default_encode_batch_size("cpu") == 64
    assert default_encode_batch_size("cuda") == 512
    data = FactorImages(sizes=(10, 10, 10))
    default = evaluate(identity_code, data, metrics=SMALL, seed=0)
    assert data.calls == -(-default["_meta"]["num_encoded"] // 64)    # batches of 64 on a CPU
    large = evaluate(identity_code, data, metrics=SMALL, seed=0, batch_size=1000)
    strip = lambda r: {k: v for k, v in r.items() if k != "_meta"}  # noqa: E731
    assert strip(default) == strip(large)
    assert load_config("dsprites-betavae").trainer.eval_batch_size is None
    assert load_config("dsprites-betavae", ["trainer.eval_batch_size=32"]).trainer.eval_batch_size == 32
    with pytest.raises(ConfigError, match="eval_batch_size"):
        load_config("dsprites-betavae", ["trainer.eval_batch_size=0"])
