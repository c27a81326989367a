"""Multi-stage modelling (Srivastava et al.): a frozen disentangled stage 1 and a stage-2 detail
model conditioned on its output, trained through the same engine as every other model.

    stage2 = build_stage2("vae", image_shape=(1, 64, 64), latent_dim=10, likelihood="bernoulli")
    model = MultiStageModel(load_run("runs/tcvae").model, stage2)

Variants (one class each): "vae" (conditional VAE, y injected at every resolution), "gan"
(conditional GAN with an inference encoder), "flow" (conditional normalizing flow, exact
likelihood), "gmm" (mixture of factor analysers on the residual, exact likelihood).
"""
from __future__ import annotations

import importlib

from untwine.multistage.base import Stage2
from untwine.multistage.model import MultiStageModel
from untwine.registry import lookup

# name -> "module:Class", imported on first use so that one variant's dependencies (a flow library)
# never slow down or break the others
STAGE2_VARIANTS = {
    "vae": "untwine.multistage.vae:Stage2VAE",
    "gan": "untwine.multistage.gan:Stage2GAN",
    "flow": "untwine.multistage.flow:Stage2Flow",
    "gmm": "untwine.multistage.gmm:Stage2GMM",
}

__all__ = ["STAGE2_VARIANTS", "Stage2", "MultiStageModel", "build_stage2", "stage2_class"]


def stage2_class(name: str) -> type[Stage2]:
    from untwine.errors import ConfigError
    if name not in STAGE2_VARIANTS:
        raise ConfigError(f"unknown stage-2 variant {name!r}; expected one of {sorted(STAGE2_VARIANTS)}")
    module, cls = STAGE2_VARIANTS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build_stage2(name: str, *, image_shape: tuple[int, int, int], latent_dim: int,
                 likelihood: str = "bernoulli", **params) -> Stage2:
    """Build stage-2 variant `name` for images of `image_shape` (C, H, W) and a stage 1 with
    `latent_dim` latents; `params` are the variant's own (a wrong one is a ConfigError naming it)."""
    cls = stage2_class(name)
    _, accepted = lookup("stage-2 variant", {name: cls}, name, params)
    return cls(image_shape=tuple(image_shape), latent_dim=latent_dim, likelihood=likelihood, **params)
