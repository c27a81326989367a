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
    ll = s.log_likelihood(x, y, z)
    by_hand = -GaussianLikelihood().nll(s.decoder(y, mu), x) - kl
    assert ll.shape == (4,)
    assert torch.allclose(ll, by_hand, rtol=1e-6)
    a = s.log_likelihood(x, y, z, samples=3, generator=torch.Generator().manual_seed(3))
    b = s.log_likelihood(x, y, z, samples=3, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    draws = [mu + torch.randn(mu.shape, generator=g) * torch.exp(0.5 * logvar) for _ in range(3)]
    mc = torch.stack([-GaussianLikelihood().nll(s.decoder(y, w), x) for w in draws]).mean(0) - kl
    assert torch.equal(a, b) and torch.allclose(a, mc, rtol=1e-6)
    with pytest.raises(ConfigError, match="samples"):
        s.log_likelihood(x, y, z, samples=-1)


def test_combined_elbo_of_untrained_vae_is_stage1_minus_kl_w():
    torch.manual_seed(0)
    model = MultiStageModel(build_vae("conv64", in_channels=1, latent_dim=5),
                            Stage2VAE(image_shape=SHAPE, latent_dim=5, **TINY)).eval()
    x, _, _ = batch()
    e = model.elbo(x)
    z, y = model.stage1_output(x)
    mu, logvar = model.stage2.encoder(x, y)
    kl_w = (0.5 * (mu ** 2 + logvar.exp() - logvar - 1)).sum(1)
    # same nats as stage 1: the untrained stage 2 only adds its (small) KL of w
    assert torch.allclose(e["combined"], e["stage1"] - kl_w, rtol=1e-5)


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
