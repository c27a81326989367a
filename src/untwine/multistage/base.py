"""The contract between a stage-2 model, the combined model and the training engine.

Multi-stage modelling (Srivastava et al.): p(x, z, w) = p(z) p(w) p2(x | y, w) with y = g1(z), the
frozen stage-1 decoder's mean image. In the graph z -> y -> x <- w, x is a collider: z and w are
independent a priori, and stage 2 never changes q(z|x), so every disentanglement score of the
combined model is stage 1's.

A stage-2 variant is one small nn.Module subclass of `Stage2`. It sees, per batch, the data x, the
stage-1 output y (same shape as x, values in [0, 1]) and the stage-1 code z (B, D), all detached:
no gradient can reach stage 1 through them. The engine trains it through `MultiStageObjective`,
which calls `Stage2.loss`; a variant with a second optimiser (the GAN's discriminator) lists those
parameters in `auxiliary_parameters()` and returns their loss as `ObjectiveOutput.aux_loss`, with
the two losses reaching disjoint parameter sets (the engine backpropagates their sum once, so that
DDP all-reduces every gradient in one pass).
"""
from __future__ import annotations

import torch
from torch import nn

from untwine.objectives.base import ObjectiveOutput


class Stage2(nn.Module):
    """p2(x | y, w): a detail model conditioned on the stage-1 output y (and optionally on z)."""

    #: registry name ("vae", "gan", "flow", "gmm")
    name: str = ""
    #: True when `log_likelihood` gives an exact log-likelihood or a lower bound (not the GAN)
    has_likelihood: bool = False
    #: True when `log_likelihood` is exact (flow, mixture) rather than a lower bound (VAE)
    exact_likelihood: bool = False
    #: dimension of the detail latent w (0 when the variant has none)
    w_dim: int = 0
    #: True when x <-> w is a bijection given y (the flow): the combined model then reconstructs
    #: every x exactly by construction, so a reconstruction error says nothing about it
    bijective: bool = False

    def loss(self, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, beta: float | None = None,
             step: int = 0) -> ObjectiveOutput:
        """The training loss; `terms` always hold "recon" and "kl" (KL of w, 0 when there is none),
        so that a beta controller can steer the variant's KL weight where it has one."""
        raise NotImplementedError

    def infer(self, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The detail code w of x (posterior mean or inverse), shape (B, w_dim) or x's shape."""
        raise NotImplementedError

    def generate(self, y: torch.Tensor, z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """The mean image in [0, 1] for (y, z, w)."""
        raise NotImplementedError

    def sample_w(self, n: int, y: torch.Tensor, z: torch.Tensor, generator: torch.Generator | None = None
                 ) -> torch.Tensor:
        """w ~ p(w) (or the variant's own prior given y), n = len(y)."""
        raise NotImplementedError

    def reconstruct(self, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The combined reconstruction of x in [0, 1]: generate(y, z, infer(x, y, z))."""
        return self.generate(y, z, self.infer(x, y, z))

    def log_likelihood(self, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Per-example log p2(x | y) in nats (exact, or a sampled ELBO over w), shape (B,)."""
        raise NotImplementedError(f"stage 2 {self.name!r} has no likelihood")

    def log_weight(self, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """One importance log weight of stage 2's part in nats, (B,), from the global torch RNG:
        log p2(x | y, w) + log p(w) - log q(w | x, y), w ~ q(w | x, y) for a variant with an
        approximate posterior (the VAE), log p2(x | y) itself where it is exact (flow, mixture: one
        draw of the dequantisation noise, which then joins the proposal, so the IWAE stays a bound)."""
        if self.has_likelihood and self.exact_likelihood:
            return self.log_likelihood(x, y, z)
        raise NotImplementedError(f"stage 2 {self.name!r} has no importance weight (no likelihood)")

    def auxiliary_parameters(self) -> list[nn.Parameter]:
        """Parameters of a second optimiser (the GAN's discriminator); [] for the others."""
        return []
