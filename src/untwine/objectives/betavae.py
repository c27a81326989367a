"""beta-VAE (Higgins et al. 2017): recon + beta * KL(q(z|x) || N(0, I))."""
from __future__ import annotations

import torch

from untwine.nets.base import VAE
from untwine.objectives.base import Objective, ObjectiveOutput, check_weight, detached_terms, vae_terms


class BetaVAE(Objective):
    name = "betavae"
    #: what a controller's beta replaces: `beta`, the weight of the whole KL term
    kl_weight = "beta: weight of KL(q(z|x) || N(0, I))"

    def __init__(self, beta: float = 4.0):
        super().__init__()
        self.beta = check_weight("betavae", "beta", beta)

    def forward(self, model: VAE, x: torch.Tensor, beta: float | None = None, step: int = 0) -> ObjectiveOutput:
        t = vae_terms(model, x)
        weight = self.beta if beta is None else beta
        loss = t.recon + weight * t.kl
        return ObjectiveOutput(loss, detached_terms(recon=t.recon, kl=t.kl))
