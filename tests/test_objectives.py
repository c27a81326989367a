"""Objectives: every loss term against hand-computed or brute-force values; FactorVAE gradient routing."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from untwine.errors import ConfigError
from untwine.nets import build_vae
from untwine.nets.base import VAEOutput
from untwine.nets.likelihoods import BernoulliLikelihood
from untwine.objectives import OBJECTIVES, build_objective, gaussian_kl
from untwine.objectives.betatcvae import mss_log_weights
from untwine.objectives.factorvae import permute_dims


class FixedModel(nn.Module):
    """A 'VAE' whose forward returns given tensors, so losses can be checked by hand."""

    def __init__(self, x_params, mu, logvar, z=None):
        super().__init__()
        self.likelihood = BernoulliLikelihood()
        self.x_params, self.mu, self.logvar = x_params, mu, logvar
        self.z = mu if z is None else z

    def forward(self, x):
        return VAEOutput(self.x_params, self.mu, self.logvar, self.z)


def bce(logit, target):
    return -(target * math.log(1 / (1 + math.exp(-logit))) + (1 - target) * math.log(1 - 1 / (1 + math.exp(-logit))))


# Two examples, two pixels, two latents.
X = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
LOGITS = torch.tensor([[0.0, 2.0], [-1.0, 3.0]])
MU = torch.tensor([[1.0, 0.0], [0.0, -2.0]])
LOGVAR = torch.tensor([[0.0, math.log(2.0)], [math.log(0.5), 0.0]])
RECON = (bce(0, 1) + bce(2, 0) + bce(-1, 0) + bce(3, 1)) / 2
# KL per (example, dim) = 0.5 (mu^2 + var - log var - 1)
KL = (0.5 * (1 + 1 - 0 - 1) + 0.5 * (0 + 2 - math.log(2) - 1)
      + 0.5 * (0 + 0.5 - math.log(0.5) - 1) + 0.5 * (4 + 1 - 0 - 1)) / 2


def fixed():
    return FixedModel(LOGITS, MU, LOGVAR)


def test_gaussian_kl_closed_form():
    kl = gaussian_kl(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, math.log(2.0)]]))
    torch.testing.assert_close(kl, torch.tensor([[0.5, 0.5 * (1 - math.log(2))]]))
    # against torch.distributions
    mu, logvar = torch.randn(4, 3), torch.randn(4, 3)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros(4, 3), torch.ones(4, 3))
    torch.testing.assert_close(gaussian_kl(mu, logvar), torch.distributions.kl_divergence(q, p))


def test_betavae_terms_and_beta_override():
    objective = build_objective("betavae", beta=4.0)
    out = objective(fixed(), X)
    assert out.terms["recon"].item() == pytest.approx(RECON, rel=1e-6)
    assert out.terms["kl"].item() == pytest.approx(KL, rel=1e-6)
    assert out.loss.item() == pytest.approx(RECON + 4 * KL, rel=1e-6)
    assert objective(fixed(), X, beta=0.5).loss.item() == pytest.approx(RECON + 0.5 * KL, rel=1e-6)
    assert out.aux_loss is None and all(not t.requires_grad for t in out.terms.values())


@pytest.mark.parametrize("step, c", [(0, 0.0), (50, 5.0), (100, 10.0), (1000, 10.0)])
def test_capacity_term(step, c):
    objective = build_objective("capacity", gamma=100.0, c_max=10.0, c_steps=100)
    out = objective(fixed(), X, step=step)
    assert out.terms["capacity"].item() == pytest.approx(c)
    assert out.loss.item() == pytest.approx(RECON + 100 * abs(KL - c), rel=1e-6)
    assert objective(fixed(), X, beta=2.0, step=step).loss.item() == pytest.approx(RECON + 2 * abs(KL - c), rel=1e-6)


# ---- beta-TCVAE -------------------------------------------------------------------------------

def log_normal(v, m, lv):
    return -0.5 * ((v - m) ** 2 / math.exp(lv) + lv + math.log(2 * math.pi))


def brute_force_tc_terms(z, mu, logvar, n, estimator):
    """MI, TC, DWKL by explicit loops over the definition of each estimator."""
    b, d = len(z), len(z[0])
    m = b - 1

    def weight(i, j):
        if estimator == "mws":
            return 1.0 / (n * b)
        if j == i:
            return 1.0 / n
        if j == (i + 1) % b:
            return (n - m) / (n * m)
        return 1.0 / m

    mi = tc = dwkl = 0.0
    for i in range(b):
        q_joint = sum(weight(i, j) * math.exp(sum(log_normal(z[i][k], mu[j][k], logvar[j][k]) for k in range(d)))
                      for j in range(b))
        log_prod = 0.0
        for k in range(d):
            log_prod += math.log(sum(weight(i, j) * math.exp(log_normal(z[i][k], mu[j][k], logvar[j][k]))
                                     for j in range(b)))
        log_qzx = sum(log_normal(z[i][k], mu[i][k], logvar[i][k]) for k in range(d))
        log_pz = sum(log_normal(z[i][k], 0.0, 0.0) for k in range(d))
        mi += (log_qzx - math.log(q_joint)) / b
        tc += (math.log(q_joint) - log_prod) / b
        dwkl += (log_prod - log_pz) / b
    return mi, tc, dwkl


@pytest.mark.parametrize("estimator", ["mws", "mss"])
def test_betatcvae_estimators_match_brute_force(estimator):
    g = torch.Generator().manual_seed(1)
    mu = torch.randn(5, 3, generator=g, dtype=torch.float64)
    logvar = torch.randn(5, 3, generator=g, dtype=torch.float64) * 0.5 - 1
    z = mu + torch.randn(5, 3, generator=g, dtype=torch.float64) * (0.5 * logvar).exp()
    objective = build_objective("betatcvae", dataset_size=1000, estimator=estimator)
    parts = objective.decompose(z, mu, logvar)
    mi, tc, dwkl = brute_force_tc_terms(z.tolist(), mu.tolist(), logvar.tolist(), 1000, estimator)
    assert parts["mi"].item() == pytest.approx(mi, rel=1e-9, abs=1e-9)
    assert parts["tc"].item() == pytest.approx(tc, rel=1e-9, abs=1e-9)
    assert parts["dwkl"].item() == pytest.approx(dwkl, rel=1e-9, abs=1e-9)
    # the three terms always add up to the sampled KL estimate log q(z|x) - log p(z)
    sampled_kl = sum(log_normal(z[i, k].item(), mu[i, k].item(), logvar[i, k].item()) - log_normal(z[i, k].item(), 0, 0)
                     for i, k in itertools.product(range(5), range(3))) / 5
    assert mi + tc + dwkl == pytest.approx(sampled_kl, rel=1e-9)


def test_mss_weights_rows_sum_to_one_with_own_term_one_over_n():
    w = mss_log_weights(6, 50).exp()
    torch.testing.assert_close(w.sum(1), torch.ones(6))
    torch.testing.assert_close(torch.diagonal(w), torch.full((6,), 1 / 50))
    assert w[5, 0].item() == pytest.approx((50 - 5) / (50 * 5))


def test_mss_identical_posteriors_give_zero_mi_and_tc():
    mu = torch.tensor([[0.3, -1.0]]).repeat(4, 1)
    logvar = torch.tensor([[-1.0, 0.5]]).repeat(4, 1)
    z = torch.tensor([[0.1, 0.2], [0.5, -1.0], [-0.2, 0.0], [1.0, 1.0]])
    parts = build_objective("betatcvae", dataset_size=100, estimator="mss").decompose(z, mu, logvar)
    assert abs(parts["mi"].item()) < 1e-5 and abs(parts["tc"].item()) < 1e-5


def correlated_batch():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(64, 1, generator=g)
    mu = torch.cat([base, base + 0.05 * torch.randn(64, 1, generator=g)], 1)
    logvar = torch.full((64, 2), math.log(0.01))
    z = mu + 0.1 * torch.randn(64, 2, generator=g)
    return FixedModel(torch.zeros(64, 2), mu, logvar, z)


@pytest.mark.parametrize("estimator", ["mws", "mss"])
def test_betatcvae_penalises_tc_and_reduces_to_dlib_form(estimator):
    model = correlated_batch()
    x = torch.zeros(64, 2)
    tcvae = build_objective("betatcvae", dataset_size=10_000, estimator=estimator, beta=6.0)
    out = tcvae(model, x)
    tc = out.terms["tc"].item()
    assert tc > 1.0  # two nearly identical codes share most of their information
    # alpha = gamma = 1: exactly disentanglement_lib's recon + KL + (beta - 1) TC
    expected = out.terms["recon"] + out.terms["kl"] + 5.0 * out.terms["tc"]
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    # the loss grows with TC: beta 6 costs 5 TC more than beta 1
    plain = build_objective("betatcvae", dataset_size=10_000, estimator=estimator, beta=1.0)(model, x)
    assert out.loss.item() - plain.loss.item() == pytest.approx(5 * tc, rel=1e-5)
    assert out.loss.item() > plain.loss.item()
    if estimator == "mws":
        return  # MWS is biased by about (D-1) log(N B) for tight posteriors: compare levels with MSS only
    # independent codes with the same marginal spread have much smaller TC
    g = torch.Generator().manual_seed(1)
    indep = FixedModel(torch.zeros(64, 2), model.mu[torch.randperm(64, generator=g)] * torch.tensor([1.0, 0.0])
                       + model.mu * torch.tensor([0.0, 1.0]), model.logvar)
    indep.z = indep.mu
    assert tcvae(indep, x).terms["tc"].item() < tc / 2


def test_betatcvae_separate_weights_and_controller_weight():
    model = correlated_batch()
    x = torch.zeros(64, 2)
    base = build_objective("betatcvae", dataset_size=10_000, alpha=1.0, beta=1.0, gamma=1.0)(model, x)
    t = base.terms
    out = build_objective("betatcvae", dataset_size=10_000, alpha=2.0, beta=3.0, gamma=4.0)(model, x, beta=0.5)
    expected = t["recon"] + 0.5 * t["kl"] + 1.0 * t["mi"] + 2.0 * t["tc"] + 3.0 * t["dwkl"]
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_betatcvae_needs_dataset_size():
    with pytest.raises(ConfigError, match="dataset_size"):
        build_objective("betatcvae")
    with pytest.raises(ConfigError, match="batch"):
        build_objective("betatcvae", dataset_size=10)(correlated_batch(), torch.zeros(64, 2))


# ---- DIP-VAE ----------------------------------------------------------------------------------

def test_dipvae_covariance_penalties_by_hand():
    mu = torch.tensor([[1.0, 0.0], [3.0, 2.0]])  # centred [[-1,-1],[1,1]]: Cov = [[1,1],[1,1]]
    var = torch.tensor([[0.5, 1.0], [1.5, 3.0]])  # E[var] = [1, 2]
    model = FixedModel(LOGITS, mu, var.log())
    kl = gaussian_kl(mu, var.log()).sum(1).mean().item()
    out = build_objective("dipvae-i", lambda_od=3.0, lambda_d=7.0)(model, X)
    assert out.terms["dip"].item() == pytest.approx(3.0 * 2)  # off-diagonal 1^2 + 1^2, diagonal exactly 1
    assert out.loss.item() == pytest.approx(RECON + kl + 6.0, rel=1e-6)
    # II: Cov[mu] + diag(E[var]) = [[2,1],[1,3]]: off-diagonal 2, diagonal (2-1)^2 + (3-1)^2 = 5
    out = build_objective("dipvae-ii", lambda_od=3.0, lambda_d=7.0)(model, X)
    assert out.terms["dip"].item() == pytest.approx(3.0 * 2 + 7.0 * 5, rel=1e-6)
    assert build_objective("dipvae-ii", lambda_od=3.0, lambda_d=7.0)(model, X, beta=0.0).loss.item() == \
        pytest.approx(RECON + 41.0, rel=1e-6)


# ---- FactorVAE --------------------------------------------------------------------------------

def factor_setup(gamma=35.0):
    torch.manual_seed(0)
    model = build_vae("mlp", in_dim=6, latent_dim=3, hidden=(16,))
    objective = build_objective("factorvae", gamma=gamma, latent_dim=3)
    return model, objective, torch.rand(32, 6)


def test_factorvae_discriminator_is_kim_and_mnih():
    objective = build_objective("factorvae", latent_dim=10)
    linears = [m for m in objective.discriminator if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(10, 1000)] + [(1000, 1000)] * 5 + [(1000, 2)]
    assert sum(isinstance(m, nn.LeakyReLU) for m in objective.discriminator) == 6
    assert objective.auxiliary_parameters() == list(objective.discriminator.parameters())


def test_factorvae_terms_by_hand():
    model, objective, x = factor_setup()
    model.eval()  # z = mu: no sampling, so the permutation is the only randomness
    torch.manual_seed(3)
    out = objective(model, x)
    torch.manual_seed(3)
    z = model.encode(x)[0].detach()
    perm = permute_dims(z)
    d = objective.discriminator
    with torch.no_grad():
        real, shuffled = d(z), d(perm)
    tc = (real[:, 0] - real[:, 1]).mean()
    disc = 0.5 * (F.cross_entropy(real, torch.zeros(32, dtype=torch.long)) + F.cross_entropy(shuffled, torch.ones(32, dtype=torch.long)))
    torch.testing.assert_close(out.terms["tc"], tc)
    torch.testing.assert_close(out.aux_loss.detach(), disc)
    torch.testing.assert_close(out.loss.detach(), out.terms["recon"] + out.terms["kl"] + 35.0 * tc)


def test_permute_dims_shuffles_each_column_independently():
    torch.manual_seed(0)
    z = torch.arange(200, dtype=torch.float32).reshape(100, 2)
    p = permute_dims(z)
    for k in range(2):
        assert torch.equal(p[:, k].sort().values, z[:, k])
    assert not torch.equal(p[:, 0] * 2 + 1, p[:, 1])  # pairing of the columns is broken


def test_factorvae_gradient_routing():
    model, objective, x = factor_setup()
    encoder, disc = list(model.encoder.parameters()), objective.auxiliary_parameters()
    out = objective(model, x)
    out.aux_loss.backward(retain_graph=True)
    assert all(p.grad is None for p in model.parameters())  # the discriminator's loss never reaches the VAE
    assert all(p.grad is not None for p in disc) and any(p.grad.abs().sum() > 0 for p in disc)
    for p in disc:
        p.grad = None
    out.loss.backward()
    assert all(p.grad is None for p in disc)  # the VAE's loss never lands in the discriminator's grads
    assert all(p.grad is not None for p in encoder)


def test_factorvae_tc_gradient_reaches_the_encoder():
    grads = []
    for gamma in (0.0, 35.0):
        model, objective, x = factor_setup(gamma)
        torch.manual_seed(5)
        objective(model, x).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.encoder.parameters()]))
    assert (grads[0] - grads[1]).abs().max() > 1e-6


def test_factorvae_engine_protocol_updates_each_net_with_its_own_gradient_only():
    model, objective, x = factor_setup()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    aux_opt = torch.optim.Adam(objective.auxiliary_parameters(), **objective.aux_optimizer)
    out = objective(model, x)
    vae_params, disc_params = list(model.parameters()), objective.auxiliary_parameters()
    want_vae = torch.autograd.grad(out.loss, vae_params, retain_graph=True)
    want_disc = torch.autograd.grad(out.aux_loss, disc_params, retain_graph=True)
    before = [p.detach().clone() for p in disc_params]

    opt.zero_grad()
    out.loss.backward()
    for p, g in zip(vae_params, want_vae):
        torch.testing.assert_close(p.grad, g)
    opt.step()
    assert all(torch.equal(p, b) for p, b in zip(disc_params, before))  # VAE step leaves D alone
    aux_opt.zero_grad()
    out.aux_loss.backward()
    for p, g in zip(disc_params, want_disc):
        torch.testing.assert_close(p.grad, g)
    for p, g in zip(vae_params, want_vae):  # D's backward added nothing to the VAE's gradients
        torch.testing.assert_close(p.grad, g)
    aux_opt.step()
    assert any(not torch.equal(p, b) for p, b in zip(disc_params, before))


def test_factorvae_wrong_latent_dim_is_a_clear_error():
    model, _, x = factor_setup()
    with pytest.raises(ConfigError, match="latent_dim=3"):
        build_objective("factorvae", latent_dim=10)(model, x)


# ---- all objectives ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_every_objective_reports_recon_kl_and_its_weight_under_bf16(name):
    torch.manual_seed(0)
    model = build_vae("conv64", latent_dim=4).to(memory_format=torch.channels_last)
    objective = build_objective(name, dataset_size=1000, latent_dim=4)
    assert isinstance(type(objective).kl_weight, str)
    x = (torch.rand(8, 1, 64, 64) > 0.5).float().contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = objective(model, x, beta=2.0, step=10)
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    assert {"recon", "kl"} <= set(out.terms)
    assert out.terms["recon"].dtype == torch.float32
    out.loss.backward()
    assert all(p.grad is not None for p in model.encoder.parameters())


def test_build_objective_errors():
    with pytest.raises(ConfigError, match="unknown objective"):
        build_objective("vqvae")
    with pytest.raises(ConfigError, match="unknown parameter"):
        build_objective("betavae", gamma=3)
    with pytest.raises(ConfigError, match="beta"):
        build_objective("betavae", beta=-1)
    # dataset_size and latent_dim are accepted (and ignored) by every objective
    assert build_objective("dipvae-i", dataset_size=10, latent_dim=3).lambda_d == 100.0
