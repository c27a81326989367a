"""Capacity-annealed beta-VAE (Burgess et al. 2018): recon + gamma * |KL - C(t)|,
C(t) = c_max * min(1, t / c_steps) rising linearly from 0 (disentanglement_lib's annealed_vae;
defaults gamma 1000, c_max 25 nats, c_steps 100,000 as there)."""
from __future__ import annotations

import torch

from untwine.errors import ConfigError
from untwine.nets.base import VAE
from untwine.objectives.base import Objective, ObjectiveOutput, check_weight, detached_terms, vae_terms


class CapacityVAE(Objective):
    name = "capacity"
    #: what a controller's beta replaces: `gamma`, the weight of |KL - C(t)|
    kl_weight = "gamma: weight of |KL - C(t)|"

    def __init__(self, gamma: float = 1000.0, c_max: float = 25.0, c_steps: int = 100_000):
        super().__init__()
        self.gamma = check_weight("capacity", "gamma", gamma)
        self.c_max = check_weight("capacity", "c_max", c_max)
        if isinstance(c_steps, bool) or not isinstance(c_steps, int) or c_steps < 1:
            raise ConfigError(f"capacity: c_steps={c_steps!r}; expected a positive integer number of steps")
        self.c_steps = c_steps

    def capacity(self, step: int) -> float:
        """C(t) in nats."""
        return self.c_max * min(1.0, max(step, 0) / self.c_steps)

    def forward(self, model: VAE, x: torch.Tensor, beta: float | None = None, step: int = 0) -> ObjectiveOutput:
        t = vae_terms(model, x)
        weight = self.gamma if beta is None else beta
        c = self.capacity(step)
        loss = t.recon + weight * (t.kl - c).abs()
        return ObjectiveOutput(loss, detached_terms(recon=t.recon, kl=t.kl, capacity=torch.tensor(c, device=t.recon.device)))
