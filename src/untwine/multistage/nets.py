"""Conditional 64x64 convolutional networks shared by the stage-2 VAE and GAN.

    encoder = ConditionalEncoder(channels=1, w_dim=16)            # q(w | x, y): (mu, logvar)
    decoder = ConditionalDecoder(channels=1, w_dim=16, residual="logit")
    logits = decoder(y, w)                                         # logit(y) + delta(y, w)
    critic = ConditionalDiscriminator(channels=1)                  # D(x, y): one logit per image

The decoder injects y at every resolution, not only at its input: a U-Net-like contracting path
(`ConditionPyramid`) encodes y to feature maps at 32, 16, 8 and 4 pixels; at 4, 8 and 16 pixels a
1x1 "skip" convolution turns them into a spatial FiLM (h <- h * (1 + gamma) + beta) of the decoder's
feature maps, which grow from w (dense -> 4x4) by 4x4 stride-2 transposed convolutions, and at 32
pixels they are added to them. This keeps the decoder's channel counts those of the stage-1 conv64
decoder (concatenation would double the cost of every transposed convolution), so that a training
step costs about 1.3x a stage-1 step on the CPU. z, when given, modulates each resolution by a
per-channel FiLM.

The output is a residual on y, delta's last layer initialised to zero: an untrained decoder gives
stage 1's image exactly (Bernoulli: logits = logit(clamp(y, eps, 1 - eps)) + delta; Gaussian:
mean = y + delta), so stage 2 starts where stage 1 ends and only learns what stage 1 lacks.
These architectures are ours (the paper's could not be read offline; DESIGN section 7).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from untwine.errors import ConfigError, DataError
from untwine.nets.conv import IMAGE_SIZE, glorot_init
from untwine.objectives.base import float32_math

#: y is clamped to [eps, 1 - eps] before the logit: bounds the residual base at +-13.8 nats per pixel
#: (1 - 1e-6 is still exact in float32; a smaller eps would round to 1 and give an infinite logit)
RESIDUAL_EPS = 1e-6
RESIDUALS = ("logit", "identity")


def positive_int(owner: str, name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{owner}: {name}={value!r}; expected a positive integer")
    return value


def check_image_shape(owner: str, image_shape) -> tuple[int, int, int]:
    """(C, 64, 64): the conv networks here are built for 64x64 images only."""
    shape = tuple(image_shape) if isinstance(image_shape, (tuple, list)) else None
    if (shape is None or len(shape) != 3 or any(isinstance(d, bool) or not isinstance(d, int) for d in shape)
            or shape[0] < 1 or shape[1:] != (IMAGE_SIZE, IMAGE_SIZE)):
        raise ConfigError(f"{owner}: image_shape={image_shape!r}; expected (channels, {IMAGE_SIZE}, {IMAGE_SIZE}) "
                          f"(its conv networks take {IMAGE_SIZE}x{IMAGE_SIZE} images; resize the data)")
    return shape


def check_batch(owner: str, image_shape: tuple[int, int, int], latent_dim: int, x: torch.Tensor | None,
                y: torch.Tensor, z: torch.Tensor) -> None:
    """x (when given) and y shaped (B, *image_shape), z (B, latent_dim), one batch size."""
    for label, t in (("x", x), ("y", y)):
        if t is not None and (t.dim() != 4 or tuple(t.shape[1:]) != image_shape):
            raise DataError(f"{owner}: {label} has shape {tuple(t.shape)}; expected (B, {', '.join(map(str, image_shape))})"
                            " as the stage 2 was built for (check image_shape against the dataset)")
    if z.dim() != 2 or z.shape[1] != latent_dim or z.shape[0] != y.shape[0] or (x is not None and len(x) != len(y)):
        raise DataError(f"{owner}: got x {None if x is None else tuple(x.shape)}, y {tuple(y.shape)}, z {tuple(z.shape)};"
                        f" expected one batch size and z of shape (B, {latent_dim}) (the stage-1 latent_dim)")


def _concat(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, y.to(x.dtype)], dim=1)


class ConditionalEncoder(nn.Module):
    """q(w | x, y): conv64-style encoder on the channel-concat of x and y -> (mu, logvar), (B, w_dim).

    Convolutions width/2-4-s2, width/2-4-s2, 2width-2-s2, 2width-2-s2 (64 -> 4 pixels), ReLU,
    dense 8*width, linear Gaussian heads: the stage-1 conv64 encoder at width=32, except for half
    the channels at 32 and 16 pixels, where nearly all of its CPU time goes (it only has to summarise
    the detail in w_dim numbers; the decoder keeps the full width)."""

    def __init__(self, channels: int, w_dim: int, width: int = 32):
        super().__init__()
        half = max(1, width // 2)
        self.features = nn.Sequential(
            nn.Conv2d(2 * channels, half, 4, stride=2, padding=1), nn.ReLU(inplace=True),  # 32x32
            nn.Conv2d(half, half, 4, stride=2, padding=1), nn.ReLU(inplace=True),  # 16x16
            nn.Conv2d(half, 2 * width, 2, stride=2), nn.ReLU(inplace=True),  # 8x8
            nn.Conv2d(2 * width, 2 * width, 2, stride=2), nn.ReLU(inplace=True),  # 4x4
            nn.Flatten(),
            nn.Linear(2 * width * 16, 8 * width), nn.ReLU(inplace=True),
        )
        self.mean = nn.Linear(8 * width, w_dim)
        self.logvar = nn.Linear(8 * width, w_dim)
        glorot_init(self)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(_concat(x, y))
        return self.mean(h), self.logvar(h)


class ConditionPyramid(nn.Module):
    """The contracting path of a U-Net on y: feature maps at 4, 8, 16 and 32 pixels (coarse first).
    Cheap on purpose (2x2 stride-2 convolutions after the first, half width at 16 pixels): y itself
    already enters the output at full resolution as the residual's base."""

    def __init__(self, channels: int, width: int = 32):
        super().__init__()
        half = max(1, width // 2)
        self.channels = (2 * width, 2 * width, half, width)  # at 4, 8, 16, 32 pixels
        self.levels = nn.ModuleList([
            nn.Sequential(nn.Conv2d(channels, width, 4, stride=2, padding=1), nn.ReLU(inplace=True)),  # 32
            nn.Sequential(nn.Conv2d(width, half, 2, stride=2), nn.ReLU(inplace=True)),  # 16
            nn.Sequential(nn.Conv2d(half, 2 * width, 2, stride=2), nn.ReLU(inplace=True)),  # 8
            nn.Sequential(nn.Conv2d(2 * width, 2 * width, 2, stride=2), nn.ReLU(inplace=True)),  # 4
        ])

    def forward(self, y: torch.Tensor) -> list[torch.Tensor]:
        features = []
        h = y
        for level in self.levels:
            h = level(h)
            features.append(h)
        return features[::-1]


class ConditionalDecoder(nn.Module):
    """p(x | y, w[, z]): likelihood parameters (B, C, 64, 64), float32, as a zero-initialised residual
    on y (residual="logit": Bernoulli logits; "identity": Gaussian means). `z_dim` > 0 adds a
    per-channel FiLM of every resolution by the stage-1 code z."""

    def __init__(self, channels: int, w_dim: int, width: int = 32, z_dim: int = 0, residual: str = "logit"):
        super().__init__()
        if residual not in RESIDUALS:
            raise ConfigError(f"ConditionalDecoder: residual={residual!r}; expected one of {RESIDUALS}")
        self.residual = residual
        self.pyramid = ConditionPyramid(channels, width)
        ch = (2 * width, 2 * width, width, width)  # at 4, 8, 16, 32 pixels: the stage-1 decoder's at width=32
        self.channels = ch
        self.dense = nn.Sequential(
            nn.Linear(w_dim, 8 * width), nn.ReLU(inplace=True),
            nn.Linear(8 * width, ch[0] * 16), nn.ReLU(inplace=True),
            nn.Unflatten(1, (ch[0], 4, 4)),
        )
        # y's features -> (gamma, beta) at 4, 8 and 16 pixels; at 32 they are added as they are (a
        # 1x1 convolution at 32x32 would cost a fifth of the whole training step on the CPU)
        self.skips = nn.ModuleList([nn.Conv2d(c_y, 2 * c, 1) for c_y, c in zip(self.pyramid.channels, ch[:-1])])
        self.ups = nn.ModuleList([nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1)  # 4->8->16->32
                                  for c_in, c_out in zip(ch[:-1], ch[1:])])
        self.head = nn.ConvTranspose2d(ch[-1], channels, 4, stride=2, padding=1)  # 32 -> 64: delta
        self.z_film = nn.Linear(z_dim, 2 * sum(ch)) if z_dim > 0 else None
        glorot_init(self)
        # zero delta: an untrained stage 2 reproduces stage 1 exactly
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def base(self, y: torch.Tensor) -> torch.Tensor:
        """The residual's base: stage 1's own likelihood parameters, float32."""
        y = y.float()
        return torch.logit(y.clamp(RESIDUAL_EPS, 1.0 - RESIDUAL_EPS)) if self.residual == "logit" else y

    def forward(self, y: torch.Tensor, w: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        delta = self.delta(self.pyramid(y), w, z)
        with float32_math(delta):
            return self.base(y) + delta.float()

    def delta(self, features: list[torch.Tensor], w: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """The residual from y's pyramid features (coarse first), w and z: (B, C, 64, 64)."""
        z_mod = None
        if self.z_film is not None:
            if z is None:
                raise ConfigError("ConditionalDecoder was built with z_dim > 0 (use_z=True) and needs z")
            z_mod = self.z_film(z.to(w.dtype)).split([2 * c for c in self.channels], dim=1)
        h = self.dense(w)
        for i, f in enumerate(features):
            if i < len(self.skips):
                gamma, beta = self.skips[i](f).chunk(2, dim=1)
                h = h * (1.0 + gamma) + beta
            else:
                h = h + f
            if z_mod is not None:
                gz, bz = z_mod[i][:, :, None, None].chunk(2, dim=1)
                h = h * (1.0 + gz) + bz
            h = torch.relu(h)
            if i < len(self.ups):
                h = torch.relu(self.ups[i](h))
        return self.head(h)


class ConditionalDiscriminator(nn.Module):
    """D(x, y): conv on the channel-concat of x and y, spectral-normalised (Miyato et al. 2018) for a
    stable non-saturating game, LeakyReLU(0.2); convolutions width, width, 2width, 2width, all 4-s2
    (64 -> 4 pixels), then one linear logit per image, shape (B,)."""

    def __init__(self, channels: int, width: int = 32):
        super().__init__()
        widths = [2 * channels, width, width, 2 * width, 2 * width]
        layers: list[nn.Module] = []
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.logit = nn.Linear(widths[-1] * 16, 1)
        glorot_init(self)
        for layer in [*self.features, self.logit]:
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                spectral_norm(layer)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.logit(self.features(_concat(x, y))).squeeze(1)
