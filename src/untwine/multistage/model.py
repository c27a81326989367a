"""The combined two-stage model: a frozen stage-1 VAE and a trainable stage-2 detail model.

    model = MultiStageModel(stage1_vae, build_stage2("vae", image_shape=(1, 64, 64), latent_dim=10))
    x_hat = model.reconstruct(x)          # y = g1(mu(x)), w = infer(x, y), x_hat = generate(y, w)
    x_new = model.sample(16)              # z ~ N(0, I), y = g1(z), w ~ p(w), x ~ p2(x | y, w)
    frames = model.traverse(x, dim=3)     # one z_j varied, w held: (steps, B, C, H, W)
    codes = model.representation(x)       # stage 1's encoder mean, exactly

Stage 1 is frozen for good: its parameters have requires_grad=False, it stays in eval mode whatever
`train()` is called with, and everything it produces for stage 2 is computed under no_grad.

Code consistency (`consistency` > 0, our addition; the vae and gan variants): a stage 2 trained on a
stage 1 that holds a factor only coarsely learns to move it with w, since that lowers its nll. The
term 0.5 * sum_j ((mu1_j(x~) - z_j) / sigma1_j(x))^2, with x~ = G(y, w ~ p(w)) and mu1 the frozen
stage-1 encoder, is the negative log-density (up to a constant) of x's own code under a Gaussian of
x's posterior widths centred on the code stage 1 reads from x~: every w must give an image that stage
1 encodes as z. Its gradient reaches stage 2 through the encoder, whose weights stay untouched.
Inactive dimensions (sigma ~ 1, mu ~ 0) contribute about nothing; active ones are measured in
units of their own posterior width.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from untwine.errors import ConfigError
from untwine.multistage.base import Stage2
from untwine.nets.base import VAE
from untwine.objectives.base import check_weight


class MultiStageModel(nn.Module):
    def __init__(self, stage1: VAE, stage2: Stage2, stage1_sample: bool = False, consistency: float = 0.0):
        super().__init__()
        self.stage1 = stage1
        self.stage2 = stage2
        #: z for stage 2 while training: the encoder mean (default) or a sample of q(z|x)
        self.stage1_sample = bool(stage1_sample)
        self.consistency = check_weight("stage1", "consistency", consistency)
        if self.consistency > 0 and not hasattr(stage2, "decode"):
            raise ConfigError(f"stage1.consistency={consistency!r}: the code-consistency term needs a stage 2 that "
                              f"decodes a detail latent w (vae, gan); stage 2 {stage2.name!r} has none: "
                              f"set stage1.consistency=0")
        self.latent_dim = stage1.latent_dim
        for p in self.stage1.parameters():
            p.requires_grad_(False)
        self.stage1.eval()

    @property
    def likelihood(self) -> nn.Module:
        """Stage 1's likelihood, read through: not a submodule of its own, since registering it twice
        puts one tensor (a Gaussian's log_var) under two names, which safetensors refuses to save."""
        return self.stage1.likelihood

    # stage 1 never leaves eval mode (no dropout/batch-norm drift, deterministic mean codes)
    def train(self, mode: bool = True) -> "MultiStageModel":
        super().train(mode)
        self.stage1.eval()
        return self

    # ---- stage 1 ---------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 1's posterior (mean, log-variance): what every metric scores."""
        with torch.no_grad():
            return self.stage1.encode(x)

    @torch.no_grad()
    def representation(self, x: torch.Tensor) -> torch.Tensor:
        return self.stage1.representation(x)

    @torch.no_grad()
    def stage1_decode(self, z: torch.Tensor) -> torch.Tensor:
        """y = g1(z): the stage-1 decoder's mean image in [0, 1], float32."""
        return self.stage1.likelihood.mean(self.stage1.decode(z)).float()

    @torch.no_grad()
    def stage1_output(self, x: torch.Tensor, sample: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(z, y) for x: z the encoder mean (or a posterior sample), y = g1(z); both detached."""
        mu, logvar = self.stage1.encode(x)
        sample = self.stage1_sample if sample is None else sample
        z = VAE.reparameterise(mu, logvar) if sample else mu
        z = z.float()
        return z, self.stage1_decode(z).to(x.dtype)

    # ---- training ----------------------------------------------------------------------------
    def stage2_loss(self, x: torch.Tensor, beta: float | None = None, step: int = 0):
        with torch.no_grad():
            mu, logvar = self.stage1.encode(x)
        z = (VAE.reparameterise(mu, logvar) if self.stage1_sample and self.training else mu).float()
        y = self.stage1_decode(z).to(x.dtype)
        out = self.stage2.loss(x, y, z, beta=beta, step=step)
        if self.consistency > 0:
            term = self.code_consistency(y, z, torch.exp(0.5 * logvar.float()))
            out.loss = out.loss + self.consistency * term
            out.terms["consistency"] = term.detach()
        return out

    def code_consistency(self, y: torch.Tensor, z: torch.Tensor, sigma: torch.Tensor,
                         generator: torch.Generator | None = None) -> torch.Tensor:
        """0.5 * sum_j ((mu1_j(G(y, w)) - z_j) / sigma_j)^2, mean over the batch, w ~ p(w); the
        gradient reaches stage 2 (not stage 1, whose parameters do not require it)."""
        w = self.stage2.sample_w(len(y), y, z, generator=generator)
        fake = self.stage2.likelihood.mean(self.stage2.decode(y, z, w)).to(y.dtype)
        mu, _ = self.stage1.encode(fake)
        return 0.5 * ((mu.float() - z) / sigma).pow(2).sum(1).mean()

    def auxiliary_parameters(self) -> list[nn.Parameter]:
        return self.stage2.auxiliary_parameters()

    # ---- the combined model ------------------------------------------------------------------
    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        z, y = self.stage1_output(x, sample=False)
        return self.stage2.reconstruct(x, y, z)

    @torch.no_grad()
    def reconstruct_stage1(self, x: torch.Tensor) -> torch.Tensor:
        return self.stage1_output(x, sample=False)[1]

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        device = device if device is not None else next(self.stage1.parameters()).device
        z = torch.randn(n, self.latent_dim, generator=generator, device=device)
        y = self.stage1_decode(z)
        w = self.stage2.sample_w(n, y, z, generator=generator)
        return self.stage2.generate(y, z, w)

    @torch.no_grad()
    def traverse(self, x: torch.Tensor, dim: int, values: torch.Tensor | None = None, steps: int = 9,
                 limit: float = 2.0) -> torch.Tensor:
        """Vary z_dim over `values` (default linspace(-limit, limit, steps)) from each x's code, w held
        at x's own detail code: (len(values), B, C, H, W) combined images."""
        if not 0 <= dim < self.latent_dim:
            raise ValueError(f"dim={dim} is not a latent dimension of stage 1 (0..{self.latent_dim - 1})")
        z, y = self.stage1_output(x, sample=False)
        w = self.stage2.infer(x, y, z)
        if values is None:
            values = torch.linspace(-limit, limit, steps, device=x.device)
        frames = []
        for v in values:
            zv = z.clone()
            zv[:, dim] = v
            frames.append(self.stage2.generate(self.stage1_decode(zv), zv, w))
        return torch.stack(frames)

    @torch.no_grad()
    def elbo(self, x: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """Per-example evidence lower bounds in nats, shape (B,) each: `combined` =
        log p2(x | g1(z), w) bound - KL(q(z|x) || p(z)) at z = the encoder mean (the part of stage 2
        is exact for the flow and the mixture, a bound over w for the VAE); `stage1` = stage 1's own
        ELBO at the same z. None when stage 2 has no likelihood (the GAN)."""
        if not self.stage2.has_likelihood:
            return None
        from untwine.objectives.base import gaussian_kl
        mu, logvar = self.stage1.encode(x)
        kl_z = gaussian_kl(mu.float(), logvar.float()).sum(1)
        y = self.stage1_decode(mu.float())
        ll2 = self.stage2.log_likelihood(x, y.to(x.dtype), mu.float())
        ll1 = -self.stage1.likelihood.nll(self.stage1.decode(mu), x).float()
        return {"combined": ll2 - kl_z, "stage1": ll1 - kl_z, "kl_z": kl_z}


def bits_per_dim(nats: torch.Tensor, dims: int) -> torch.Tensor:
    """-log-likelihood in nats per example -> bits per dimension."""
    return nats / (dims * math.log(2.0))
