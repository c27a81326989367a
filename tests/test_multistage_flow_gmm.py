"""Stage-2 normalizing flow and mixture of factor analysers: likelihoods against brute force,
exact inversion, the posterior against its closed form, sampling, conditioning, training, errors,
and the combined model on 64x64 images."""
import math

import pytest
import torch
from torch.distributions import MultivariateNormal

from untwine.errors import ConfigError, DataError
from untwine.multistage import MultiStageModel, build_stage2
from untwine.multistage.gmm import LEVELS, dequantise, to_image
from untwine.multistage.mixture import ConditionalMixtureOfFactorAnalysers
from untwine.nets import build_vae


def perturb(module, scale=0.1, seed=0):
    """Random trainable parameters, so that no block is the identity it starts as."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return module


def tiny_flow(**kw):
    torch.manual_seed(0)
    params = dict(levels=2, blocks=2, hidden=8) | kw
    return build_stage2("flow", image_shape=(1, 8, 8), latent_dim=3, **params)


def eight_bit(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, LEVELS, shape, generator=g).float() / (LEVELS - 1)


# ---- flow --------------------------------------------------------------------------------------
@pytest.mark.parametrize("condition_on_z", [False, True])
def test_flow_log_density_matches_brute_force_change_of_variables(condition_on_z):
    flow = perturb(tiny_flow(condition_on_z=condition_on_z)).double()
    g = torch.Generator().manual_seed(1)
    u = 0.05 + 0.9 * torch.rand(2, 1, 8, 8, generator=g, dtype=torch.float64)
    y = torch.rand(2, 1, 8, 8, generator=g, dtype=torch.float64)
    z = torch.randn(2, 3, generator=g, dtype=torch.float64)
    got = flow.log_prob_dequantised(u, y, z)
    for i in range(2):
        def f(v):
            return flow.forward_flow(v.view(1, 1, 8, 8), y[i:i + 1], z[i:i + 1])[0].flatten()
        jac = torch.autograd.functional.jacobian(f, u[i].flatten())
        w = f(u[i].flatten())
        expected = MultivariateNormal(torch.zeros(64, dtype=torch.float64),
                                      torch.eye(64, dtype=torch.float64)).log_prob(w) + torch.linalg.slogdet(jac)[1]
        assert got[i].item() == pytest.approx(expected.item(), abs=1e-8)


def test_flow_inverse_is_exact_and_likelihood_accounts_for_the_bins():
    flow = perturb(tiny_flow())
    x, y, z = eight_bit((3, 1, 8, 8)), torch.rand(3, 1, 8, 8), torch.randn(3, 3)
    w = flow.infer(x, y, z)
    assert w.shape == (3, 64)
    assert torch.allclose(flow.generate(y, z, w), x, atol=1e-4)
    binary = (x > 0.5).float()
    assert torch.allclose(flow.reconstruct(binary, y, z), binary, atol=1e-4)
    # log P(x) bound = log p(u) - D log 256 with u = (255 x + e) / 256, e the same uniform noise
    torch.manual_seed(5)
    ll = flow.log_likelihood(x, y, z)
    torch.manual_seed(5)
    u = dequantise(x, torch.rand_like(x))
    assert torch.allclose(ll, flow.log_prob_dequantised(u, y, z) - 64 * math.log(256), atol=1e-3)
    torch.manual_seed(5)
    out = flow.loss(x, y, z)
    assert out.terms["recon"].item() == pytest.approx(-ll.mean().item(), rel=1e-6)
    assert out.terms["bpd"].item() == pytest.approx(-ll.mean().item() / (64 * math.log(2)), rel=1e-6)
    assert out.terms["kl"].item() == 0.0


def test_flow_output_depends_on_y_and_samples_are_seeded():
    flow = perturb(tiny_flow())
    y1, y2, z = torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8), torch.randn(2, 3)
    w = flow.sample_w(2, y1, z, generator=torch.Generator().manual_seed(3))
    assert w.shape == (2, 64)
    assert torch.equal(w, flow.sample_w(2, y1, z, generator=torch.Generator().manual_seed(3)))
    a, b = flow.generate(y1, z, w), flow.generate(y2, z, w)
    assert a.shape == (2, 1, 8, 8) and 0 <= a.min() and a.max() <= 1
    assert (a - b).abs().max() > 1e-3
    x = eight_bit((2, 1, 8, 8))
    u = dequantise(x)
    assert (flow.log_prob_dequantised(u, y1, z) - flow.log_prob_dequantised(u, y2, z)).abs().min() > 1e-3
    cold = build_stage2("flow", image_shape=(1, 8, 8), latent_dim=3, levels=2, blocks=1, hidden=4, temperature=0.0)
    assert torch.equal(cold.sample_w(4, y1, z), torch.zeros(4, 64))


def test_flow_is_seeded_by_torch_alone_and_leaves_numpy_rng_alone():
    import numpy as np
    np.random.seed(0)
    before = np.random.get_state()[1].copy()
    a, b = tiny_flow(), tiny_flow()
    assert np.array_equal(np.random.get_state()[1], before)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name


def nll_falls(stage2, x, y, z, steps=15, lr=3e-3):
    def nll():
        torch.manual_seed(0)   # the same dequantisation noise for both evaluations
        with torch.no_grad():
            return -stage2.log_likelihood(x, y, z).mean().item()
    before = nll()
    opt = torch.optim.Adam([p for p in stage2.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        stage2.loss(x, y, z).loss.backward()
        opt.step()
    return before, nll()


def test_flow_gradient_steps_lower_the_nll():
    flow = tiny_flow()
    x = (eight_bit((8, 1, 8, 8)) > 0.5).float()
    before, after = nll_falls(flow, x, x.clamp(0.1, 0.9), torch.randn(8, 3))
    assert after < before - 10


@pytest.mark.parametrize("params", [dict(levels=4), dict(levels=0), dict(blocks=0), dict(hidden=0),
                                    dict(alpha=0.5), dict(clamp=-1.0), dict(temperature=-1.0),
                                    dict(condition_on_z="yes"), dict(depth=3)])
def test_flow_bad_params_raise_config_error(params):
    with pytest.raises(ConfigError):
        build_stage2("flow", image_shape=(1, 8, 8), latent_dim=3, **params)


def test_flow_wrong_shapes_raise_data_error():
    flow = tiny_flow()
    with pytest.raises(DataError, match="expected"):
        flow.infer(torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16), torch.randn(2, 3))
    with pytest.raises(DataError, match="w has shape"):
        flow.generate(torch.rand(2, 1, 8, 8), torch.randn(2, 3), torch.randn(2, 63))


# ---- mixture of factor analysers ---------------------------------------------------------------
def full_covariance_mixture(mfa, context):
    """log pi(c) and the dense MultivariateNormal of every component."""
    cov = mfa.loadings @ mfa.loadings.transpose(1, 2) + torch.diag_embed(mfa.psi)
    return mfa.log_weights(context, 5), MultivariateNormal(mfa.means, cov)


@pytest.mark.parametrize("context_dim", [0, 2])
def test_mixture_log_prob_matches_dense_covariance(context_dim):
    torch.manual_seed(0)
    mfa = perturb(ConditionalMixtureOfFactorAnalysers(6, context_dim, components=3, rank=2, hidden=4), 0.5)
    x = torch.randn(5, 6)
    context = torch.randn(5, context_dim) if context_dim else None
    with torch.no_grad():
        log_pi, mvn = full_covariance_mixture(mfa, context)
        expected = torch.logsumexp(log_pi + mvn.log_prob(x[:, None, :]), 1)
        assert torch.allclose(mfa.log_prob(x, context), expected, atol=1e-4)
        if context_dim:   # the weights really depend on the context
            assert (mfa.log_weights(context) - mfa.log_weights(context.flip(0))).abs().max() > 1e-3


def test_mixture_posterior_matches_closed_form():
    torch.manual_seed(1)
    mfa = perturb(ConditionalMixtureOfFactorAnalysers(5, 2, components=3, rank=2, hidden=4), 0.5)
    x, c = torch.randn(4, 5), torch.randn(4, 2)
    with torch.no_grad():
        post = mfa.posterior(x, c)
        log_pi, mvn = full_covariance_mixture(mfa, c)
        joint = log_pi + mvn.log_prob(x[:, None, :])
        assert torch.allclose(post.log_resp, joint - torch.logsumexp(joint, 1, keepdim=True), atol=1e-4)
        # E[w | x, k] = L^T S^-1 (x - mu), Cov[w | x, k] = I - L^T S^-1 L
        s_inv = torch.linalg.inv(mvn.covariance_matrix)
        lt_s_inv = mfa.loadings.transpose(1, 2) @ s_inv
        mean = torch.einsum("krd,bkd->bkr", lt_s_inv, x[:, None, :] - mfa.means)
        assert torch.allclose(post.mean, mean, atol=1e-4)
        assert torch.allclose(post.cov, torch.eye(2) - lt_s_inv @ mfa.loadings, atol=1e-4)
        k, w = post.most_probable()
        assert torch.equal(k, joint.argmax(1)) and torch.allclose(w, mean[torch.arange(4), k], atol=1e-4)


def test_mixture_sampling_is_seeded_and_matches_the_moments():
    torch.manual_seed(2)
    mfa = perturb(ConditionalMixtureOfFactorAnalysers(3, 0, components=2, rank=1), 0.5)
    a = mfa.sample(generator=torch.Generator().manual_seed(0), n=20000)
    b = mfa.sample(generator=torch.Generator().manual_seed(0), n=20000)
    assert a.shape == (20000, 3) and torch.equal(a, b)
    with torch.no_grad():
        pi = mfa.log_weights(None, 1)[0].exp()
        cov = mfa.loadings @ mfa.loadings.transpose(1, 2) + torch.diag_embed(mfa.psi)
        mean = (pi[:, None] * mfa.means).sum(0)
        second = (pi[:, None, None] * (cov + mfa.means[:, :, None] * mfa.means[:, None, :])).sum(0)
    assert torch.allclose(a.mean(0), mean, atol=0.05)
    assert torch.allclose(torch.cov(a.T), second - mean[:, None] * mean[None], atol=0.08)
    conditional = ConditionalMixtureOfFactorAnalysers(3, 2, components=2, rank=1)
    assert conditional.sample(torch.randn(7, 2)).shape == (7, 3)


@pytest.mark.parametrize("params", [dict(dim=0), dict(context_dim=-1), dict(components=0), dict(rank=1.5),
                                    dict(init_variance=0.0), dict(min_variance=1.0, init_variance=0.5)])
def test_mixture_bad_params_raise_config_error(params):
    with pytest.raises(ConfigError):
        ConditionalMixtureOfFactorAnalysers(**(dict(dim=4) | params))


def test_mixture_bad_inputs_raise_data_error():
    mfa = ConditionalMixtureOfFactorAnalysers(4, 2, components=2, rank=1)
    with pytest.raises(DataError, match="expected"):
        mfa.log_prob(torch.randn(3, 5), torch.randn(3, 2))
    with pytest.raises(DataError, match="context"):
        mfa.log_prob(torch.randn(3, 4), None)
    with pytest.raises(DataError, match="unconditional"):
        ConditionalMixtureOfFactorAnalysers(4, 0).log_prob(torch.randn(3, 4), torch.randn(3, 2))


# ---- stage 2 "gmm" -----------------------------------------------------------------------------
def tiny_gmm(**kw):
    torch.manual_seed(0)
    params = dict(components=3, rank=2, hidden=4) | kw
    return build_stage2("gmm", image_shape=(1, 2, 2), latent_dim=3, **params)


def test_gmm_likelihood_is_the_dense_mixture_of_the_dequantised_residual():
    gmm = perturb(tiny_gmm(), 0.2)
    x, y, z = eight_bit((5, 1, 2, 2)), torch.rand(5, 1, 2, 2), torch.randn(5, 3)
    torch.manual_seed(3)
    ll = gmm.log_likelihood(x, y, z)
    torch.manual_seed(3)
    r = (dequantise(x, torch.rand_like(x)) - y).flatten(1)
    with torch.no_grad():
        log_pi, mvn = full_covariance_mixture(gmm.mixture, z)
        expected = torch.logsumexp(log_pi + mvn.log_prob(r[:, None, :]), 1) - 4 * math.log(256)
    assert torch.allclose(ll, expected, atol=1e-4)
    torch.manual_seed(3)
    out = gmm.loss(x, y, z)
    assert out.terms["bpd"].item() == pytest.approx(-ll.mean().item() / (4 * math.log(2)), rel=1e-5)
    assert out.terms["kl"].item() == 0.0


def test_gmm_infer_and_generate_carry_the_component():
    gmm = perturb(tiny_gmm(), 0.2)
    mfa = gmm.mixture
    x, y, z = eight_bit((5, 1, 2, 2)), torch.rand(5, 1, 2, 2) * 0.5 + 0.25, torch.randn(5, 3)
    w = gmm.infer(x, y, z)
    assert w.shape == (5, gmm.w_dim) == (5, 3 + 2)
    post = mfa.posterior((dequantise(x) - y).flatten(1), z)
    k, latent = post.most_probable()
    assert torch.allclose(w[:, :3], post.log_resp.exp()) and torch.allclose(w[:, 3:], latent)
    with torch.no_grad():
        expected = to_image(y + (mfa.means[k] + (mfa.loadings[k] @ latent[:, :, None])[..., 0]).view(5, 1, 2, 2))
    assert torch.allclose(gmm.generate(y, z, w), expected, atol=1e-6)
    # y shifts the output one for one where nothing is clipped
    shift = torch.full_like(y, 0.01)
    moved = gmm.generate(y + shift, z, w) - gmm.generate(y, z, w)
    inside = (expected > 0.05) & (expected < 0.95)
    assert torch.allclose(moved[inside], torch.full_like(moved[inside], 0.01 * 256 / 255), atol=1e-5)
    s = gmm.sample_w(5, y, z, generator=torch.Generator().manual_seed(4))
    assert torch.equal(s, gmm.sample_w(5, y, z, generator=torch.Generator().manual_seed(4)))
    assert torch.equal(s[:, :3].sum(1), torch.ones(5)) and set(s[:, :3].unique().tolist()) == {0.0, 1.0}
    with pytest.raises(DataError, match="component weights"):
        gmm.generate(y, z, w[:, :4])


def test_gmm_gradient_steps_lower_the_nll():
    gmm = build_stage2("gmm", image_shape=(1, 8, 8), latent_dim=3, components=3, rank=2)
    x = (eight_bit((16, 1, 8, 8)) > 0.5).float()
    before, after = nll_falls(gmm, x, x.clamp(0.2, 0.8), torch.randn(16, 3), steps=20, lr=2e-2)
    assert after < before - 10


@pytest.mark.parametrize("params", [dict(components=0), dict(rank=-1), dict(hidden=-1), dict(temperature=-0.5),
                                    dict(init_variance=0.0), dict(condition_on_z=1), dict(likelihood="poisson"),
                                    dict(mixture=3)])
def test_gmm_bad_params_raise_config_error(params):
    with pytest.raises(ConfigError):
        build_stage2("gmm", image_shape=(1, 4, 4), latent_dim=3, **params)


def test_gmm_without_z_is_a_plain_mixture():
    gmm = tiny_gmm(condition_on_z=False)
    assert gmm.mixture.context_dim == 0
    x, y = eight_bit((2, 1, 2, 2)), torch.rand(2, 1, 2, 2)
    torch.manual_seed(0)
    a = gmm.log_likelihood(x, y, torch.randn(2, 3))
    torch.manual_seed(0)
    assert torch.equal(a, gmm.log_likelihood(x, y, torch.randn(2, 3) * 5))


# ---- the combined model on 64x64 images ---------------------------------------------------------
@pytest.mark.parametrize("variant, params", [("flow", dict(levels=3, blocks=1, hidden=4)),
                                             ("gmm", dict(components=2, rank=2))])
def test_combined_model_runs_at_64x64(variant, params):
    torch.manual_seed(0)
    model = MultiStageModel(build_vae("conv64", latent_dim=4),
                            build_stage2(variant, image_shape=(1, 64, 64), latent_dim=4, **params))
    x = (torch.rand(2, 1, 64, 64) > 0.7).float()
    out = model.stage2_loss(x)
    assert torch.isfinite(out.loss) and out.loss.requires_grad and {"recon", "kl", "bpd"} <= set(out.terms)
    recon = model.reconstruct(x)
    assert recon.shape == x.shape and 0 <= recon.min() and recon.max() <= 1
    if variant == "flow":   # the flow inverts exactly, whatever stage 1 says
        assert torch.allclose(recon, x, atol=1e-4)
    samples = model.sample(3, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (3, 1, 64, 64) and torch.isfinite(samples).all()
    assert model.traverse(x, dim=1, steps=2).shape == (2, 2, 1, 64, 64)
    bounds = model.bounds(x, samples=3)
    assert set(bounds) == {"stage1", "combined"}
    assert all(torch.isfinite(v).all() and v.shape == (2,) for b in bounds.values() for v in b.values())
    # the combined weight: log p2(x | g1(z)) (one dequantisation draw) + log p(z) - log q(z | x), z sampled
    torch.manual_seed(3)
    got = model.log_weights(x, samples=1)["combined"][0]
    torch.manual_seed(3)
    mu, logvar = model.stage1.encode(x)
    std = torch.exp(0.5 * logvar)
    z = mu + torch.randn(mu.shape) * std
    y = torch.sigmoid(model.stage1.decode(z))
    normal = torch.distributions.Normal
    by_hand = (model.stage2.log_likelihood(x, y, z) + normal(0.0, 1.0).log_prob(z).sum(1)
               - normal(mu, std).log_prob(z).sum(1))
    assert torch.allclose(got, by_hand, rtol=1e-5, atol=1e-2)
    # stage 2's own density given stage 1's reading y = g1(mu(x)): a conditional, not a bound on log p(x)
    torch.manual_seed(4)
    given_y = model.log_likelihood_given_y(x)
    torch.manual_seed(4)
    assert torch.allclose(given_y, model.stage2.log_likelihood(x, model.stage1_output(x)[1], mu))


@pytest.mark.parametrize("variant, params", [("flow", dict(levels=2, blocks=2, hidden=4)), ("gmm", dict(rank=2))])
def test_weights_round_trip_through_safetensors(variant, params, tmp_path):
    # the flow's fixed channel permutations are part of the state: a fresh flow with other
    # permutations must give the same w once the weights are loaded
    from safetensors.torch import load_file, save_file
    torch.manual_seed(0)
    a = perturb(build_stage2(variant, image_shape=(1, 8, 8), latent_dim=3, **params))
    torch.manual_seed(1)
    b = build_stage2(variant, image_shape=(1, 8, 8), latent_dim=3, **params)
    save_file(a.state_dict(), tmp_path / "w.safetensors")
    b.load_state_dict(load_file(tmp_path / "w.safetensors"))
    x, y, z = eight_bit((2, 1, 8, 8)), torch.rand(2, 1, 8, 8), torch.randn(2, 3)
    assert torch.equal(a.infer(x, y, z), b.infer(x, y, z))


@pytest.mark.parametrize("variant, params", [("flow", dict(levels=2, blocks=1, hidden=4)), ("gmm", dict(rank=2))])
def test_one_bit_dequantisation_for_binary_images(variant, params):
    # bits=1: u = (x + e) / 2 and the bin width is 1/2, so log P = log p(u) - D log 2
    torch.manual_seed(0)
    one = perturb(build_stage2(variant, image_shape=(1, 8, 8), latent_dim=3, bits=1, **params))
    torch.manual_seed(0)
    eight = perturb(build_stage2(variant, image_shape=(1, 8, 8), latent_dim=3, **params))
    x, y, z = (eight_bit((2, 1, 8, 8)) > 0.5).float(), torch.rand(2, 1, 8, 8), torch.randn(2, 3)
    if variant == "flow":   # exact inversion at 1 bit too
        assert torch.allclose(one.reconstruct(x, y, z), x, atol=1e-4)
    torch.manual_seed(7)
    ll1 = one.log_likelihood(x, y, z)
    torch.manual_seed(7)
    e = torch.rand_like(x)
    # the same density evaluated at the 1-bit u, through the 8-bit model's pieces
    u = dequantise(x, e, levels=2)
    if variant == "flow":
        density = eight.log_prob_dequantised(u, y, z)
    else:
        density = eight.mixture.log_prob((u - y).flatten(1), z)
    assert torch.allclose(ll1, density - 64 * math.log(2), atol=1e-3)
    with pytest.raises(ConfigError, match="bits"):
        build_stage2(variant, image_shape=(1, 8, 8), latent_dim=3, bits=0)


# ---- the bit depth comes from the dataset -----------------------------------------------------------
def test_bits_auto_is_the_datasets_bit_depth():
    # binary dSprites scored as 8-bit data costs D log 128 = 19,873 nats against the Bernoulli bound
    import numpy as np
    from untwine.data import get_dataset
    from untwine.data.arrays import ArrayGroundTruthData, pack_binary_images
    from untwine.data.factors import FactorSpace
    from untwine.multistage.build import build_multistage
    from untwine.multistage.gmm import data_bits
    from untwine.train import load_config
    from untwine.train.engine import build_vae_model

    dsprites, shapes3d = get_dataset("dsprites"), get_dataset("shapes3d")
    space = FactorSpace.from_values({"a": np.arange(2.0)})
    assert data_bits(dsprites) == 1 and data_bits(shapes3d) == 8
    assert data_bits(ArrayGroundTruthData("b", space, pack_binary_images(np.ones((2, 4, 4), np.uint8)),
                                          image_shape=(1, 4, 4), packed=True)) == 1
    assert data_bits(ArrayGroundTruthData("g", space, np.zeros((2, 4, 4), np.uint8))) == 8
    small = {"flow": ["stage2.levels=1", "stage2.blocks=1", "stage2.hidden=2"],
             "gmm": ["stage2.components=1", "stage2.rank=1", "stage2.hidden=2"]}
    for variant in ("flow", "gmm"):
        for preset in (f"ms-{variant}", f"ms-{variant}-full"):
            assert load_config(preset, ["stage1=s1"]).stage2.params["bits"] == "auto", preset
        for data, s1, bits in ((dsprites, "dsprites-betatcvae", 1), (shapes3d, "shapes3d-betatcvae", 8)):
            s1cfg = load_config(s1)
            weights = build_vae_model(s1cfg, data.image_shape).state_dict()
            cfg = load_config(f"ms-{variant}", ["stage1=s1", *small[variant]])
            model = build_multistage(cfg, data, s1cfg, weights)
            assert (model.stage2.bits, model.stage2.quant_levels) == (bits, 2 ** bits), (variant, data.name)
            assert cfg.stage2.params["bits"] == "auto"   # the run's config keeps "auto"; the model resolves it
            explicit = build_multistage(load_config(f"ms-{variant}", ["stage1=s1", "stage2.bits=8", *small[variant]]),
                                        data, s1cfg, weights)
            assert explicit.stage2.bits == 8   # an explicit depth is kept
        with pytest.raises(ConfigError, match="bits='auto'.*dataset"):
            build_stage2(variant, image_shape=(1, 8, 8), latent_dim=3, bits="auto")
