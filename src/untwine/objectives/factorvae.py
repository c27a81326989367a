"""FactorVAE (Kim & Mnih 2018): recon + KL + gamma * TC, the total correlation estimated by a
discriminator telling codes z ~ q(z) from codes with each dimension shuffled across the batch
(samples of prod_d q(z_d)): TC ~ mean[logit_real(z) - logit_permuted(z)].

Gradient routing (the point where implementations go wrong):
- `loss` (the VAE's) evaluates the discriminator with *detached copies of its parameters*
  (torch.func.functional_call), so its TC gradient reaches the encoder and never lands in the
  discriminator's .grad.
- `aux_loss` (the discriminator's cross-entropy) sees only z.detach(), so it never reaches the
  encoder.
The engine's protocol is then safe in either order, e.g.
    opt.zero_grad(); loss.backward(); opt.step(); aux_opt.zero_grad(); aux_loss.backward(); aux_opt.step()
with `opt` over model.parameters() and `aux_opt` over objective.auxiliary_parameters(), built
with `FactorVAE.aux_optimizer` (Adam lr 1e-4, betas (0.5, 0.9), as in the paper).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from untwine.errors import ConfigError
from untwine.nets.base import VAE
from untwine.objectives.base import Objective, ObjectiveOutput, check_weight, detached_terms, float32_math, vae_terms


class Discriminator(nn.Sequential):
    """Kim & Mnih's discriminator: `layers` x (Linear(width), LeakyReLU(0.2)), then 2 logits
    (class 0 = real code, class 1 = dimension-permuted code)."""

    def __init__(self, latent_dim: int, width: int = 1000, layers: int = 6):
        widths = [latent_dim] + [width] * layers
        modules: list[nn.Module] = []
        for w_in, w_out in zip(widths[:-1], widths[1:]):
            modules += [nn.Linear(w_in, w_out), nn.LeakyReLU(0.2, inplace=True)]
        super().__init__(*modules, nn.Linear(widths[-1], 2))


def permute_dims(z: torch.Tensor) -> torch.Tensor:
    """Shuffle each latent dimension independently across the batch: a sample of prod_d q(z_d)."""
    order = torch.rand(z.shape, device=z.device).argsort(dim=0)
    return z.gather(0, order)


class FactorVAE(Objective):
    name = "factorvae"
    #: what a controller's beta replaces: w, the weight of KL(q(z|x) || N(0, I)) (1 in the paper)
    kl_weight = "w: weight of KL(q(z|x) || N(0, I)) (1 unless a controller sets it); gamma weighs TC"
    #: keyword arguments for the discriminator's Adam optimiser (Kim & Mnih, appendix A)
    aux_optimizer = {"lr": 1e-4, "betas": (0.5, 0.9)}

    def __init__(self, gamma: float = 35.0, latent_dim: int = 10, width: int = 1000, layers: int = 6):
        super().__init__()
        self.gamma = check_weight("factorvae", "gamma", gamma)
        for key, value in (("latent_dim", latent_dim), ("width", width), ("layers", layers)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"factorvae: {key}={value!r}; expected a positive integer")
        self.latent_dim = latent_dim
        self.discriminator = Discriminator(latent_dim, width, layers)

    def auxiliary_parameters(self) -> list[nn.Parameter]:
        return list(self.discriminator.parameters())

    def forward(self, model: VAE, x: torch.Tensor, beta: float | None = None, step: int = 0) -> ObjectiveOutput:
        t = vae_terms(model, x)
        if t.z.shape[1] != self.latent_dim:
            raise ConfigError(
                f"factorvae: the model has {t.z.shape[1]} latent dimensions but the discriminator was built for "
                f"{self.latent_dim}; pass latent_dim={t.z.shape[1]} to build_objective"
            )
        with float32_math(x):
            frozen = {k: v.detach() for k, v in self.discriminator.named_parameters()}
            logits = functional_call(self.discriminator, frozen, (t.z,))
            tc = (logits[:, 0] - logits[:, 1]).mean()
            weight = 1.0 if beta is None else beta
            loss = t.recon + weight * t.kl + self.gamma * tc

            z = t.z.detach()
            both = self.discriminator(torch.cat([z, permute_dims(z)]))
            labels = torch.cat([torch.zeros(len(z), dtype=torch.long, device=z.device),
                                torch.ones(len(z), dtype=torch.long, device=z.device)])
            aux_loss = F.cross_entropy(both, labels)  # = 0.5 * (CE_real + CE_permuted)
            accuracy = (both.argmax(1) == labels).float().mean()
        terms = detached_terms(recon=t.recon, kl=t.kl, tc=tc, disc_loss=aux_loss, disc_accuracy=accuracy)
        return ObjectiveOutput(loss, terms, aux_loss)
