"""DIP-VAE (Kumar et al. 2018): recon + KL + lambda_od * sum_{i!=j} Cov_ij^2 + lambda_d * sum_i (Cov_ii - 1)^2,
with Cov the covariance of the encoder means (DIP-VAE-I) or of the aggregate posterior
(DIP-VAE-II: Cov[mu] + E[diag(exp(logvar))]), estimated on the batch (biased, 1/B, as in
disentanglement_lib).

Weights are parametrised as in disentanglement_lib: lambda_od and lambda_d_factor, with
lambda_d = lambda_d_factor * lambda_od, so that a sweep over lambda_od scales lambda_d with it.
The factor defaults to 10 for DIP-VAE-I and 1 for DIP-VAE-II (disentanglement_lib's study values);
lambda_od defaults to 10. An absolute lambda_d may be given instead of lambda_d_factor, not both."""
from __future__ import annotations

import torch

from untwine.errors import ConfigError
from untwine.nets.base import VAE
from untwine.objectives.base import Objective, ObjectiveOutput, check_weight, detached_terms, float32_math, vae_terms


def covariance(mu: torch.Tensor) -> torch.Tensor:
    """(D, D) batch covariance of the rows of mu, normalised by B."""
    centred = mu - mu.mean(0, keepdim=True)
    return (centred.unsqueeze(2) * centred.unsqueeze(1)).mean(0)


def dip_penalty(cov: torch.Tensor, lambda_od: float, lambda_d: float) -> torch.Tensor:
    diag = torch.diagonal(cov)
    off_diag = cov - torch.diag(diag)
    return lambda_od * off_diag.pow(2).sum() + lambda_d * (diag - 1.0).pow(2).sum()


class _DIPVAE(Objective):
    #: what a controller's beta replaces: w, the weight of KL(q(z|x) || N(0, I)) (1 in the paper)
    kl_weight = "w: weight of KL(q(z|x) || N(0, I)) (1 unless a controller sets it)"

    #: lambda_d / lambda_od when neither lambda_d nor lambda_d_factor is given
    default_lambda_d_factor: float

    def __init__(self, lambda_od: float = 10.0, lambda_d_factor: float | None = None, lambda_d: float | None = None):
        super().__init__()
        self.lambda_od = check_weight(self.name, "lambda_od", lambda_od)
        if lambda_d is not None and lambda_d_factor is not None:
            raise ConfigError(
                f"{self.name}: both lambda_d={lambda_d!r} and lambda_d_factor={lambda_d_factor!r} given; they set the "
                "same weight (lambda_d = lambda_d_factor * lambda_od): give only one"
            )
        if lambda_d is None:
            factor = self.default_lambda_d_factor if lambda_d_factor is None else lambda_d_factor
            self.lambda_d_factor = check_weight(self.name, "lambda_d_factor", factor)
            self.lambda_d = self.lambda_od * self.lambda_d_factor
        else:
            self.lambda_d = check_weight(self.name, "lambda_d", lambda_d)
            self.lambda_d_factor = None  # absolute: a lambda_od sweep leaves lambda_d where it is

    def covariance(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, model: VAE, x: torch.Tensor, beta: float | None = None, step: int = 0) -> ObjectiveOutput:
        t = vae_terms(model, x)
        with float32_math(x):
            dip = dip_penalty(self.covariance(t.mu, t.logvar), self.lambda_od, self.lambda_d)
            weight = 1.0 if beta is None else beta
            loss = t.recon + weight * t.kl + dip
        return ObjectiveOutput(loss, detached_terms(recon=t.recon, kl=t.kl, dip=dip))


class DIPVAEI(_DIPVAE):
    """Penalises Cov[mu(x)] toward the identity."""

    name = "dipvae-i"
    default_lambda_d_factor = 10.0

    def covariance(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        return covariance(mu)


class DIPVAEII(_DIPVAE):
    """Penalises Cov_q(z)[z] = Cov[mu(x)] + E[diag(exp(logvar(x)))] toward the identity."""

    name = "dipvae-ii"
    default_lambda_d_factor = 1.0

    def covariance(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        return covariance(mu) + torch.diag(logvar.exp().mean(0))
