"""Stage-2 conditional GAN with an inference encoder: generator G(y, w[, z]) (the VAE's conditional
decoder), discriminator D(x, y), encoder E(x, y) -> w (the VAE's encoder) so that it reconstructs.

    stage2 = Stage2GAN(image_shape=(1, 64, 64), latent_dim=10)
    out = stage2.loss(x, y, z)   # out.loss: G and E; out.aux_loss: D (auxiliary_parameters())

Loss of G and E (non-saturating GAN, Goodfellow et al. 2014):
    recon_weight * nll(x | G(y, w ~ E(x, y))) + kl_weight * KL(E(x, y) || N(0, I))
    + adv_weight * mean softplus(-D(G(y, w'), y)),  w' ~ N(0, I)
Loss of D: mean softplus(-D(x, y)) + mean softplus(D(G(y, w'), y)), fakes detached.
The small KL keeps E's codes inside the prior's support, so that reconstructions and prior samples
come from the same region of G's input. recon sums over pixels (thousands of nats at first) while
g_adv is one logit per image, hence adv_weight well above 1; the defaults are untuned starting points.

Gradient routing: the generator's adversarial term evaluates D with *detached copies of its
parameters* (torch.func.functional_call), so it never leaves gradients in D's .grad; D's loss sees
only detached fakes, so it never reaches G or E. The two losses reach disjoint parameter sets and
the engine may backpropagate their sum in one backward (one DDP all-reduce).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from untwine.multistage.nets import ConditionalDiscriminator
from untwine.multistage.vae import ConditionalLatentStage2
from untwine.objectives.base import ObjectiveOutput, check_weight, detached_terms, float32_math


class Stage2GAN(ConditionalLatentStage2):
    name = "gan"
    has_likelihood = False
    exact_likelihood = False
    #: keyword arguments for the discriminator's Adam optimiser (DCGAN's betas)
    aux_optimizer = {"lr": 2e-4, "betas": (0.5, 0.999)}

    def __init__(self, image_shape, latent_dim: int, likelihood: str = "bernoulli", w_dim: int = 16,
                 width: int = 32, use_z: bool = False, recon_weight: float = 1.0, adv_weight: float = 10.0,
                 kl_weight: float = 0.1):
        super().__init__(image_shape, latent_dim, likelihood, w_dim, width, use_z)
        self.recon_weight = check_weight("stage-2 gan", "recon_weight", recon_weight)
        self.adv_weight = check_weight("stage-2 gan", "adv_weight", adv_weight)
        self.kl_weight = check_weight("stage-2 gan", "kl_weight", kl_weight)
        self.discriminator = ConditionalDiscriminator(self.image_shape[0], width)

    def auxiliary_parameters(self) -> list[nn.Parameter]:
        return list(self.discriminator.parameters())

    def loss(self, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, beta: float | None = None,
             step: int = 0) -> ObjectiveOutput:
        """`beta` (a controller's) overrides kl_weight. terms: recon, kl, g_adv (generator's
        adversarial loss), d_loss, d_real / d_fake (D's mean probability of "real" on data / fakes)."""
        t = self.posterior_terms(x, y, z, sample=self.training)
        w_prior = self.sample_w(len(y), y, z)
        fake = self.likelihood.mean(self.decode(y, z, w_prior)).to(x.dtype)
        frozen = {k: v.detach() for k, v in self.discriminator.named_parameters()}
        g_logits = functional_call(self.discriminator, frozen, (fake, y))
        # one D pass over data and detached fakes
        d_logits = self.discriminator(torch.cat([x, fake.detach()]), torch.cat([y, y]))
        with float32_math(x):
            g_adv = F.softplus(-g_logits.float()).mean()
            real, fake_logits = d_logits.float().chunk(2)
            d_loss = F.softplus(-real).mean() + F.softplus(fake_logits).mean()
            kl = t.kl
            kl_weight = self.kl_weight if beta is None else float(beta)
            loss = self.recon_weight * t.recon + kl_weight * kl + self.adv_weight * g_adv
            d_real, d_fake = torch.sigmoid(real).mean(), torch.sigmoid(fake_logits).mean()
        terms = detached_terms(recon=t.recon, kl=kl, g_adv=g_adv, d_loss=d_loss, d_real=d_real, d_fake=d_fake)
        return ObjectiveOutput(loss, terms, d_loss)
