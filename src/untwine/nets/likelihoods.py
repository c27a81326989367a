"""Decoder likelihoods: per-example negative log-likelihood, always computed in float32.

`nll(x_params, x)` returns shape (B,): the negative log-likelihood of each example, summed over
every non-batch dimension (pixels and channels, or table columns). Objectives average it over the
batch. Both likelihoods switch autocast off and upcast, so a bf16 decoder still gets an exact loss.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from untwine.errors import ConfigError

_LOG_2PI = math.log(2.0 * math.pi)


def _float32_pair(x_params: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if x_params.shape != x.shape:
        raise ConfigError(
            f"likelihood got decoder output of shape {tuple(x_params.shape)} for data of shape {tuple(x.shape)}; "
            "they must match: check the decoder's output shape (in_channels / in_dim) against the dataset"
        )
    return x_params.float(), x.float()


class BernoulliLikelihood(nn.Module):
    """p(x | z) = prod Bernoulli(x; sigmoid(logits)). `x_params` are logits; x in [0, 1]
    (non-binary x gives the usual cross-entropy, as in disentanglement_lib)."""

    def nll(self, x_params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            logits, target = _float32_pair(x_params, x)
            bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
            return bce.flatten(1).sum(1)

    def mean(self, x_params: torch.Tensor) -> torch.Tensor:
        """E[x | z], for pictures: sigmoid of the logits."""
        return torch.sigmoid(x_params.float())


class GaussianLikelihood(nn.Module):
    """p(x | z) = prod N(x; mean, sigma^2). `x_params` are the means (no squashing).

    variance="fixed": sigma is the constant `sigma` (default 1, so the nll is half the summed squared
    error plus 0.5*log(2 pi) per element). variance="learned": one shared log-variance parameter
    trained with the VAE, initialised at log(sigma^2) (the "sigma-VAE" of Rybkin et al. 2021), which
    balances reconstruction against the KL without a hand-tuned weight.
    The constant terms are included, so the value is a true negative log-density.
    """

    def __init__(self, variance: str = "fixed", sigma: float = 1.0):
        super().__init__()
        if variance not in ("fixed", "learned"):
            raise ConfigError(f"Gaussian likelihood variance={variance!r}; expected 'fixed' or 'learned'")
        if not sigma > 0:
            raise ConfigError(f"Gaussian likelihood sigma={sigma}; expected a positive number")
        self.variance = variance
        log_var = torch.tensor(2.0 * math.log(sigma), dtype=torch.float32)
        if variance == "learned":
            self.log_var = nn.Parameter(log_var)
        else:
            self.register_buffer("log_var", log_var)

    def nll(self, x_params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            mean, target = _float32_pair(x_params, x)
            log_var = self.log_var.float()
            per_element = 0.5 * ((target - mean) ** 2 * torch.exp(-log_var) + log_var + _LOG_2PI)
            return per_element.flatten(1).sum(1)

    def mean(self, x_params: torch.Tensor) -> torch.Tensor:
        return x_params.float()


def build_likelihood(name: str, **params) -> nn.Module:
    """"bernoulli" or "gaussian" (params: variance="fixed"|"learned", sigma=1.0)."""
    if name == "bernoulli":
        if params:
            raise ConfigError(f"Bernoulli likelihood takes no parameters, got {sorted(params)}; remove them")
        return BernoulliLikelihood()
    if name == "gaussian":
        return GaussianLikelihood(**params)
    raise ConfigError(f"unknown likelihood {name!r}; expected 'bernoulli' or 'gaussian'")
