"""Stage-2 conditional VAE and GAN (untwine.multistage.vae / gan / nets): loss terms against hand
computation, the zero residual, y's injection at every resolution, stage 1 frozen, GAN gradient
routing, errors. Tiny widths and batches: every test runs in well under a second or two."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from untwine.errors import ConfigError, DataError
from untwine.multistage import MultiStageModel, build_stage2
from untwine.multistage.gan import Stage2GAN
from untwine.multistage.nets import RESIDUAL_EPS, ConditionalDecoder
from untwine.multistage.vae import Stage2VAE
from untwine.nets import BernoulliLikelihood, GaussianLikelihood, build_vae

SHAPE = (1, 64, 64)
TINY = {"width": 4, "w_dim": 3}


def batch(b=4, c=1, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(b, c, 64, 64, generator=g) > 0.7).float()
    y = torch.rand(b, c, 64, 64, generator=g)
    z = torch.randn(b, d, generator=g)
    return x, y, z


def randomise_head(stage2, seed=1):
    """The delta head starts at zero (no gradient reaches earlier layers then): give it weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in stage2.decoder.head.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=g))


def gaussian_kl_by_hand(mu, logvar):
    return (0.5 * (mu ** 2 + logvar.exp() - logvar - 1)).sum(1).mean()


# ---- the zero residual ------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [Stage2VAE, Stage2GAN])
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_untrained_stage2_reproduces_stage1(cls, likelihood):
    torch.manual_seed(0)
    s = cls(image_shape=(3, 64, 64), latent_dim=5, likelihood=likelihood, use_z=True, **TINY)
    x, y, z = batch(c=3)
    y = y.clamp(0.01, 0.99)
    w = torch.randn(len(y), 3) * 5  # whatever w is
    assert torch.allclose(s.generate(y, z, w), y, atol=1e-6, rtol=0)


def test_untrained_vae_nll_is_stage1_nll_by_hand():
    # y = 0.5 everywhere: logits 0, so every pixel costs log 2 nats whatever x is
    s = Stage2VAE(image_shape=SHAPE, latent_dim=5, **TINY).eval()
    x, _, z = batch()
    y = torch.full_like(x, 0.5)
    out = s.loss(x, y, z)
    assert out.terms["recon"].item() == pytest.approx(64 * 64 * math.log(2), rel=1e-6)
    # Gaussian, y = x: only the normalising constant is left
    sg = Stage2VAE(image_shape=SHAPE, latent_dim=5, likelihood="gaussian", **TINY).eval()
    out = sg.loss(x, x, z)
    assert out.terms["recon"].item() == pytest.approx(64 * 64 * 0.5 * math.log(2 * math.pi), rel=1e-6)


def test_residual_base_clamps_y_to_a_finite_logit():
    dec = ConditionalDecoder(1, 3, width=4)
    y = torch.tensor([0.0, 1.0, 0.25]).view(1, 1, 1, 3)
    base = dec.base(y)
    assert torch.isfinite(base).all()
    assert base[0, 0, 0, 0].item() == pytest.approx(math.log(RESIDUAL_EPS / (1 - RESIDUAL_EPS)), rel=1e-4)
    assert base[0, 0, 0, 2].item() == pytest.approx(math.log(0.25 / 0.75), rel=1e-6)


# ---- VAE loss terms ---------------------------------------------------------------------------

def test_vae_terms_against_hand_computation():
    torch.manual_seed(0)
    s = Stage2VAE(image_shape=SHAPE, latent_dim=5, beta=2.5, **TINY)
    randomise_head(s)
    x, y, z = batch()
    mu, logvar = s.encoder(x, y)

    s.eval()  # w = posterior mean
    out = s.loss(x, y, z)
    logits = s.decoder(y, mu)
    recon = BernoulliLikelihood().nll(logits, x).mean()
    kl = gaussian_kl_by_hand(mu, logvar)
    assert torch.allclose(out.terms["recon"], recon, rtol=1e-6)
    assert torch.allclose(out.terms["kl"], kl, rtol=1e-6)
    assert torch.allclose(out.loss, recon + 2.5 * kl, rtol=1e-6)
    assert torch.allclose(s.loss(x, y, z, beta=0.5).loss, recon + 0.5 * kl, rtol=1e-6)  # a controller's beta

    s.train()  # w = mu + eps * sigma, eps from the global generator
    torch.manual_seed(7)
    out = s.loss(x, y, z)
    torch.manual_seed(7)
    w = mu + torch.randn(mu.shape) * torch.exp(0.5 * logvar)
    recon = BernoulliLikelihood().nll(s.decoder(y, w), x).mean()
    assert torch.allclose(out.terms["recon"], recon, rtol=1e-6)
    assert torch.allclose(out.loss, recon + 2.5 * kl, rtol=1e-6)


def test_vae_log_likelihood_is_the_elbo_in_nats():
    torch.manual_seed(0)
    s = Stage2VAE(image_shape=SHAPE, latent_dim=5, likelihood="gaussian", **TINY).eval()
    randomise_head(s)
    x, y, z = batch()
    mu, logvar = s.encoder(x, y)
    kl = (0.5 * (mu ** 2 + logvar.exp() - logvar - 1)).sum(1)
    at_means = s.log_likelihood(x, y, z, samples=0)   # a point estimate, asked for by name only
    by_hand = -GaussianLikelihood().nll(s.decoder(y, mu), x) - kl
    assert at_means.shape == (4,)
    assert torch.allclose(at_means, by_hand, rtol=1e-6)
    a = s.log_likelihood(x, y, z, samples=3, generator=torch.Generator().manual_seed(3))
    b = s.log_likelihood(x, y, z, samples=3, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    draws = [mu + torch.randn(mu.shape, generator=g) * torch.exp(0.5 * logvar) for _ in range(3)]
    mc = torch.stack([-GaussianLikelihood().nll(s.decoder(y, w), x) for w in draws]).mean(0) - kl
    assert torch.equal(a, b) and torch.allclose(a, mc, rtol=1e-6)
    # the default is a sampled bound (one draw), not the point estimate at the posterior mean
    one = s.log_likelihood(x, y, z, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(one, -GaussianLikelihood().nll(s.decoder(y, draws[0]), x) - kl, rtol=1e-6)
    with pytest.raises(ConfigError, match="samples"):
        s.log_likelihood(x, y, z, samples=-1)


# ---- sampled ELBO and IWAE of stage 1 and the combined model ----------------------------------

def normal_log_prob(v, mu, std):
    return torch.distributions.Normal(mu, std).log_prob(v).sum(1)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_one_draw_log_weights_by_hand(likelihood):
    # log w = log p(x | z, w) + log p(z) + log p(w) - log q(z | x) - log q(w | x, y), y = g1(z), one
    # draw z ~ q(z|x) then w ~ q(w|x,y) from the global RNG; stage 1's weight shares the draw of z
    torch.manual_seed(0)
    stage1 = build_vae("conv64", in_channels=1, latent_dim=5, likelihood=likelihood)
    stage2 = Stage2VAE(image_shape=SHAPE, latent_dim=5, likelihood=likelihood, **TINY)
    randomise_head(stage2)
    model = MultiStageModel(stage1, stage2).eval()
    x, _, _ = batch()
    torch.manual_seed(11)
    got = model.log_weights(x, samples=1)
    torch.manual_seed(11)
    lik = stage1.likelihood
    mu, logvar = stage1.encode(x)
    std = torch.exp(0.5 * logvar)
    z = mu + torch.randn(mu.shape) * std
    params = stage1.decode(z)
    log_pz_qz = normal_log_prob(z, torch.zeros_like(z), torch.ones_like(z)) - normal_log_prob(z, mu, std)
    stage1_w = -lik.nll(params, x) + log_pz_qz
    y = lik.mean(params)
    mu_w, logvar_w = stage2.encoder(x, y)
    std_w = torch.exp(0.5 * logvar_w)
    w = mu_w + torch.randn(mu_w.shape) * std_w
    combined_w = (-stage2.likelihood.nll(stage2.decoder(y, w), x) + log_pz_qz
                  + normal_log_prob(w, torch.zeros_like(w), torch.ones_like(w)) - normal_log_prob(w, mu_w, std_w))
    assert got["stage1"].shape == got["combined"].shape == (1, 4)
    assert torch.allclose(got["stage1"][0], stage1_w, rtol=1e-5, atol=1e-3)
    assert torch.allclose(got["combined"][0], combined_w, rtol=1e-5, atol=1e-3)
    # K = 1: the IWAE is the sampled ELBO, draw for draw
    torch.manual_seed(11)
    b = model.bounds(x, samples=1)
    for stage, weight in (("stage1", stage1_w), ("combined", combined_w)):
        assert torch.equal(b[stage]["iwae"], b[stage]["elbo_sampled"])
        assert torch.allclose(b[stage]["iwae"], weight, rtol=1e-5, atol=1e-3)
    # K draws: the ELBO is their mean, the IWAE their log-mean-exp (>= the mean, Jensen)
    torch.manual_seed(12)
    lw = model.log_weights(x, samples=6)
    torch.manual_seed(12)
    b = model.bounds(x, samples=6)
    for stage in ("stage1", "combined"):
        assert torch.allclose(b[stage]["elbo_sampled"], lw[stage].mean(0))
        assert torch.allclose(b[stage]["iwae"], torch.logsumexp(lw[stage], 0) - math.log(6))
        assert (b[stage]["iwae"] >= b[stage]["elbo_sampled"]).all()
    with pytest.raises(ConfigError, match="samples"):
        model.bounds(x, samples=0)
    # a GAN stage 2 has no likelihood: stage 1's bounds only
    gan = MultiStageModel(stage1, Stage2GAN(image_shape=SHAPE, latent_dim=5, likelihood=likelihood, **TINY))
    assert set(gan.bounds(x, samples=2)) == {"stage1"}


class LinearGaussianStage1(nn.Module):
    """x = c + W z + eps, eps ~ N(0, I), W with orthogonal columns, and its exact posterior (diagonal
    because the columns are orthogonal), optionally shifted and widened: a stage 1 whose log p(x) is
    known in closed form."""

    def __init__(self, W, c, shift=0.0, widen=0.0):
        super().__init__()
        self.W, self.c = nn.Parameter(W), nn.Parameter(c)
        self.latent_dim = W.shape[1]
        self.likelihood = GaussianLikelihood()
        self.shift, self.widen = shift, widen

    def encode(self, x):
        var = 1.0 / (1.0 + self.W.pow(2).sum(0))
        mu = var * ((x.flatten(1) - self.c) @ self.W)
        return mu + self.shift, (var.log() + self.widen).expand_as(mu)

    def decode(self, z):
        return (self.c + z @ self.W.T).view(-1, *SHAPE)

    def representation(self, x):
        return self.encode(x)[0]


class LinearGaussianStage2(Stage2VAE):
    """p2(x | y, w) = N(y + V w, I), q(w | x, y) its exact posterior (V orthogonal to W and with
    orthogonal columns), optionally shifted and widened; the log-weight code is Stage2VAE's own."""

    def __init__(self, V, shift=0.0, widen=0.0):
        super().__init__(image_shape=SHAPE, latent_dim=2, likelihood="gaussian", w_dim=V.shape[1], width=2)
        self.V = nn.Parameter(V)
        self.shift, self.widen = shift, widen

    def posterior(self, x, y):
        var = 1.0 / (1.0 + self.V.pow(2).sum(0))
        mu = var * ((x - y).flatten(1) @ self.V)
        return mu + self.shift, (var.log() + self.widen).expand_as(mu)

    def decode(self, y, z, w):
        return y + (w @ self.V.T).view(-1, *SHAPE)


def linear_gaussian(shift=0.0, widen=0.0, n=8):
    """(combined model, x drawn from it, exact log p1(x) of stage 1's model, exact log p(x) of the combined)."""
    d = 64 * 64
    W, V = torch.zeros(d, 2), torch.zeros(d, 2)
    for j, (start, scale) in enumerate(((0, 2.0), (1000, 1.5))):
        W[start:start + 100, j] = scale / 10.0          # |W_j| = scale, disjoint supports
        V[2000 + start:2100 + start, j] = scale / 10.0  # V orthogonal to W and within itself
    c = torch.full((d,), 0.5)
    model = MultiStageModel(LinearGaussianStage1(W, c, shift, widen), LinearGaussianStage2(V, shift, widen)).eval()
    g = torch.Generator().manual_seed(5)
    x = c + torch.randn(n, 2, generator=g) @ W.T + torch.randn(n, 2, generator=g) @ V.T + torch.randn(n, d, generator=g)
    p1 = torch.distributions.LowRankMultivariateNormal(c, W, torch.ones(d))
    p = torch.distributions.LowRankMultivariateNormal(c, torch.cat([W, V], 1), torch.ones(d))
    return model, x.view(n, *SHAPE), p1.log_prob(x), p.log_prob(x)


def test_bounds_are_exact_with_the_exact_posterior():
    model, x, log_p1, log_p = linear_gaussian()
    torch.manual_seed(0)
    b = model.bounds(x, samples=4)
    for stage, exact in (("stage1", log_p1), ("combined", log_p)):
        for key in ("elbo_sampled", "iwae"):
            assert torch.allclose(b[stage][key], exact, atol=2e-2, rtol=0), (stage, key)
    # what the old "ELBO" at the posterior mean gave instead: above log p(x), by the decoder's
    # curvature times the posterior variance, 0.5 * sum_j |W_j|^2 / (1 + |W_j|^2) here
    mu, logvar = model.stage1.encode(x)
    kl = 0.5 * (mu ** 2 + logvar.exp() - logvar - 1).sum(1)
    at_means = -model.stage1.likelihood.nll(model.stage1.decode(mu), x) - kl
    assert torch.allclose(at_means - log_p1, torch.tensor(0.5 * (4 / 5 + 2.25 / 3.25)), atol=2e-2)


def test_iwae_rises_with_k_towards_the_exact_log_likelihood():
    # a posterior off by half a unit: the ELBO's gap is KL(q || p(z|x)) (about 1 nat for stage 1, 2
    # for the combined model), the IWAE's shrinks like var / 2K
    model, x, log_p1, log_p = linear_gaussian(shift=0.5, n=64)
    gaps = {"stage1": [], "combined": []}
    for k in (1, 10, 300):
        torch.manual_seed(k)
        b = model.bounds(x, samples=k)
        for stage, exact in (("stage1", log_p1), ("combined", log_p)):
            gaps[stage].append(float((exact - b[stage]["iwae"]).mean()))
            if k == 10:   # the sampled ELBO of the same draws stays at the K=1 gap
                assert float((exact - b[stage]["elbo_sampled"]).mean()) > gaps[stage][0] - 0.3
    for stage, (g1, g10, g300) in gaps.items():
        assert g1 > 0.8 and g1 > g10 + 0.5 and g10 > g300 + 0.05, (stage, gaps[stage])  # rises with K
        assert abs(g300) < 0.15, (stage, gaps[stage])                                  # towards log p(x)


# ---- y at every resolution --------------------------------------------------------------------

def test_y_conditions_the_decoder_at_every_resolution():
    torch.manual_seed(0)
    s = Stage2VAE(image_shape=SHAPE, latent_dim=5, use_z=True, **TINY)
    randomise_head(s)
    x, y, z = batch()
    w = torch.randn(4, 3)
    y2 = y.clone()
    y2[:, :, :8, :8] = 1 - y2[:, :, :8, :8]
    base = s.decoder(y, w, z)
    delta1 = base - s.decoder.base(y)
    delta2 = s.decoder(y2, w, z) - s.decoder.base(y2)
    assert not torch.allclose(delta1, delta2)  # y changes the residual, not only its base
    base.sum().backward()
    dec = s.decoder
    layers = {f"pyramid.{i}": lvl[0] for i, lvl in enumerate(dec.pyramid.levels)}
    layers.update({f"skip.{i}": skip for i, skip in enumerate(dec.skips)})
    layers["z_film"] = dec.z_film
    for name, layer in layers.items():
        assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0, name
    assert len(dec.pyramid.levels) == 4 and len(dec.skips) == 3  # 32, 16, 8, 4 pixels; FiLM at 16, 8, 4
    # the decoder uses each resolution's features directly (not only through the coarser ones)
    features = [f.detach().requires_grad_() for f in dec.pyramid(y)]
    assert [f.shape[-1] for f in features] == [4, 8, 16, 32]
    dec.delta(features, w, z).sum().backward()
    for f in features:
        assert f.grad.abs().sum() > 0, f.shape
    # each injection matters: silence one resolution's y features and the output moves
    for skip in dec.skips:
        with torch.no_grad():
            saved = [p.clone() for p in skip.parameters()]
            for p in skip.parameters():
                p.zero_()
            assert not torch.allclose(dec(y, w, z), base)
            for p, v in zip(skip.parameters(), saved):
                p.copy_(v)


def test_z_film_only_with_use_z():
    s = Stage2VAE(image_shape=SHAPE, latent_dim=5, **TINY)
    assert s.decoder.z_film is None
    randomise_head(s)
    x, y, z = batch()
    w = torch.randn(4, 3)
    assert torch.equal(s.generate(y, z, w), s.generate(y, z + 1, w))  # z ignored without use_z
    sz = Stage2VAE(image_shape=SHAPE, latent_dim=5, use_z=True, **TINY)
    randomise_head(sz)
    assert not torch.allclose(sz.generate(y, z, w), sz.generate(y, z + 1, w))


# ---- precision and memory format --------------------------------------------------------------

@pytest.mark.parametrize("name", ["vae", "gan"])
def test_bf16_autocast_and_channels_last(name):
    torch.manual_seed(0)
    s = build_stage2(name, image_shape=SHAPE, latent_dim=5, **TINY).eval()
    randomise_head(s)
    x, y, z = batch()
    torch.manual_seed(1)
    ref = s.loss(x, y, z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(1)
        low = s.loss(x, y, z)
    assert low.loss.dtype == torch.float32 and torch.isfinite(low.loss)
    assert low.terms["recon"].item() == pytest.approx(ref.terms["recon"].item(), rel=2e-2)
    s_cl = s.to(memory_format=torch.channels_last)
    torch.manual_seed(1)
    cl = s_cl.loss(x.contiguous(memory_format=torch.channels_last), y.contiguous(memory_format=torch.channels_last), z)
    assert torch.allclose(cl.loss, ref.loss, rtol=1e-5)


# ---- inside the combined model ----------------------------------------------------------------

def tiny_model(name, consistency=0.0, **params):
    torch.manual_seed(0)
    stage1 = build_vae("conv64", in_channels=1, latent_dim=5)
    return MultiStageModel(stage1, build_stage2(name, image_shape=SHAPE, latent_dim=5, **TINY, **params),
                           consistency=consistency)


@pytest.mark.parametrize("consistency", [0.0, 2.0])
@pytest.mark.parametrize("name", ["vae", "gan"])
def test_stage1_stays_frozen_while_stage2_trains(name, consistency):
    model = tiny_model(name, consistency=consistency).train()
    before = {k: v.clone() for k, v in model.stage1.state_dict().items()}
    stage2_params = [p for p in model.stage2.parameters() if p.requires_grad]
    aux = {id(p) for p in model.auxiliary_parameters()}
    opt = torch.optim.Adam([p for p in stage2_params if id(p) not in aux], lr=1e-3)
    aux_opt = torch.optim.Adam(model.auxiliary_parameters(), lr=1e-3) if aux else None
    start = {k: v.clone() for k, v in model.stage2.state_dict().items()}
    x, _, _ = batch()
    for _ in range(3):
        out = model.stage2_loss(x)
        opt.zero_grad()
        if aux_opt:
            aux_opt.zero_grad()
        (out.loss + (out.aux_loss if out.aux_loss is not None else 0)).backward()
        opt.step()
        if aux_opt:
            aux_opt.step()
    after = model.stage1.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.stage1.parameters())
    assert any(not torch.equal(start[k], v) for k, v in model.stage2.state_dict().items())  # stage 2 moved
    assert torch.equal(model.representation(x), model.stage1.representation(x))


@pytest.mark.parametrize("name", ["vae", "gan"])
def test_code_consistency_term_by_hand(name):
    weight = 0.7
    model = tiny_model(name, consistency=weight).train()
    randomise_head(model.stage2)
    x, _, _ = batch()
    torch.manual_seed(3)
    out = model.stage2_loss(x)
    # the same draws by hand: stage 2's own loss first, then w ~ N(0, I) for the consistency image
    torch.manual_seed(3)
    with torch.no_grad():
        mu, logvar = model.stage1.encode(x)
        y = model.stage1.likelihood.mean(model.stage1.decode(mu))
        plain = model.stage2.loss(x, y, mu)
        w = torch.randn(len(x), model.stage2.w_dim)
        fake = torch.sigmoid(model.stage2.decode(y, mu, w))  # bernoulli: the mean is sigmoid(logits)
        mu_fake, _ = model.stage1.encode(fake)
        by_hand = 0.5 * (((mu_fake - mu) / torch.exp(0.5 * logvar)) ** 2).sum(1).mean()
    assert out.terms["consistency"] == pytest.approx(float(by_hand), rel=1e-5)
    assert out.loss.item() == pytest.approx(float(plain.loss + weight * by_hand), rel=1e-5)
    # the term's gradient reaches stage 2's decoder, not stage 1
    model.stage2.zero_grad()
    model.code_consistency(y, mu, torch.exp(0.5 * logvar)).backward()
    assert model.stage2.decoder.head.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.stage1.parameters())
    assert all(p.grad is None for p in model.stage2.encoder.parameters())  # w comes from the prior


def test_code_consistency_needs_a_decoded_detail_latent():
    torch.manual_seed(0)
    stage1 = build_vae("conv64", in_channels=1, latent_dim=5)
    with pytest.raises(ConfigError, match="consistency"):
        MultiStageModel(stage1, build_stage2("gmm", image_shape=SHAPE, latent_dim=5), consistency=1.0)
    with pytest.raises(ConfigError, match="consistency"):
        MultiStageModel(stage1, build_stage2("vae", image_shape=SHAPE, latent_dim=5, **TINY), consistency=-1.0)


@pytest.mark.parametrize("name", ["vae", "gan"])
def test_reconstruct_sample_traverse(name):
    model = tiny_model(name).eval()
    randomise_head(model.stage2)
    x, _, _ = batch()
    rec = model.reconstruct(x)
    smp = model.sample(3, generator=torch.Generator().manual_seed(5))
    trav = model.traverse(x[:2], dim=1, steps=4)
    assert rec.shape == x.shape and smp.shape == (3, *SHAPE) and trav.shape == (4, 2, *SHAPE)
    for t in (rec, smp, trav):
        assert t.min() >= 0 and t.max() <= 1
    again = model.sample(3, generator=torch.Generator().manual_seed(5))
    other = model.sample(3, generator=torch.Generator().manual_seed(6))
    assert torch.equal(smp, again) and not torch.equal(smp, other)
    z, y = model.stage1_output(x)
    assert model.stage2.infer(x, y, z).shape == (4, 3)


def test_a_few_steps_lower_the_vae_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    s = Stage2VAE(image_shape=SHAPE, latent_dim=5, width=8, w_dim=4)
    x, y, z = batch(b=8)
    opt = torch.optim.Adam(s.parameters(), lr=2e-3)
    first = s.eval().loss(x, y, z).loss.item()
    s.train()
    for _ in range(15):
        opt.zero_grad()
        s.loss(x, y, z).loss.backward()
        opt.step()
    last = s.eval().loss(x, y, z).loss.item()
    assert last < 0.9 * first, (first, last)


# ---- GAN ----------------------------------------------------------------------------------------

def test_gan_terms_against_hand_computation():
    torch.manual_seed(0)
    s = Stage2GAN(image_shape=SHAPE, latent_dim=5, recon_weight=2.0, adv_weight=3.0, kl_weight=0.25, **TINY).eval()
    randomise_head(s)
    x, y, z = batch()
    torch.manual_seed(4)
    out = s.loss(x, y, z)
    torch.manual_seed(4)
    w_prior = torch.randn(4, 3)
    mu, logvar = s.encoder(x, y)
    recon = BernoulliLikelihood().nll(s.decoder(y, mu), x).mean()
    kl = gaussian_kl_by_hand(mu, logvar)
    fake = torch.sigmoid(s.decoder(y, w_prior))
    d_real, d_fake = s.discriminator(x, y), s.discriminator(fake, y)
    g_adv = F.softplus(-d_fake).mean()  # non-saturating: -log sigmoid(D(fake))
    d_loss = -F.logsigmoid(d_real).mean() - F.logsigmoid(-d_fake).mean()
    assert torch.allclose(out.terms["recon"], recon, rtol=1e-6)
    assert torch.allclose(out.terms["kl"], kl, rtol=1e-6)
    assert torch.allclose(out.terms["g_adv"], g_adv, rtol=1e-5)
    assert torch.allclose(out.aux_loss, d_loss, rtol=1e-5)
    assert torch.allclose(out.terms["d_loss"], d_loss, rtol=1e-5)
    assert torch.allclose(out.terms["d_real"], torch.sigmoid(d_real).mean(), rtol=1e-5)
    assert torch.allclose(out.terms["d_fake"], torch.sigmoid(d_fake).mean(), rtol=1e-5)
    assert torch.allclose(out.loss, 2.0 * recon + 0.25 * kl + 3.0 * g_adv, rtol=1e-5)
    torch.manual_seed(4)
    steered = s.loss(x, y, z, beta=1.5)  # a controller's beta replaces kl_weight
    assert torch.allclose(steered.loss, 2.0 * recon + 1.5 * kl + 3.0 * g_adv, rtol=1e-5)
    assert not s.has_likelihood
    with pytest.raises(NotImplementedError):
        s.log_likelihood(x, y, z)


def test_gan_losses_reach_disjoint_parameters():
    torch.manual_seed(0)
    s = Stage2GAN(image_shape=SHAPE, latent_dim=5, use_z=True, **TINY).train()
    randomise_head(s)
    d_params = s.auxiliary_parameters()
    d_ids = {id(p) for p in d_params}
    ge_params = [p for p in s.parameters() if id(p) not in d_ids]
    assert d_ids == {id(p) for p in s.discriminator.parameters()} and ge_params
    x, y, z = batch()
    out = s.loss(x, y, z)

    out.loss.backward(retain_graph=True)
    assert all(p.grad is None for p in d_params)  # the generator's term never lands in D's .grad
    g_alone = [p.grad.clone() for p in ge_params]
    assert sum(g.abs().sum() for g in g_alone) > 0
    s.zero_grad(set_to_none=True)

    out.aux_loss.backward(retain_graph=True)
    assert all(p.grad is None for p in ge_params)  # D's loss never reaches G or E
    d_alone = [p.grad.clone() for p in d_params]
    assert sum(g.abs().sum() for g in d_alone) > 0
    s.zero_grad(set_to_none=True)

    (out.loss + out.aux_loss).backward()  # what the engine does: one backward of the sum
    assert all(torch.equal(p.grad, g) for p, g in zip(ge_params, g_alone))
    assert all(torch.equal(p.grad, g) for p, g in zip(d_params, d_alone))


# ---- errors -------------------------------------------------------------------------------------

@pytest.mark.parametrize("params, match", [
    ({"image_shape": (1, 32, 32)}, "image_shape"),
    ({"image_shape": (64, 64)}, "image_shape"),
    ({"image_shape": (0, 64, 64)}, "image_shape"),
    ({"latent_dim": 0}, "latent_dim"),
    ({"w_dim": -1}, "w_dim"),
    ({"width": 2.5}, "width"),
    ({"use_z": "yes"}, "use_z"),
    ({"likelihood": "poisson"}, "likelihood"),
])
@pytest.mark.parametrize("name", ["vae", "gan"])
def test_bad_parameters_are_config_errors(name, params, match):
    kwargs = {"image_shape": SHAPE, "latent_dim": 5, "likelihood": "bernoulli", **TINY, **params}
    with pytest.raises(ConfigError, match=match):
        build_stage2(name, **kwargs)


@pytest.mark.parametrize("name, params", [("vae", {"beta": -1.0}), ("gan", {"adv_weight": -1}),
                                          ("gan", {"kl_weight": float("nan")}), ("gan", {"recon_weight": "1"}),
                                          ("vae", {"adv_weight": 1.0})])
def test_bad_weights_are_config_errors(name, params):
    with pytest.raises(ConfigError):
        build_stage2(name, image_shape=SHAPE, latent_dim=5, **TINY, **params)


def test_wrong_batch_shapes_are_data_errors():
    s = Stage2VAE(image_shape=SHAPE, latent_dim=5, **TINY)
    x, y, z = batch()
    with pytest.raises(DataError, match="x has shape"):
        s.loss(x[:, :, :32, :32], y, z)
    with pytest.raises(DataError, match="y has shape"):
        s.generate(torch.rand(4, 3, 64, 64), z, torch.randn(4, 3))
    with pytest.raises(DataError, match="latent_dim"):
        s.infer(x, y, z[:, :2])
    with pytest.raises(DataError, match="batch size"):
        s.loss(x, y[:2], z[:2])


def test_stage2_modules_are_plain_nn_modules():
    # no pickled state: everything a checkpoint needs is in state_dict tensors
    s = Stage2GAN(image_shape=SHAPE, latent_dim=5, **TINY)
    assert isinstance(s, nn.Module)
    assert all(isinstance(v, torch.Tensor) for v in s.state_dict().values())
    fresh = Stage2GAN(image_shape=SHAPE, latent_dim=5, **TINY)
    fresh.load_state_dict(s.state_dict())
