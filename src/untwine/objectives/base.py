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
