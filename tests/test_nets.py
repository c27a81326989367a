"""Networks and likelihoods: dlib's conv64 shapes and parameter counts, MLP pair, nll values."""
import math

import pytest
import torch
import torch.nn.functional as F

from untwine.errors import ConfigError
from untwine.nets import GaussianLikelihood, build_likelihood, build_vae


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def dlib_encoder_params(c, latent):
    # conv_encoder: conv 32-4, 32-4, 64-2, 64-2, dense 256 on 4*4*64, two dense heads.
    conv = (4 * 4 * c + 1) * 32 + (4 * 4 * 32 + 1) * 32 + (2 * 2 * 32 + 1) * 64 + (2 * 2 * 64 + 1) * 64
    return conv + (1024 + 1) * 256 + 2 * (256 + 1) * latent


def dlib_decoder_params(c, latent):
    # deconv_decoder: dense 256, dense 1024, deconv 64-4, 32-4, 32-4, c-4.
    dense = (latent + 1) * 256 + (256 + 1) * 1024
    return dense + (16 * 64 + 1) * 64 + (16 * 64 + 1) * 32 + (16 * 32 + 1) * 32 + (16 * 32 + 1) * c


@pytest.mark.parametrize("channels", [1, 3])
def test_conv64_shapes_and_parameter_counts_match_dlib(channels):
    model = build_vae("conv64", in_channels=channels, latent_dim=10)
    assert n_params(model.encoder) == dlib_encoder_params(channels, 10)
    assert n_params(model.decoder) == dlib_decoder_params(channels, 10)
    assert dlib_encoder_params(1, 10) == 309204  # worked out by hand once
    x = torch.rand(5, channels, 64, 64)
    sizes = []
    hooks = [m.register_forward_hook(lambda m, i, o: sizes.append(tuple(o.shape[1:])))
             for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    out = model(x)
    for h in hooks:
        h.remove()
    assert sizes == [(32, 32, 32), (32, 16, 16), (64, 8, 8), (64, 4, 4),
                     (64, 8, 8), (32, 16, 16), (32, 32, 32), (channels, 64, 64)]
    assert out.x_params.shape == x.shape
    assert out.mu.shape == out.logvar.shape == out.z.shape == (5, 10)


def test_conv64_training_samples_and_eval_uses_mean():
    torch.manual_seed(0)
    model = build_vae("conv64")
    x = torch.rand(3, 1, 64, 64)
    model.train()
    out = model(x)
    assert not torch.allclose(out.z, out.mu)
    model.eval()
    out = model(x)
    assert torch.equal(out.z, out.mu)
    assert torch.equal(model.representation(x), out.mu)


def test_conv64_channels_last_and_bf16_autocast():
    torch.manual_seed(0)
    model = build_vae("conv64", in_channels=3).eval()
    x = torch.rand(4, 3, 64, 64)
    ref = model(x)
    ref_nll = model.likelihood.nll(ref.x_params, x)
    model = model.to(memory_format=torch.channels_last)
    xc = x.contiguous(memory_format=torch.channels_last)
    out = model(xc)
    torch.testing.assert_close(out.x_params, ref.x_params, rtol=1e-4, atol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(xc)
        nll = model.likelihood.nll(out.x_params, xc)
    assert out.x_params.dtype == torch.bfloat16
    assert nll.dtype == torch.float32 and nll.shape == (4,)
    # bf16 network, float32 loss: close to the float32 value (a few parts in a hundred)
    torch.testing.assert_close(nll, ref_nll, rtol=3e-2, atol=0)


def test_bernoulli_nll_by_hand():
    lik = build_likelihood("bernoulli")
    logits = torch.tensor([[[0.0, 2.0]], [[-1.0, 3.0]]])
    x = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    expected = [math.log(2) + math.log(1 + math.e ** 2), math.log(1 + math.e ** -1) + math.log(1 + math.e ** -3)]
    torch.testing.assert_close(lik.nll(logits, x), torch.tensor(expected))
    # equals the library BCE summed per example
    ref = F.binary_cross_entropy(torch.sigmoid(logits), x, reduction="none").sum((1, 2))
    torch.testing.assert_close(lik.nll(logits, x), ref)


def test_gaussian_nll_fixed_variance_by_hand():
    x = torch.tensor([[1.0, 2.0]])
    mean = torch.zeros(1, 2)
    unit = build_likelihood("gaussian")
    torch.testing.assert_close(unit.nll(mean, x), torch.tensor([2.5 + math.log(2 * math.pi)]))
    wide = GaussianLikelihood(sigma=2.0)
    expected = 0.5 * (5 / 4) + math.log(4) + math.log(2 * math.pi)
    torch.testing.assert_close(wide.nll(mean, x), torch.tensor([expected]))
    assert list(wide.parameters()) == []


def test_gaussian_learned_variance_is_trained_and_optimal_at_the_mse():
    lik = GaussianLikelihood(variance="learned")
    model = build_vae("mlp", in_dim=4, latent_dim=2, likelihood=lik)
    assert any(p is lik.log_var for p in model.parameters())
    mean = torch.zeros(3, 4)
    x = torch.arange(12, dtype=torch.float32).reshape(3, 4) / 10
    mse = float((x ** 2).mean())
    with torch.no_grad():
        lik.log_var.fill_(math.log(mse))
    lik.nll(mean, x).sum().backward()
    assert abs(float(lik.log_var.grad)) < 1e-4  # d nll / d log_var = 0 at sigma^2 = MSE


def test_likelihood_rejects_shape_mismatch_and_unknown_names():
    with pytest.raises(ConfigError, match="shape"):
        build_likelihood("bernoulli").nll(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ConfigError, match="unknown likelihood"):
        build_likelihood("poisson")
    with pytest.raises(ConfigError, match="variance"):
        GaussianLikelihood(variance="per-pixel")


def test_mlp_pair_shapes_and_mirrored_widths():
    model = build_vae("mlp", in_dim=7, latent_dim=3, likelihood="gaussian", hidden=(32, 16))
    x = torch.randn(6, 7)
    out = model(x)
    assert out.x_params.shape == (6, 7) and out.mu.shape == (6, 3)
    enc = [m.out_features for m in model.encoder.modules() if isinstance(m, torch.nn.Linear)]
    dec = [m.out_features for m in model.decoder.modules() if isinstance(m, torch.nn.Linear)]
    assert enc == [32, 16, 3, 3] and dec == [16, 32, 7]
    image_model = build_vae("mlp", in_dim=(1, 8, 8), latent_dim=2)
    assert image_model(torch.rand(2, 1, 8, 8)).x_params.shape == (2, 1, 8, 8)


def test_build_vae_errors_name_the_problem():
    with pytest.raises(ConfigError, match="unknown architecture"):
        build_vae("resnet")
    with pytest.raises(ConfigError, match="in_dim"):
        build_vae("mlp")
    with pytest.raises(ConfigError, match="fixed architecture"):
        build_vae("conv64", hidden=(10,))
    with pytest.raises(ConfigError, match="latent_dim"):
        build_vae("conv64", latent_dim=0)
