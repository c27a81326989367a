"""Weak pair models: aggregation formulas and shared-dim rules by hand, the loss end to end, errors."""
import csv
import math

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
