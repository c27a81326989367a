"""Evaluation and pictures of the multi-stage model: metric values on hand-checked inputs, the
factor classifier and its cache, sample-quality sanity, fidelity, w-invariance, the pictures."""
import json
import math
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from PIL import Image

from untwine.data import get_dataset
from untwine.errors import ConfigError, DataError
from untwine.multistage import MultiStageModel, Stage2, build_stage2
from untwine.multistage import classifier as clf_mod
from untwine.multistage.classifier import FactorClassifier, get_factor_classifier
from untwine.multistage.evaluation import (evaluate_multistage, evaluate_reconstruction, evaluation_indices,
                                           factor_fidelity, frechet_distance, gaussian_frechet_distance,
                                           json_ready, precision_recall, reconstruction_metrics,
                                           sample_quality, w_invariance, code_invariance)
from untwine.nets import build_vae
from untwine.viz.multistage import (plot_tradeoff, save_multistage_traversals, save_samples,
                                    save_side_by_side)


def blur(x: torch.Tensor, k: int) -> torch.Tensor:
    """Box blur of odd width k (k = 1: identity), same size."""
    if k <= 1:
        return x
    weight = torch.full((x.shape[1], 1, k, k), 1.0 / (k * k))
    return F.conv2d(F.pad(x, [k // 2] * 4, mode="replicate"), weight, groups=x.shape[1])


class BankStage2(Stage2):
    """A stand-in stage 2: w is an image; reconstruct = blur(x) (w = x), samples = blurred images of a
    bank of real images (w ~ the bank), so stage 2 carries everything and ignores y."""

    name = "test-bank"
    has_likelihood = False

    def __init__(self, bank: torch.Tensor, k: int = 3):
        super().__init__()
        self.register_buffer("bank", bank)
        self.k = k

    def infer(self, x, y, z):
        return x

    def generate(self, y, z, w):
        return blur(w, self.k)

    def sample_w(self, n, y, z, generator=None):
        return self.bank[torch.randint(len(self.bank), (n,), generator=generator)]


class YOnlyStage2(Stage2):
    """A stand-in stage 2 that returns stage 1's output whatever w is: perfectly w-invariant."""

    name = "test-y"
    w_dim = 2

    def infer(self, x, y, z):
        return torch.zeros(len(x), 2)

    def generate(self, y, z, w):
        return y

    def sample_w(self, n, y, z, generator=None):
        return torch.randn(n, 2, generator=generator)


@pytest.fixture(scope="module")
def dsprites():
    return get_dataset("dsprites")


@pytest.fixture(scope="module")
def real(dsprites):
    idx = evaluation_indices(dsprites, 64, seed=5)
    return dsprites.batch(idx)


@pytest.fixture(scope="module")
def stage1():
    torch.manual_seed(0)
    return build_vae("conv64", in_channels=1, latent_dim=4)


@pytest.fixture(scope="module")
def model(stage1, real):
    return MultiStageModel(stage1, BankStage2(real, k=3))


@pytest.fixture(scope="module")
def tiny_classifier(dsprites):
    # 30 steps: far from accurate, but a fixed, trained feature map (what the sanity checks need);
    # it reads few factors above chance, so the mechanics below are checked on all of them
    # (test_classifier_readable.py checks that the unreadable ones are left out)
    clf = get_factor_classifier(dsprites, steps=30, batch_size=16, seed=0, cache=False, held_out=256)
    clf.readable = list(dsprites.factor_space.names)
    return clf


# ---- reconstruction metrics ----------------------------------------------------------------------

def test_reconstruction_metrics_hand_computed():
    x = torch.zeros(2, 1, 16, 16)
    x[:, :, 4:12, 4:12] = 1.0
    half = torch.full_like(x, 0.5)
    m = reconstruction_metrics(x, half)
    assert m["bce"] == pytest.approx(256 * math.log(2.0), rel=1e-6)  # every pixel costs ln 2
    assert m["mse"] == pytest.approx(0.25)
    assert m["psnr"] == pytest.approx(10 * math.log10(1 / 0.25), rel=1e-5)
    assert reconstruction_metrics(x, x)["ssim"] == pytest.approx(1.0, abs=1e-6)
    assert m["ssim"] < 0.5
    # a binary x_hat is clamped to [1e-6, 1 - 1e-6]: finite, 256 * -log(1 - 1e-6) per image
    assert reconstruction_metrics(x, x)["bce"] == pytest.approx(-256 * math.log1p(-1e-6), rel=1e-2)
    assert m["bce_floor"] == 0.0 and m["bce_excess"] == pytest.approx(m["bce"], rel=1e-6)  # binary: no floor
    gauss = reconstruction_metrics(x, half, likelihood="gaussian")
    assert gauss["sse"] == pytest.approx(64.0) and "bce" not in gauss


def test_bce_excess_on_grey_images_by_hand():
    # x = 0.25 everywhere: its entropy H(0.25) per pixel is the floor; x_hat = x leaves none above it,
    # x_hat = 0.5 leaves KL(Bern(0.25) || Bern(0.5)) = ln 2 - H(0.25) per pixel
    x = torch.full((3, 1, 12, 12), 0.25)
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    exact = reconstruction_metrics(x, x)
    assert exact["bce_floor"] == pytest.approx(144 * h, rel=1e-6)
    assert exact["bce"] == pytest.approx(144 * h, rel=1e-5) and abs(exact["bce_excess"]) < 1e-3
    m = reconstruction_metrics(x, torch.full_like(x, 0.5))
    assert m["bce_excess"] == pytest.approx(144 * (math.log(2.0) - h), rel=1e-5)
    assert m["bce"] - m["bce_floor"] == pytest.approx(m["bce_excess"], rel=1e-5)


def test_reconstruction_metrics_bad_input():
    x = torch.rand(2, 1, 16, 16)
    with pytest.raises(DataError, match="one shape"):
        reconstruction_metrics(x, x[:1])
    with pytest.raises(ConfigError, match="likelihood"):
        reconstruction_metrics(x, x, likelihood="poisson")
    with pytest.raises(DataError, match="11x11"):
        reconstruction_metrics(torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8))
    with pytest.raises(DataError, match="NaN"):
        reconstruction_metrics(x, torch.full_like(x, float("nan")))


def test_evaluate_reconstruction_stage1_and_combined(model, stage1, dsprites):
    out = evaluate_reconstruction(model, dsprites, n=40, seed=1, batch_size=16)
    assert set(out) == {"stage1", "combined"}
    # untrained stage 1 gives grey; the stand-in stage 2 gives a 3x3 blur of the input
    assert out["combined"]["bce"] < 0.5 * out["stage1"]["bce"]
    assert out["combined"]["ssim"] > out["stage1"]["ssim"]
    # by hand on the same images: batch-weighted means equal the whole-set values
    x = dsprites.batch(evaluation_indices(dsprites, 40, seed=1))
    direct = reconstruction_metrics(x, blur(x, 3))
    for key in ("bce", "mse", "psnr"):
        assert out["combined"][key] == pytest.approx(direct[key], rel=1e-4)
    # a plain VAE gives stage 1's numbers alone, the same ones, plus its ELBO
    plain = evaluate_reconstruction(stage1, dsprites, n=40, seed=1, batch_size=16)
    assert set(plain) == {"stage1"}
    assert plain["stage1"]["bce"] == pytest.approx(out["stage1"]["bce"], rel=1e-6)
    assert plain["stage1"]["iwae"] < 0 and "elbo" not in plain["stage1"]
    # the stand-in stage 2 has no likelihood: bounds for stage 1 only, and the same as the model's
    assert "iwae" in out["stage1"] and "iwae" not in out["combined"]
    assert out["stage1"]["iwae"] == pytest.approx(plain["stage1"]["iwae"], rel=1e-6)


@pytest.mark.parametrize("variant, params", [("vae", dict(width=4, w_dim=3)),
                                             ("flow", dict(levels=2, blocks=1, hidden=4, bits=1))])
def test_evaluation_reports_sampled_bounds_not_the_likelihood_at_the_means(stage1, dsprites, variant, params):
    from untwine.multistage.model import bounds_from_log_weights
    torch.manual_seed(0)
    model = MultiStageModel(stage1, build_stage2(variant, image_shape=(1, 64, 64), latent_dim=4, **params))
    out = evaluate_reconstruction(model, dsprites, n=8, seed=2, batch_size=8, iwae_samples=4)
    for stage in ("stage1", "combined"):
        section = out[stage]
        assert "elbo" not in section and section["iwae_samples"] == 4
        assert section["iwae"] >= section["elbo_sampled"]
    # by hand: the same images, the evaluation's RNG (seeded with `seed`), K = 4 draws each
    x = dsprites.batch(evaluation_indices(dsprites, 8, seed=2))
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(2)
        lw = model.log_weights(x, samples=4)
    for stage in ("stage1", "combined"):
        b = bounds_from_log_weights(lw[stage])
        assert out[stage]["iwae"] == pytest.approx(float(b["iwae"].mean()), rel=1e-5)
        assert out[stage]["elbo_sampled"] == pytest.approx(float(b["elbo_sampled"].mean()), rel=1e-5)
    # the flow's own density is named as what it is: log p2(x | y) given stage 1's reading of x
    assert ("log_p_x_given_y" in out["combined"]) == (variant == "flow")
    with pytest.raises(ConfigError, match="samples"):
        evaluate_reconstruction(model, dsprites, n=8, iwae_samples=0)


def test_a_bijective_stage2_has_no_reconstruction_verdict(stage1, dsprites, tiny_classifier):
    from untwine.multistage.evaluation import reconstruction_ratios
    torch.manual_seed(0)
    flow = MultiStageModel(stage1, build_stage2("flow", image_shape=(1, 64, 64), latent_dim=4, levels=2, blocks=1,
                                                hidden=4, bits=1))
    recon = evaluate_reconstruction(flow, dsprites, n=8, batch_size=8, iwae_samples=1)
    assert recon["combined"]["bce_excess"] < 1e-2   # exact by construction: a ratio of 0 that means nothing
    assert recon["combined"]["reconstruction_applicable"] is False
    assert reconstruction_ratios(recon) == {"bce_ratio": None, "bce_excess_ratio": None,
                                            "reconstruction_applicable": False}
    out = evaluate_multistage(flow, dsprites, tiny_classifier, n=8, batch_size=8, resamples=2, iwae_samples=1)
    assert out["summary"]["reconstruction_applicable"] is False and out["summary"]["bce_ratio"] is None
    # a stage 2 that is no bijection keeps its ratios and the flag says they count
    vae = MultiStageModel(stage1, build_stage2("vae", image_shape=(1, 64, 64), latent_dim=4, width=4, w_dim=3))
    recon = evaluate_reconstruction(vae, dsprites, n=8, batch_size=8, iwae_samples=1)
    ratios = reconstruction_ratios(recon)
    assert ratios["reconstruction_applicable"] is True and recon["combined"]["reconstruction_applicable"] is True
    assert ratios["bce_ratio"] == pytest.approx(recon["combined"]["bce"] / recon["stage1"]["bce"])


# ---- Frechet distance and precision / recall --------------------------------------------------------

def test_gaussian_frechet_distance_diagonal_closed_form():
    mu_a, mu_b = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    var_a, var_b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2)  # 5 + 4 + 1
    assert gaussian_frechet_distance(mu_a, np.diag(var_a), mu_b, np.diag(var_b)) == pytest.approx(expected)
    assert expected == pytest.approx(10.0)


def test_frechet_distance_against_sqrtm(rng):
    a = rng.normal(size=(200, 5)) @ rng.normal(size=(5, 5))
    b = rng.normal(size=(150, 5)) @ rng.normal(size=(5, 5)) + 0.5
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    brute = np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(ca + cb - 2 * scipy.linalg.sqrtm(ca @ cb).real)
    assert frechet_distance(a, b) == pytest.approx(brute, rel=1e-8)
    assert frechet_distance(torch.from_numpy(a).float(), torch.from_numpy(a).float()) == pytest.approx(0, abs=1e-6)
    assert frechet_distance(a, a + 2.0) == pytest.approx(5 * 4.0, rel=1e-8)  # a shift costs |shift|^2
    # fewer samples than dimensions: singular covariances still give a finite, non-negative value
    assert 0 <= frechet_distance(a[:3], b[:4]) < np.inf
    with pytest.raises(DataError, match="dimension"):
        frechet_distance(a, b[:, :4])
    with pytest.raises(DataError, match="N >= 2"):
        frechet_distance(a[:1], b)


def test_precision_recall_by_hand():
    real = np.array([[0.0], [1.0], [2.0], [3.0]])  # k = 1: every radius is 1, manifold [-1, 4]
    fake = np.array([[3.5], [10.0], [11.0], [12.0]])  # radii 6.5, 1, 1, 1: manifold [-3, 13]
    pr = precision_recall(real, fake, k=1)
    assert pr["precision"] == pytest.approx(0.25)  # only 3.5 is inside the real balls
    assert pr["recall"] == pytest.approx(1.0)  # the ball of 3.5 (radius 6.5) holds every real point
    same = precision_recall(real, real, k=2)
    assert same == {"precision": 1.0, "recall": 1.0}
    far = precision_recall(real, real + 100.0, k=1)
    assert far == {"precision": 0.0, "recall": 0.0}
    with pytest.raises(ConfigError, match="k=4"):
        precision_recall(real, fake, k=4)


# ---- the factor classifier -------------------------------------------------------------------------

def test_classifier_trains_under_no_grad_on_an_empty_cache(dsprites):
    # the engine's final evaluation runs under no_grad; a fresh machine has no cached classifier
    with torch.no_grad():
        clf = get_factor_classifier(dsprites, steps=3, batch_size=8, seed=1, cache=False, held_out=16)
    assert set(clf.accuracy) == {"shape", "scale", "orientation", "posX", "posY", "mean"}


def test_evaluation_images_are_the_held_out_split(dsprites):
    from untwine.data.split import evaluation_split
    from untwine.multistage.classifier import _held_out_indices, _train_indices
    held = evaluation_split(dsprites.factor_space)
    for seed, stream in ((0, 0), (3, 1)):
        idx = evaluation_indices(dsprites, 2000, seed=seed, stream=stream)
        assert held.is_eval[idx].all() and np.unique(idx).size == 2000   # without replacement
    assert held.is_eval[_held_out_indices(dsprites, 0, 2000)].all()
    trained = np.concatenate([_train_indices(dsprites, 0, step, 64) for step in range(200)])
    assert not held.is_eval[trained].any()          # the classifier never trains on them either


def test_classifier_outputs_and_determinism(dsprites, tiny_classifier, real):
    assert tiny_classifier.predict(real[:10]).shape == (10, 5)
    assert tiny_classifier.predict(real).dtype == torch.int64
    assert tiny_classifier.features(real[:10]).shape == (10, 256)
    assert set(tiny_classifier.accuracy) == {"shape", "scale", "orientation", "posX", "posY", "mean"}
    assert all(0.0 <= v <= 1.0 for v in tiny_classifier.accuracy.values())
    again = get_factor_classifier(dsprites, steps=30, batch_size=16, seed=0, cache=False, held_out=256)
    for (k, a), b in zip(tiny_classifier.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k
    assert again.accuracy == tiny_classifier.accuracy
    other = get_factor_classifier(dsprites, steps=3, batch_size=8, seed=1, cache=False, held_out=16)
    assert not torch.equal(other.heads[0].weight, again.heads[0].weight)


def test_classifier_training_leaves_global_rng_alone(dsprites):
    torch.manual_seed(123)
    state = torch.get_rng_state()
    get_factor_classifier(dsprites, steps=2, batch_size=8, seed=0, cache=False, held_out=16)
    assert torch.equal(torch.get_rng_state(), state)


def test_classifier_cache_roundtrip_and_corruption(dsprites, monkeypatch, tmp_path):
    monkeypatch.setenv("UNTWINE_CACHE", str(tmp_path))
    first = get_factor_classifier(dsprites, steps=3, batch_size=8, seed=0, held_out=16)
    files = sorted(p.name for p in (tmp_path / "classifiers").iterdir())
    assert len(files) == 2 and files[0].startswith("dsprites-") and files[0].endswith(".json")
    assert files[1].endswith(".safetensors")
    meta = json.loads((tmp_path / "classifiers" / files[0]).read_text())
    assert meta["config"]["steps"] == 3 and meta["accuracy"] == first.accuracy

    def no_training(*args, **kwargs):
        raise AssertionError("a valid cache entry must be reused, not retrained")

    real_train = clf_mod.train_factor_classifier
    monkeypatch.setattr(clf_mod, "train_factor_classifier", no_training)
    second = get_factor_classifier(dsprites, steps=3, batch_size=8, seed=0, held_out=16)
    assert second.accuracy == first.accuracy
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))

    # a damaged weights file is detected (checksum) and rebuilt with a warning
    weights = tmp_path / "classifiers" / files[1]
    blob = bytearray(weights.read_bytes())
    blob[-10] ^= 0xFF
    weights.write_bytes(bytes(blob))
    monkeypatch.setattr(clf_mod, "train_factor_classifier", real_train)
    with pytest.warns(RuntimeWarning, match="not valid"):
        rebuilt = get_factor_classifier(dsprites, steps=3, batch_size=8, seed=0, held_out=16)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), rebuilt.state_dict().values()))
    # a truncated JSON, too
    (tmp_path / "classifiers" / files[0]).write_text("{\"config\": ")
    with pytest.warns(RuntimeWarning, match="unreadable"):
        get_factor_classifier(dsprites, steps=3, batch_size=8, seed=0, held_out=16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rewritten entry is valid again
        get_factor_classifier(dsprites, steps=3, batch_size=8, seed=0, held_out=16)


def test_classifier_cache_key_names_device_type_and_precision(dsprites, tmp_path):
    # a GPU bf16 classifier and a CPU fp32 one give different features: FD and fidelity must not share an entry
    cpu = clf_mod.classifier_config(dsprites, device="cpu")
    gpu = clf_mod.classifier_config(dsprites, device=torch.device("cuda", 1))
    assert (cpu["device"], cpu["precision"]) == ("cpu", "32-true")
    assert (gpu["device"], gpu["precision"]) == ("cuda", "bf16-mixed")   # the type, not the index
    gpu32 = clf_mod.classifier_config(dsprites, device="cuda", precision="32-true")
    paths = {clf_mod.cache_paths(c, tmp_path) for c in (cpu, gpu, gpu32)}
    assert len(paths) == 3
    assert clf_mod.cache_paths(clf_mod.classifier_config(dsprites, device="cuda:0"), tmp_path) == \
        clf_mod.cache_paths(gpu, tmp_path)
    assert clf_mod.classifier_config(dsprites) == cpu   # no device: the CPU, as training then runs
    with pytest.raises(ConfigError, match="precision"):
        clf_mod.classifier_config(dsprites, precision="16-mixed")
    # the recipe trains as its key says: bf16 autocast asked for on the CPU runs (and is keyed) as such
    clf = get_factor_classifier(dsprites, steps=2, batch_size=4, seed=0, cache=False, held_out=8,
                                precision="bf16-mixed")
    assert clf.config["precision"] == "bf16-mixed" and clf.config["device"] == "cpu"


def test_classifier_bad_config(dsprites):
    with pytest.raises(ConfigError, match="steps"):
        get_factor_classifier(dsprites, steps=0, cache=False)
    with pytest.raises(DataError, match="image batches"):
        FactorClassifier(1, ["a"], [2]).predict(torch.rand(3, 64, 64))


@pytest.mark.slow
def test_classifier_learns(dsprites):
    clf = get_factor_classifier(dsprites, steps=400, batch_size=32, seed=0, cache=False)
    # measured 0.53 / 0.52 / 0.52 (chance 1/6, 1/32, 1/32); shape and orientation come later
    acc = clf.accuracy
    assert acc["scale"] > 0.4 and acc["posX"] > 0.3 and acc["posY"] > 0.3


# ---- sample quality ---------------------------------------------------------------------------------

def test_frechet_distance_sanity_in_classifier_features(dsprites, tiny_classifier):
    x = dsprites.batch(evaluation_indices(dsprites, 128, seed=0))
    x2 = dsprites.batch(evaluation_indices(dsprites, 128, seed=0, stream=1))
    feat = tiny_classifier.features
    fx = feat(x)
    assert frechet_distance(fx, fx) == pytest.approx(0.0, abs=1e-6)
    # more blur of the same images, larger distance
    same = [frechet_distance(fx, feat(blur(x, k))) for k in (3, 7, 15)]
    assert 0 < same[0] < same[1] < same[2]
    # two independent real sets differ by sampling noise only, far less than a strong blur
    assert frechet_distance(fx, feat(x2)) < 0.3 * frechet_distance(fx, feat(blur(x2, 15)))


def test_sample_quality_combined_beats_untrained_stage1(model, dsprites, tiny_classifier):
    sq = {s: sample_quality(model, dsprites, tiny_classifier, n=48, seed=0, batch_size=16, stage=s)
          for s in ("stage1", "combined")}
    assert sq["combined"]["fd"] < 0.5 * sq["stage1"]["fd"]
    assert sq["combined"]["precision"] > sq["stage1"]["precision"]
    assert set(sq["combined"]) == {"fd", "precision", "recall", "n"}
    repeat = sample_quality(model, dsprites, tiny_classifier, n=48, seed=0, batch_size=16)
    assert repeat == sq["combined"]  # seeded: the model's own samples are the combined ones, again
    with pytest.raises(ConfigError, match="stage 2"):
        sample_quality(model.stage1, dsprites, tiny_classifier, n=8, stage="combined")


# ---- factor fidelity and w-invariance ------------------------------------------------------------------

def test_factor_fidelity(stage1, dsprites, tiny_classifier):
    identity = MultiStageModel(stage1, BankStage2(torch.zeros(1, 1, 64, 64), k=1))  # reconstruct = x
    fid = factor_fidelity(identity, dsprites, tiny_classifier, n=40, seed=2, batch_size=16)
    assert set(fid) == {"real", "stage1", "combined"}
    assert fid["combined"] == fid["real"]  # an exact reconstruction reads as the real image
    x = dsprites.batch(evaluation_indices(dsprites, 40, seed=2))
    truth = torch.from_numpy(dsprites.factor_space.classes_of(evaluation_indices(dsprites, 40, seed=2)))
    pred = tiny_classifier.predict(x)
    assert fid["real"]["shape"] == pytest.approx(float((pred[:, 0] == truth[:, 0]).double().mean()))
    assert set(factor_fidelity(stage1, dsprites, tiny_classifier, n=8, seed=2)) == {"real", "stage1"}


def test_w_invariance(stage1, model, dsprites, tiny_classifier):
    invariant = MultiStageModel(stage1, YOnlyStage2())
    out = w_invariance(invariant, dsprites, tiny_classifier, n=24, resamples=3, seed=0, batch_size=8)
    assert out["overall"] == 0.0 and set(out["per_factor"]) == set(dsprites.factor_space.names)
    # a stage 2 whose w decides the whole image changes most predictions
    # held pairs: a stage 2 that returns y never loses a factor the classifier reads right from y
    assert out["held_overall"] == 0.0
    idx = evaluation_indices(dsprites, 24, seed=0)
    truth = torch.from_numpy(dsprites.factor_space.classes_of(idx))
    reads = tiny_classifier.predict(invariant.reconstruct_stage1(dsprites.batch(idx)).clamp(0, 1)) == truth
    assert out["held_share"]["shape"] == pytest.approx(float(reads[:, 0].double().mean()))
    varying = w_invariance(model, dsprites, tiny_classifier, n=64, resamples=3, seed=0, batch_size=16)
    assert varying["overall"] > 0.15
    assert varying["held_overall"] > 0.03  # the tiny classifier reads few factors at all
    with pytest.raises(ConfigError, match="resamples"):
        w_invariance(invariant, dsprites, tiny_classifier, n=8, resamples=1)
    with pytest.raises(ConfigError, match="stage 2"):
        w_invariance(stage1, dsprites, tiny_classifier, n=8)


def test_code_invariance(stage1, model, dsprites):
    invariant = MultiStageModel(stage1, YOnlyStage2())
    out = code_invariance(invariant, dsprites, n=24, resamples=3, seed=0, batch_size=8, active_threshold=0.0)
    assert out["overall"] == 0.0 and out["active"] == list(range(stage1.latent_dim))
    assert out["drift"] == pytest.approx(out["stage1_drift"])  # the combined image is y itself
    # by hand for one latent: variance across draws of the re-encoded code over z's variance
    idx = evaluation_indices(dsprites, 24, seed=0)
    with torch.no_grad():
        z = stage1.encode(dsprites.batch(idx))[0].double()
    # a stage 2 whose w picks a random real image: the re-encoded code moves about as much as z does
    varying = code_invariance(model, dsprites, n=24, resamples=3, seed=0, batch_size=8, active_threshold=0.0)
    assert 0.3 < varying["overall"] < 3.0 and varying["drift"] > 0.3
    assert set(varying["per_dim"]) == set(range(stage1.latent_dim)) and z.var(0).min() > 0
    none = code_invariance(invariant, dsprites, n=24, resamples=3, seed=0, active_threshold=1e9)
    assert none["overall"] is None and none["active"] == []
    with pytest.raises(ConfigError, match="stage 2"):
        code_invariance(stage1, dsprites, n=8)


def test_evaluate_multistage_json_ready_and_side_effect_free(model, dsprites, tiny_classifier):
    model.train()
    torch.manual_seed(7)
    state = torch.get_rng_state()
    out = evaluate_multistage(model, dsprites, tiny_classifier, n=32, seed=0, batch_size=16, resamples=2)
    assert torch.equal(torch.get_rng_state(), state) and model.training and not model.stage1.training
    assert set(out) >= {"stage1", "combined", "classifier", "summary"}
    assert set(out["combined"]) == {"reconstruction", "samples", "factor_accuracy", "classifier_accuracy",
                                    "w_invariance", "code_invariance"}
    # beside every fidelity number, the classifier's own held-out accuracy on the same factors
    assert set(out["combined"]["classifier_accuracy"]) == set(out["combined"]["factor_accuracy"])
    assert out["classifier"]["readable"] == list(dsprites.factor_space.names) and out["classifier"]["left_out"] == {}
    assert out["summary"]["code_change"] == out["combined"]["code_invariance"]["overall"]
    assert out["summary"]["bce_ratio"] == pytest.approx(
        out["combined"]["reconstruction"]["bce"] / out["stage1"]["reconstruction"]["bce"])
    assert out["classifier"]["real_vs_real"]["fd"] < out["stage1"]["samples"]["fd"]
    again = json.loads(json.dumps(out, allow_nan=False))
    assert again == out
    model.eval()
    with pytest.raises(ConfigError, match="stage 2"):
        evaluate_multistage(model.stage1, dsprites, tiny_classifier, n=8)


def test_exact_reconstruction_is_json_ready(stage1, dsprites, tiny_classifier):
    exact = MultiStageModel(stage1, BankStage2(torch.zeros(1, 1, 64, 64), k=1))  # reconstruct = x
    assert reconstruction_metrics(torch.eye(16)[None, None], torch.eye(16)[None, None])["psnr"] == math.inf
    out = evaluate_multistage(exact, dsprites, tiny_classifier, n=16, batch_size=16, resamples=2)
    assert out["combined"]["reconstruction"]["psnr"] is None
    json.dumps(out, allow_nan=False)
    assert json_ready({"a": [np.float32(1.5), float("nan")], "b": np.int64(3)}) == {"a": [1.5, None], "b": 3}


def test_with_a_real_stage2_variant(stage1, dsprites, tiny_classifier, real, tmp_path):
    # the contract the variants implement (infer/generate/sample_w, log_weight) is enough for every function
    model = MultiStageModel(stage1, build_stage2("vae", image_shape=(1, 64, 64), latent_dim=4))
    out = evaluate_multistage(model, dsprites, tiny_classifier, n=16, batch_size=8, resamples=2)
    assert math.isfinite(out["combined"]["reconstruction"]["iwae"])
    assert 0 <= out["combined"]["w_invariance"]["overall"] <= 1
    save_side_by_side(model, real[:4], tmp_path / "r.png")
    save_samples(model, tmp_path / "s.png", n=4)


# ---- pictures ------------------------------------------------------------------------------------------

def test_side_by_side_picture(model, real, tmp_path):
    path = save_side_by_side(model, real, tmp_path / "recon.png", max_images=6)
    img = np.asarray(Image.open(path))
    # 5 rows (input, stage 1, combined, two error maps) of 64 px cells, 6 columns, label column 104 px
    assert img.shape == (5 * 64 + 6 * 2, 104 + 6 * 64 + 7 * 2, 3)
    cell = img[2 + 0 * 66:2 + 0 * 66 + 64, 104 + 2:104 + 2 + 64, 0]  # input row, first image
    assert np.array_equal(cell, np.round(real[0, 0].numpy() * 255).astype(np.uint8))
    assert np.asarray(Image.open(save_side_by_side(model, real, tmp_path / "r2.png", max_images=3,
                                                   error_maps=False))).shape[0] == 3 * 64 + 4 * 2
    with pytest.raises(DataError, match="image batch"):
        save_side_by_side(model, real[0], tmp_path / "bad.png")


def test_multistage_traversal_pictures(model, real, tmp_path):
    tr = save_multistage_traversals(model, real[:4], tmp_path / "trav.png", tmp_path / "trav.gif", num_steps=5)
    assert tr.stage1.shape == (4, 5, 64, 64, 1) and tr.combined.shape == (4, 5, 64, 64, 1)
    assert sorted(tr.dims) == [0, 1, 2, 3]
    # the stand-in's combined image ignores z (w = x held): every step is the same blurred input
    assert all(np.array_equal(tr.combined[0, 0], tr.combined[0, s]) for s in range(5))
    png = np.asarray(Image.open(tmp_path / "trav.png"))
    half = 5 * 64 + 6 * 2
    assert png.shape == (20 + 4 * 64 + 5 * 2, 104 + 2 * half + 8, 3)
    gif = Image.open(tmp_path / "trav.gif")
    assert gif.size == (104 + 2 * (64 + 4) + 8, 20 + 4 * 64 + 5 * 2)
    assert gif.n_frames == 2 * 5 - 2  # forward then back; stage 1 changes every frame
    with pytest.raises(ConfigError, match="save_traversals"):
        save_multistage_traversals(model.stage1, real[:2], tmp_path / "t.png")


def test_samples_picture(model, tmp_path):
    path = save_samples(model, tmp_path / "samples.png", n=10, seed=3, cols=5)
    img = np.asarray(Image.open(path))
    assert img.shape == (4 * 64 + 5 * 2, 104 + 5 * 64 + 6 * 2, 3)  # 2 chunks x (stage 1, combined)
    assert np.array_equal(img, np.asarray(Image.open(save_samples(model, tmp_path / "s2.png", n=10, seed=3,
                                                                  cols=5))))


def test_tradeoff_plot(tmp_path):
    rows = [{"name": "beta-TCVAE b=6", "mig": 0.31, "bce": 60.0, "group": "stage 1"},
            {"name": "+ stage-2 VAE", "mig": 0.31, "bce": 25.0, "group": "combined", "pair": "beta-TCVAE b=6"},
            {"name": "beta-VAE b=1", "mig": 0.05, "bce": 28.0, "group": "beta-VAE"}]
    path = plot_tradeoff(rows, tmp_path / "tradeoff.png")
    assert Image.open(path).size[0] > 300
    with pytest.raises(DataError, match="lacks"):
        plot_tradeoff([{"name": "x", "mig": 0.1}], tmp_path / "bad.png")
    with pytest.raises(DataError, match="finite"):
        plot_tradeoff([{"name": "x", "mig": float("nan"), "bce": 1.0}], tmp_path / "bad.png")
    with pytest.raises(DataError, match="not a row"):
        plot_tradeoff([{"name": "x", "mig": 0.1, "bce": 1.0, "pair": "missing"}], tmp_path / "bad.png")


def test_reconstruction_metrics_of_levels_outside_the_unit_range_are_finite():
    # SmallNORB under disentanglement_lib's preprocessing holds levels from about -0.15 to 1.1
    x = torch.linspace(-0.15, 1.12, 2 * 16 * 16).reshape(2, 1, 16, 16)
    out = reconstruction_metrics(x, x.clamp(0, 1))
    assert all(np.isfinite(v) for k, v in out.items() if k != "psnr"), out   # exact: psnr inf
    assert out["bce_excess"] == pytest.approx(0.0, abs=1e-3)   # scored against the clipped levels
