"""The objective protocol the training engine drives.

One objective = one small class. `forward(model, x, beta, step)` returns an `ObjectiveOutput`:
`loss` is minimised by the VAE's optimiser; `terms` are detached scalars for logging and always
include "recon" and "kl" (KL summed over latent dimensions, mean over the batch: what beta
controllers observe); `aux_loss`, when not None, is minimised by a second optimiser over
`auxiliary_parameters()` (FactorVAE's discriminator) and must not reach the encoder.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from untwine.nets.base import VAE


@dataclass
class ObjectiveOutput:
    loss: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    aux_loss: torch.Tensor | None = None


class Objective(nn.Module):
    #: True when the objective has a KL weight that a beta controller may set
    has_kl_weight: bool = True

    def forward(self, model: VAE, x: torch.Tensor, beta: float | None = None, step: int = 0) -> ObjectiveOutput:
        """`beta` overrides the objective's own KL weight when a controller drives it."""
        raise NotImplementedError

    def auxiliary_parameters(self) -> list[nn.Parameter]:
        return []


# ---------------------------------------------------------------------------------------------
# Shared pieces of every objective (additive). All loss arithmetic runs in float32 with autocast
# off: a bf16 encoder is fine, a bf16 KL or log-sum-exp is not.

import math  # noqa: E402

from untwine.errors import ConfigError  # noqa: E402
from untwine.nets.base import VAEOutput  # noqa: E402

LOG_2PI = math.log(2.0 * math.pi)


def float32_math(x: torch.Tensor) -> torch.autocast:
    """Context that switches autocast off on x's device (use with float32 tensors)."""
    return torch.autocast(device_type=x.device.type, enabled=False)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, 1)) per example and dimension, shape (B, D):
    0.5 * (mu^2 + exp(logvar) - logvar - 1)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1.0)


def gaussian_log_density(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, exp(logvar)) elementwise (broadcasting)."""
    return -0.5 * ((z - mu).pow(2) * torch.exp(-logvar) + logvar + LOG_2PI)


@dataclass
class VAETerms:
    """One forward pass and its float32 basics: `recon` is the batch mean of the summed nll,
    `kl_dims` the (B, D) KL to the prior, `mu`, `logvar`, `z` float32 copies of the encoder output."""

    out: VAEOutput
    recon: torch.Tensor
    kl_dims: torch.Tensor
    mu: torch.Tensor
    logvar: torch.Tensor
    z: torch.Tensor

    @property
    def kl(self) -> torch.Tensor:
        """KL summed over latent dimensions, mean over the batch."""
        return self.kl_dims.sum(1).mean()


def vae_terms(model: VAE, x: torch.Tensor) -> VAETerms:
    """Run the model on x and compute reconstruction and KL (float32, autocast off)."""
    out = model(x)
    recon = model.likelihood.nll(out.x_params, x).mean()
    with float32_math(x):
        mu, logvar, z = out.mu.float(), out.logvar.float(), out.z.float()
        return VAETerms(out, recon, gaussian_kl(mu, logvar), mu, logvar, z)


def check_weight(owner: str, name: str, value) -> float:
    """A loss weight: a finite number >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"{owner}: {name}={value!r}; expected a finite number >= 0")
    return float(value)


def detached_terms(**terms: torch.Tensor) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in terms.items()}
