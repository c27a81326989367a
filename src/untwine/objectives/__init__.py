"""Objectives: one small class each, built by name.

    objective = build_objective("betatcvae", dataset_size=len(data), beta=6.0)
    out = objective(model, x, beta=controller.beta, step=step)   # ObjectiveOutput(loss, terms, aux_loss)

`dataset_size` and `latent_dim` may always be passed (the engine passes both): objectives that
need them use them (beta-TCVAE needs dataset_size, FactorVAE's discriminator latent_dim, ML-VAE and
GVAE check their content_dim / k against latent_dim), the others ignore them. Each class's
`batch_kind` ("single", "pairs", "groups") says which batch the engine hands to forward: an image
tensor, a PairBatch (weak.py: GVAE, ML-VAE pairs, Ada-*, label variants) or a GroupBatch
(mlvae.py). Each class's `kl_weight` attribute says which weight a controller's `beta` replaces.
"""
from __future__ import annotations

from untwine.registry import lookup

from untwine.objectives.base import Objective, ObjectiveOutput, gaussian_kl, gaussian_log_density
from untwine.objectives.betatcvae import BetaTCVAE
from untwine.objectives.betavae import BetaVAE
from untwine.objectives.capacity import CapacityVAE
from untwine.objectives.dipvae import DIPVAEI, DIPVAEII
from untwine.objectives.factorvae import FactorVAE
from untwine.objectives.mlvae import MLVAE, accumulate_content
from untwine.objectives.weak import AdaGVAE, AdaMLVAE, GVAE, GVAELabel, MLVAELabel, MLVAEPairs

OBJECTIVES: dict[str, type[Objective]] = {
    cls.name: cls for cls in (BetaVAE, CapacityVAE, BetaTCVAE, FactorVAE, DIPVAEI, DIPVAEII,
                              GVAE, MLVAEPairs, AdaGVAE, AdaMLVAE, GVAELabel, MLVAELabel, MLVAE)
}

__all__ = [
    "OBJECTIVES", "Objective", "ObjectiveOutput", "build_objective", "BetaVAE", "CapacityVAE", "BetaTCVAE",
    "FactorVAE", "DIPVAEI", "DIPVAEII", "gaussian_kl", "gaussian_log_density",
    "GVAE", "MLVAEPairs", "AdaGVAE", "AdaMLVAE", "GVAELabel", "MLVAELabel", "MLVAE", "accumulate_content",
]


def build_objective(name: str, *, dataset_size: int | None = None, latent_dim: int | None = None,
                    **params) -> Objective:
    """Build the objective `name` (one of OBJECTIVES) with its parameters."""
    cls, accepted = lookup("objective", OBJECTIVES, name, params)
    if "dataset_size" in accepted:
        params["dataset_size"] = dataset_size
    if "latent_dim" in accepted and latent_dim is not None:
        params["latent_dim"] = latent_dim
    return cls(**params)
