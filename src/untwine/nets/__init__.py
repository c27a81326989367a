"""Networks: the 64x64 convolutional pair of disentanglement_lib, an MLP pair, likelihoods.

    model = build_vae("conv64", in_channels=1, latent_dim=10, likelihood="bernoulli")
    model = build_vae("mlp", in_dim=12, latent_dim=4, likelihood="gaussian", hidden=(128, 128))
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from untwine.errors import ConfigError
from untwine.nets.base import VAE, VAEOutput
from untwine.nets.conv import IMAGE_SIZE, Conv64Decoder, Conv64Encoder
from untwine.nets.likelihoods import BernoulliLikelihood, GaussianLikelihood, build_likelihood
from untwine.nets.mlp import MLPDecoder, MLPEncoder

ARCHITECTURES = ("conv64", "mlp")
DEFAULT_MLP_HIDDEN = (256, 256)

__all__ = [
    "ARCHITECTURES", "VAE", "VAEOutput", "build_vae", "build_likelihood", "BernoulliLikelihood",
    "GaussianLikelihood", "Conv64Encoder", "Conv64Decoder", "MLPEncoder", "MLPDecoder", "IMAGE_SIZE",
]


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"build_vae: {name}={value!r}; expected a positive integer")
    return value


def build_vae(
    arch: str = "conv64",
    *,
    in_channels: int = 1,
    in_dim: int | Sequence[int] | None = None,
    latent_dim: int = 10,
    likelihood: str | nn.Module = "bernoulli",
    hidden: Sequence[int] | None = None,
) -> VAE:
    """Build a VAE.

    arch="conv64": disentanglement_lib's conv_encoder/deconv_decoder for (B, in_channels, 64, 64)
    images; `in_dim` and `hidden` must be None. arch="mlp": fully connected pair for data of shape
    `in_dim` (an int for (B, in_dim) tables, or a shape such as (1, 64, 64)), hidden widths `hidden`
    (default (256, 256)) mirrored in the decoder. `likelihood` is "bernoulli" (decoder gives logits),
    "gaussian" (decoder gives means, unit variance) or a likelihood module, e.g.
    GaussianLikelihood(variance="learned").
    """
    latent_dim = _positive_int("latent_dim", latent_dim)
    lik = likelihood if isinstance(likelihood, nn.Module) else build_likelihood(likelihood)
    if arch == "conv64":
        in_channels = _positive_int("in_channels", in_channels)
        if in_dim is not None or hidden is not None:
            raise ConfigError(
                f"build_vae('conv64') has a fixed architecture; got in_dim={in_dim!r}, hidden={hidden!r}: "
                "remove them, or use arch='mlp' for a configurable network"
            )
        encoder = Conv64Encoder(in_channels, latent_dim)
        decoder = Conv64Decoder(in_channels, latent_dim)
    elif arch == "mlp":
        if in_dim is None:
            raise ConfigError("build_vae('mlp') needs in_dim: the number of input features (or the data shape)")
        shape = (in_dim,) if isinstance(in_dim, int) else tuple(in_dim)
        for d in shape:
            _positive_int("in_dim", d)
        widths = DEFAULT_MLP_HIDDEN if hidden is None else tuple(hidden)
        for w in widths:
            _positive_int("hidden", w)
        encoder = MLPEncoder(shape, latent_dim, widths)
        decoder = MLPDecoder(shape, latent_dim, widths)
    else:
        raise ConfigError(f"unknown architecture {arch!r}; expected one of {ARCHITECTURES}")
    return VAE(encoder, decoder, lik, latent_dim)


def build_vae_from_config(model_cfg, image_shape: tuple[int, ...], likelihood: nn.Module | None = None,
                          data_name: str = "the dataset") -> VAE:
    """The single-stage VAE of a config's `model` section (arch, latent_dim, likelihood, hidden) for
    data of `image_shape`; `likelihood` (a module a dataset supplies, e.g. a table's mixed
    likelihood) replaces model_cfg.likelihood."""
    m = model_cfg
    lik = likelihood if likelihood is not None else m.likelihood
    if lik == "mixed":
        raise ConfigError(f"model.likelihood=mixed is a table's likelihood, supplied by table data; dataset "
                          f"{data_name!r} supplies none: use bernoulli or gaussian")
    if m.arch == "conv64":
        if len(image_shape) != 3 or tuple(image_shape[1:]) != (64, 64):
            raise ConfigError(f"model.arch=conv64 needs 64x64 images; dataset {data_name!r} has shape "
                              f"{tuple(image_shape)} (C, H, W); use model.arch=mlp")
        return build_vae("conv64", in_channels=image_shape[0], latent_dim=m.latent_dim, likelihood=lik)
    return build_vae(m.arch, in_dim=tuple(image_shape), latent_dim=m.latent_dim, likelihood=lik, hidden=m.hidden)
