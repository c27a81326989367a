"""Weak pair models: aggregation formulas and shared-dim rules by hand, the loss end to end, errors."""
import csv
import math

import numpy as np

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lightning.fabric  # noqa: F401  (its slow import belongs to collection, not to the first engine test)
from untwine.cli import main
from untwine.data.samplers import PairBatch
from untwine.errors import ConfigError, DataError
from untwine.nets import build_vae
from untwine.nets.base import VAE
from untwine.nets.likelihoods import BernoulliLikelihood
from untwine.objectives import OBJECTIVES, build_objective
from untwine.objectives.weak import (adaptive_shared, average_gvae, average_mlvae, known_k_shared, label_shared,
                                     pair_kl)
from untwine.train import load_config

L2 = math.log(2.0)


def test_pair_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu1, lv1, mu2, lv2 = (torch.randn(3, 4, generator=g) for _ in range(4))
    q1 = torch.distributions.Normal(mu1, (0.5 * lv1).exp())
    q2 = torch.distributions.Normal(mu2, (0.5 * lv2).exp())
    torch.testing.assert_close(pair_kl(mu1, lv1, mu2, lv2), torch.distributions.kl_divergence(q1, q2))


def test_aggregations_by_hand():
    # v1 = 1, v2 = 3; mu1 = 2, mu2 = -2
    mu1, lv1 = torch.tensor([[2.0]]), torch.tensor([[0.0]])
    mu2, lv2 = torch.tensor([[-2.0]]), torch.tensor([[math.log(3.0)]])
    m, lv = average_gvae(mu1, lv1, mu2, lv2)
    torch.testing.assert_close(m, torch.tensor([[0.0]]))
    torch.testing.assert_close(lv.exp(), torch.tensor([[2.0]]))
    # product of Gaussians: var = 1*3/4 = 0.75, mean = (2/1 - 2/3) * 0.75 = 1.0
    m, lv = average_mlvae(mu1, lv1, mu2, lv2, "exact")
    torch.testing.assert_close(m, torch.tensor([[1.0]]))
    torch.testing.assert_close(lv.exp(), torch.tensor([[0.75]]))
    # disentanglement_lib: var = 2*1*3/4 = 1.5, mean = (2/1 - 2/3) * 1.5 / 2 = 1.0
    m, lv = average_mlvae(mu1, lv1, mu2, lv2, "dlib")
    torch.testing.assert_close(m, torch.tensor([[1.0]]))
    torch.testing.assert_close(lv.exp(), torch.tensor([[1.5]]))
    with pytest.raises(ConfigError, match="aggregation"):
        average_mlvae(mu1, lv1, mu2, lv2, "mean")


def test_adaptive_threshold_by_hand():
    # midpoints: (0 + 10)/2 = 5 -> dims 0, 1 shared (4.99 < 5), 5.0 is not below; second row all equal -> none
    delta = torch.tensor([[0.0, 4.99, 5.0, 10.0], [2.0, 2.0, 2.0, 2.0]])
    assert adaptive_shared(delta).tolist() == [[True, True, False, False], [False, False, False, False]]


def test_known_k_keeps_the_largest_deltas():
    delta = torch.tensor([[0.1, 3.0, 0.2, 2.0], [5.0, 0.0, 0.0, 0.0]])
    shared = known_k_shared(delta, torch.tensor([2, 1]))
    assert shared.tolist() == [[True, False, True, False], [False, True, True, True]]


def test_label_rule_and_its_latent_dim_check():
    changed = torch.tensor([[False, True, False], [True, False, True]])
    assert label_shared(changed, 4).tolist() == [[True, False, True, True], [False, True, False, True]]
    with pytest.raises(ConfigError, match="latent_dim >= 3"):
        label_shared(changed, 2)


class GivenEncoder(nn.Module):
    """Returns fixed (mu, logvar) (as parameters, so gradients can be checked) whatever the input."""

    def __init__(self, mu, logvar):
        super().__init__()
        self.mu = nn.Parameter(mu.clone())
        self.logvar = nn.Parameter(logvar.clone())

    def forward(self, x):
        return self.mu, self.logvar


def given_model(mu, logvar):
    # decoder = identity: x_params are the logits z, so "images" are (2B, D) vectors
    return VAE(GivenEncoder(mu, logvar), nn.Identity(), BernoulliLikelihood(), mu.shape[1]).eval()


def test_pair_loss_end_to_end_by_hand():
    # B = 1 pair, D = 3; deltas: dim0 large, dims 1, 2 ~0 -> adaptive shares dims 1, 2
    mu1, mu2 = torch.tensor([[3.0, 0.5, 0.0]]), torch.tensor([[-3.0, 0.5, 0.1]])
    lv1, lv2 = torch.tensor([[0.0, 0.0, 0.0]]), torch.tensor([[0.0, math.log(3.0), 0.0]])
    x1, x2 = torch.tensor([[1.0, 0.0, 1.0]]), torch.tensor([[0.0, 1.0, 1.0]])
    batch = PairBatch(x1, x2, torch.tensor([[True, False]]))
    model = given_model(torch.cat([mu1, mu2]), torch.cat([lv1, lv2]))
    for name, agg_mu, agg_var in [
        ("adagvae", [0.5, 0.05], [2.0, 1.0]),           # mean of means, mean of variances
        ("adamlvae", [0.5, 0.05], [1.5, 1.0]),          # 2 v1 v2 / (v1 + v2)
    ]:
        out = build_objective(name, beta=2.0)(model, batch)
        # posteriors after sharing dims 1, 2
        q_mu = torch.tensor([[3.0, *agg_mu], [-3.0, *agg_mu]])
        q_var = torch.tensor([[1.0, *agg_var], [1.0, *agg_var]])
        x = torch.cat([x1, x2])
        recon = F.binary_cross_entropy_with_logits(q_mu, x, reduction="sum") / 2
        kl = 0.5 * (q_mu ** 2 + q_var - q_var.log() - 1).sum() / 2
        torch.testing.assert_close(out.terms["recon"], recon)
        torch.testing.assert_close(out.terms["kl"], kl)
        torch.testing.assert_close(out.loss, recon + 2.0 * kl)
        assert out.terms["shared_dims"].item() == 2.0
        # a controller's beta replaces the objective's
        torch.testing.assert_close(build_objective(name, beta=2.0)(model, batch, beta=0.5).loss, recon + 0.5 * kl)


def test_label_variants_share_the_dims_the_label_says():
    # deltas would make the adaptive rule share dim 0 (equal) and keep dims 1, 2; the label says factor 0 changed
    mu1 = torch.tensor([[0.0, 5.0, 5.0]])
    mu2 = torch.tensor([[0.0, -5.0, -5.0]])
    lv = torch.zeros(2, 3)
    model = given_model(torch.cat([mu1, mu2]), lv)
    batch = PairBatch(torch.zeros(1, 3), torch.zeros(1, 3), torch.tensor([[True, False]]))
    captured = {}
    model.decoder.register_forward_hook(lambda m, i, o: captured.update(z=i[0].detach()))
    for name in ("gvae_label", "mlvae_label"):
        out = build_objective(name)(model, batch)
        z = captured["z"]
        assert out.terms["shared_dims"].item() == 2.0
        assert z[0, 0] == 0.0 and z[1, 0] == 0.0          # own posteriors on the changed factor's dim
        torch.testing.assert_close(z[0, 1:], z[1, 1:])    # shared dims identical in both images
        torch.testing.assert_close(z[0, 1:], torch.zeros(2))
    build_objective("adagvae")(model, batch)
    assert captured["z"][0, 1] == 5.0                     # adaptive keeps the high-delta dims


def test_known_k_from_the_batch_and_fixed():
    mu1 = torch.tensor([[0.0, 1.0, 4.0, 0.1]])
    mu2 = torch.tensor([[0.0, -1.0, -4.0, 0.0]])
    model = given_model(torch.cat([mu1, mu2]), torch.zeros(2, 4))
    x = torch.zeros(1, 4)
    two_changed = PairBatch(x, x, torch.tensor([[True, True, False]]))
    assert build_objective("gvae")(model, two_changed).terms["shared_dims"].item() == 2.0
    assert build_objective("gvae", k=1)(model, two_changed).terms["shared_dims"].item() == 3.0
    assert build_objective("mlvae_pairs", k=3, aggregation="exact")(model, two_changed).terms["shared_dims"] == 1.0


def test_gradients_reach_both_encodings():
    torch.manual_seed(0)
    model = build_vae("mlp", in_dim=(1, 4, 4), latent_dim=3, hidden=(8,))
    x1, x2 = torch.rand(5, 1, 4, 4), torch.rand(5, 1, 4, 4)
    kept = []

    def keep_mean(module, inputs, output):
        output[0].retain_grad()
        kept.append(output[0])

    model.encoder.register_forward_hook(keep_mean)
    batch = PairBatch(x1, x2, torch.zeros(5, 2, dtype=torch.bool))
    out = build_objective("adamlvae", aggregation="exact")(model, batch)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grad = kept[0].grad
    assert (grad.abs().sum(1) > 0).all()  # every image of every pair


def test_bad_input_and_config():
    with pytest.raises(ConfigError, match="k=0"):
        build_objective("gvae", k=0)
    with pytest.raises(ConfigError, match="k=10"):
        build_objective("gvae", k=10, latent_dim=10)
    with pytest.raises(ConfigError, match="aggregation"):
        build_objective("adamlvae", aggregation="mean")
    with pytest.raises(ConfigError, match="unknown parameter"):
        build_objective("adagvae", aggregation="exact")
    model = given_model(torch.zeros(2, 2), torch.zeros(2, 2))
    with pytest.raises(DataError, match="same shape"):
        build_objective("adagvae")(model, PairBatch(torch.zeros(1, 2), torch.zeros(1, 3), torch.zeros(1, 2).bool()))
    with pytest.raises(DataError, match="PairBatch"):
        build_objective("adagvae")(model, torch.zeros(2, 2))
    # per-pair k from the batch cannot reach latent_dim
    with pytest.raises(DataError, match="k=3"):
        build_objective("gvae")(model, PairBatch(torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 3).bool()))


def test_registered_with_pairs_batch_kind():
    for name in ("gvae", "mlvae_pairs", "adagvae", "adamlvae", "gvae_label", "mlvae_label"):
        assert OBJECTIVES[name].batch_kind == "pairs"
        assert OBJECTIVES[name].name == name


SMALL = ["model.arch=mlp", "model.hidden=[16]", "optim.batch_size=8", "trainer.log_every=1", "trainer.ckpt_every=3",
         "trainer.eval_preset=none", "trainer.pictures=false", "trainer.progress=false"]


@pytest.mark.parametrize("preset", ["dsprites-gvae", "dsprites-mlvae-pairs", "dsprites-adagvae", "dsprites-adamlvae"])
def test_presets_train_through_the_engine(tmp_path, preset):
    assert main(["train", preset, "trainer.steps=3", *SMALL, "--run-dir", str(tmp_path / "run")]) == 0
    rows = list(csv.DictReader(open(next((tmp_path / "run").rglob("*.csv")))))
    assert rows and all(math.isfinite(float(r["loss"])) for r in rows)
    assert 0 <= float(rows[-1]["shared_dims"]) <= 10
    shapes = load_config(preset.replace("dsprites", "shapes3d"))
    assert shapes.data.name == "shapes3d" and shapes.objective.name == load_config(preset).objective.name


# -- the KL's direction (disentanglement_lib's weak_vae.py: compute_kl(z_mean, z_mean_2, z_logvar, z_logvar_2)
# = var_1/var_2 + (z_2 - z_1)^2/var_2 - 1 + logvar_2 - logvar_1, i.e. 2 KL(q1 || q2), q1 = the first image) --

def direction_pair():
    """One pair, 3 dims, where KL(q1||q2) picks other shared dims than KL(q2||q1) and than their sum,
    by the adaptive rule and by the known-k rule (k = 1) alike.
    dim 0: v1 = 10, v2 = 1; dim 1: v1 = 1, v2 = 20; dim 2: v1 = v2 = 1; means +0.1 and -0.1 everywhere.
    KL(q1||q2) = (3.37, 1.02, 0.02): midpoint 1.70 -> dims 1, 2 shared; the largest is dim 0;
    KL(q2||q1) = (0.70, 8.00, 0.02): midpoint 4.01 -> dims 0, 2 shared; the largest is dim 1;
    the sum    = (4.07, 9.02, 0.04): midpoint 4.53 -> dims 0, 2 shared; the largest is dim 1."""
    mu1, mu2 = torch.full((1, 3), 0.1), torch.full((1, 3), -0.1)
    lv1 = torch.tensor([[math.log(10.0), 0.0, 0.0]])
    lv2 = torch.tensor([[0.0, math.log(20.0), 0.0]])
    return mu1, lv1, mu2, lv2


def test_pair_kl_is_kl_of_the_first_image_against_the_second_as_dlib():
    mu1, lv1, mu2, lv2 = direction_pair()
    # dlib's compute_kl, written out, is twice pair_kl(first, second)
    v1, v2 = lv1.exp(), lv2.exp()
    dlib = v1 / v2 + (mu2 - mu1) ** 2 / v2 - 1 + lv2 - lv1
    torch.testing.assert_close(2 * pair_kl(mu1, lv1, mu2, lv2), dlib)
    forward = pair_kl(mu1, lv1, mu2, lv2)
    torch.testing.assert_close(forward, torch.tensor([[0.5 * (10 + 0.04 - 1 - math.log(10)),
                                                       0.5 * (0.05 + 0.002 - 1 + math.log(20)), 0.02]]))
    one = torch.tensor([1])
    assert adaptive_shared(forward).tolist() == [[False, True, True]]
    assert known_k_shared(forward, one).tolist() == [[False, True, True]]
    # the reversed and the symmetric KL choose differently: this case tells them apart
    for other in (pair_kl(mu2, lv2, mu1, lv1), forward + pair_kl(mu2, lv2, mu1, lv1)):
        assert adaptive_shared(other).tolist() == [[True, False, True]]
        assert known_k_shared(other, one).tolist() == [[True, False, True]]


@pytest.mark.parametrize("name,params", [("adagvae", {}), ("adamlvae", {}), ("gvae", {"k": 1}),
                                         ("mlvae_pairs", {"k": 1})])
def test_objectives_share_the_dims_that_kl_first_against_second_chooses(name, params):
    # through the objective: the shared dims carry the aggregate, identical in both images of the pair;
    # a model that measured KL(q2||q1), or the symmetric KL, would keep dim 1 and share dim 0
    mu1, lv1, mu2, lv2 = direction_pair()
    model = given_model(torch.cat([mu1, mu2]), torch.cat([lv1, lv2]))
    captured = {}
    model.decoder.register_forward_hook(lambda m, i, o: captured.update(z=i[0].detach()))
    batch = PairBatch(torch.zeros(1, 3), torch.zeros(1, 3), torch.tensor([[True, False]]))
    out = build_objective(name, **params)(model, batch)
    z = captured["z"]                      # eval mode: z is the (aggregated) posterior mean, (2, 3)
    assert out.terms["shared_dims"].item() == 2.0
    assert z[0, 0] == pytest.approx(0.1) and z[1, 0] == pytest.approx(-0.1)   # dim 0 keeps its own
    torch.testing.assert_close(z[0, 1:], z[1, 1:])                          # dims 1, 2 shared


# -- the pair presets' protocol: pairs per step --------------------------------------------------------

PAIR_MODELS = ("adagvae", "gvae", "adamlvae", "mlvae-pairs")


def toy_pair_data():
    from untwine.data.arrays import ArrayGroundTruthData
    from untwine.data.factors import FactorSpace
    space = FactorSpace.from_values({"a": range(3), "b": range(4), "c": range(5), "d": range(2), "e": range(2)})
    return ArrayGroundTruthData("toy", space, np.zeros((len(space), 2, 2), np.uint8))


@pytest.mark.parametrize("dataset", ["dsprites", "shapes3d"])
@pytest.mark.parametrize("model", PAIR_MODELS)
def test_full_pair_presets_draw_disentanglement_libs_64_pairs_a_step(dataset, model):
    from importlib import resources

    from untwine.train.batches import build_sampler
    from untwine.train.engine import build_objective_from

    data = toy_pair_data()
    pairs = {}
    for preset in (f"{dataset}-{model}", f"{dataset}-{model}-full"):
        cfg = load_config(preset)
        sampler = build_sampler(cfg, data, build_objective_from(cfg, len(data)), seed=0, device=None)
        batch = next(sampler)
        assert isinstance(batch, PairBatch) and batch.x1.shape == batch.x2.shape
        pairs[preset] = batch.x1.shape[0]
        header = (resources.files("untwine.configs") / f"{preset}.yaml").read_text()
        # each preset says which protocol it runs, in pairs a step
        assert f"{pairs[preset]} pairs" in header, preset
    assert pairs[f"{dataset}-{model}-full"] == 64    # disentanglement_lib: batch_size 64 pairs (128 images)
    assert pairs[f"{dataset}-{model}"] == 32         # the CPU presets: half of that, and they say so
    assert load_config(f"{dataset}-{model}-full").trainer.steps == 300_000
