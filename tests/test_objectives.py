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
from untwine.objectives.betatcvae import log_q_joint_and_marginals, mss_log_weights
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
            return 1.0 / b  # the batch average (Chen et al.'s 1/(N B) less its constant log N)
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


@pytest.mark.parametrize("estimator", ["mws", "mss"])
@pytest.mark.parametrize("n", [100, 10**6])
def test_identical_posteriors_give_zero_mi_and_tc(estimator, n):
    # q(z) = q(z|x) = prod_d q(z_d|x): MI and TC are 0 in nats, whatever N (Chen et al.'s MWS logs
    # TC = (D-1) log N here: 4.6 nats at N = 100, 13.8 at N = 10^6)
    mu = torch.tensor([[0.3, -1.0]]).repeat(4, 1)
    logvar = torch.tensor([[-1.0, 0.5]]).repeat(4, 1)
    z = torch.tensor([[0.1, 0.2], [0.5, -1.0], [-0.2, 0.0], [1.0, 1.0]])
    parts = build_objective("betatcvae", dataset_size=n, estimator=estimator).decompose(z, mu, logvar)
    assert abs(parts["mi"].item()) < 1e-5 and abs(parts["tc"].item()) < 1e-5
    kl_sampled = (log_normal_t(z, mu, logvar) - log_normal_t(z, 0 * mu, 0 * logvar)).sum(1).mean()
    assert parts["dwkl"].item() == pytest.approx(kl_sampled.item(), rel=1e-5)


def log_normal_t(v, m, lv):
    return -0.5 * ((v - m) ** 2 / lv.exp() + lv + math.log(2 * math.pi))


def factorised_batch(seed=2, b=64, d=3, sd=0.5):
    """Independent N(0, 1) means per dimension, posteriors of standard deviation sd: true TC 0."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(b, d, generator=g)
    logvar = torch.full((b, d), 2 * math.log(sd))
    return mu + sd * torch.randn(b, d, generator=g), mu, logvar


@pytest.mark.parametrize("estimator", ["mws", "mss"])
def test_logged_tc_of_a_factorised_batch_is_near_zero_and_free_of_log_n(estimator):
    z, mu, logvar = factorised_batch()
    small, large = (build_objective("betatcvae", dataset_size=n, estimator=estimator).decompose(z, mu, logvar)
                    for n in (1000, 10**6))
    assert abs(small["tc"].item()) < 0.3 and abs(large["tc"].item()) < 0.3  # measured 0.11 (MWS), -0.19 (MSS)
    if estimator == "mws":  # the batch average: N does not enter at all (it moved TC by 2 log 1000 = 13.8)
        assert all(torch.equal(small[k], large[k]) for k in small)


def chen_mws_terms(z, mu, logvar, n):
    """Chen et al.'s MWS as released: weights 1/(N B), i.e. with the constant log(N B)."""
    mat = log_normal_t(z.unsqueeze(1), mu.unsqueeze(0), logvar.unsqueeze(0))
    log_nb = math.log(n * z.shape[0])
    log_qz = torch.logsumexp(mat.sum(2), 1) - log_nb
    log_prod = (torch.logsumexp(mat, 1) - log_nb).sum(1)
    log_qzx = log_normal_t(z, mu, logvar).sum(1)
    log_pz = log_normal_t(z, 0 * z, 0 * z).sum(1)
    return {"mi": (log_qzx - log_qz).mean(), "tc": (log_qz - log_prod).mean(), "dwkl": (log_prod - log_pz).mean()}


def test_mws_drops_only_constants_so_the_loss_gradient_is_unchanged():
    n, alpha, beta, gamma = 5000, 2.0, 6.0, 3.0
    leaves = [t.clone().requires_grad_() for t in factorised_batch(seed=4, b=16, d=3)]
    z, mu, logvar = leaves
    x = torch.rand(16, 2, generator=torch.Generator().manual_seed(0))
    model = FixedModel(torch.zeros(16, 2), mu, logvar, z)
    out = build_objective("betatcvae", dataset_size=n, alpha=alpha, beta=beta, gamma=gamma)(model, x)
    old = chen_mws_terms(z, mu, logvar, n)
    log_n, d = math.log(n), 3
    # the logged terms are Chen et al.'s less constants: MI - log N, TC - (D-1) log N, DWKL + D log N
    assert out.terms["mi"].item() == pytest.approx(old["mi"].item() - log_n, abs=1e-4)
    assert out.terms["tc"].item() == pytest.approx(old["tc"].item() - (d - 1) * log_n, abs=1e-4)
    assert out.terms["dwkl"].item() == pytest.approx(old["dwkl"].item() + d * log_n, abs=1e-4)
    old_loss = (out.terms["recon"] + gaussian_kl(mu, logvar).sum(1).mean() + (alpha - 1) * old["mi"]
                + (beta - 1) * old["tc"] + (gamma - 1) * old["dwkl"])
    for got, want in zip(torch.autograd.grad(out.loss, leaves, retain_graph=True),
                         torch.autograd.grad(old_loss, leaves)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_mss_estimate_of_q_z_is_unbiased_for_batches_drawn_without_replacement():
    # Chen et al.'s appendix: with the batch's other B-1 members drawn uniformly without replacement
    # from the other N-1 examples, E[q_hat(z)] = q(z) = (1/N) sum_n q(z|x_n) exactly, for any z,
    # jointly and per dimension. Enumerate every ordered batch (N = 6, B = 3) that starts with x_star.
    g = torch.Generator().manual_seed(0)
    n, b = 6, 3
    mu = torch.randn(n, 2, generator=g, dtype=torch.float64)
    logvar = torch.randn(n, 2, generator=g, dtype=torch.float64) * 0.5
    z0 = torch.tensor([0.3, -0.4], dtype=torch.float64)
    per_dim = log_normal_t(z0, mu, logvar).exp()             # (N, D): q(z0_d | x_n)
    q_true, q_dims_true = per_dim.prod(1).mean(), per_dim.mean(0)

    def mean_estimates(batches):
        """Mean over batches of the estimates of q(z0) and of each q(z0_d), z0 the code of row 0."""
        joint, dims = [], []
        for idx in batches:
            idx = list(idx)
            z = torch.cat([z0[None], mu[idx[1:]]])  # the other rows' codes do not enter row 0
            joint.append(log_q_joint_and_marginals(z, mu[idx], logvar[idx], n, "mss")[0][0].exp())
            dims.append(torch.stack([log_q_joint_and_marginals(z[:, [k]], mu[idx][:, [k]], logvar[idx][:, [k]], n,
                                                               "mss")[0][0].exp() for k in range(2)]))
        return torch.stack(joint).mean(), torch.stack(dims).mean(0)

    worst_with_replacement = 0.0
    for star in range(n):
        others = [j for j in range(n) if j != star]
        joint, dims = mean_estimates([(star, *rest) for rest in itertools.permutations(others, b - 1)])
        assert joint.item() == pytest.approx(q_true.item(), rel=1e-12)
        torch.testing.assert_close(dims, q_dims_true, rtol=1e-12, atol=0)
        joint, _ = mean_estimates([(star, *rest) for rest in itertools.product(range(n), repeat=b - 1)])
        worst_with_replacement = max(worst_with_replacement, abs(joint.item() / q_true.item() - 1))
    assert worst_with_replacement > 0.05  # drawn with replacement the same weights are biased (0.84..1.10)


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
        return  # tight posteriors: MWS weighs each code's own term 1/B, not 1/N, so its TC of independent codes stays high
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


@pytest.mark.parametrize("name, factor", [("dipvae-i", 10.0), ("dipvae-ii", 1.0)])
def test_dipvae_lambda_d_follows_lambda_od_as_in_disentanglement_lib(name, factor):
    # lambda_d = lambda_d_factor * lambda_od: a sweep over lambda_od scales lambda_d with it
    for lambda_od in (1.0, 5.0, 50.0):
        objective = build_objective(name, lambda_od=lambda_od)
        assert (objective.lambda_d_factor, objective.lambda_d) == (factor, factor * lambda_od)
    custom = build_objective(name, lambda_od=2.0, lambda_d_factor=3.0)
    assert custom.lambda_d == 6.0
    mu = torch.tensor([[1.0, 0.0], [3.0, 2.0]])  # Cov[mu] = [[1,1],[1,1]]
    model = FixedModel(LOGITS, mu, torch.zeros(2, 2))
    if name == "dipvae-i":  # off-diagonal 2, diagonal 0
        assert custom(model, X).terms["dip"].item() == pytest.approx(2.0 * 2)
    else:  # Cov[mu] + I = [[2,1],[1,2]]: off-diagonal 2, diagonal 2
        assert custom(model, X).terms["dip"].item() == pytest.approx(2.0 * 2 + 6.0 * 2)


def test_dipvae_absolute_lambda_d_or_factor_but_not_both():
    absolute = build_objective("dipvae-i", lambda_od=2.0, lambda_d=7.0)
    assert absolute.lambda_d == 7.0 and absolute.lambda_d_factor is None
    with pytest.raises(ConfigError, match="both lambda_d=7.0 and lambda_d_factor=10.0 given.*only one"):
        build_objective("dipvae-i", lambda_d=7.0, lambda_d_factor=10.0)
    with pytest.raises(ConfigError, match="lambda_d_factor=-1"):
        build_objective("dipvae-ii", lambda_d_factor=-1)


def test_dip_presets_follow_disentanglement_libs_lambda_d_and_a_config_takes_lambda_d_factor():
    from untwine.train.config import list_presets, load_config
    from untwine.train.engine import build_objective_from

    # disentanglement_lib: lambda_d = 10 lambda_od for DIP-VAE-I, = lambda_od for DIP-VAE-II
    dip = {p: load_config(p) for p in list_presets() if load_config(p).objective.name.startswith("dipvae")}
    assert {"dsprites-dipvae-i", "dsprites-dipvae-ii"} <= set(dip)
    for preset, cfg in dip.items():
        built = build_objective_from(cfg, dataset_size=1000)
        factor = 10.0 if cfg.objective.name == "dipvae-i" else 1.0
        assert built.lambda_d == pytest.approx(factor * built.lambda_od), preset
    cfg = load_config({"objective": {"name": "dipvae-i", "lambda_od": 2, "lambda_d_factor": 5}})
    assert build_objective_from(cfg, dataset_size=1000).lambda_d == 10.0


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

# pair and group objectives take other batches (tests/test_weak.py, tests/test_mlvae.py)
SINGLE_IMAGE_OBJECTIVES = sorted(n for n, cls in OBJECTIVES.items() if getattr(cls, "batch_kind", "single") == "single")


@pytest.mark.parametrize("name", SINGLE_IMAGE_OBJECTIVES)
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
