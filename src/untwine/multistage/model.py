"""The combined two-stage model: a frozen stage-1 VAE and a trainable stage-2 detail model.

    model = MultiStageModel(stage1_vae, build_stage2("vae", image_shape=(1, 64, 64), latent_dim=10))
    x_hat = model.reconstruct(x)          # y = g1(mu(x)), w = infer(x, y), x_hat = generate(y, w)
    x_new = model.sample(16)              # z ~ N(0, I), y = g1(z), w ~ p(w), x ~ p2(x | y, w)
    frames = model.traverse(x, dim=3)     # one z_j varied, w held: (steps, B, C, H, W)
    codes = model.representation(x)       # stage 1's encoder mean, exactly
    bounds = model.bounds(x, samples=10)  # sampled ELBO and IWAE of stage 1 and the combined model

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
from untwine.objectives.base import LOG_2PI, check_weight

#: the default number of posterior draws of the sampled ELBO and the IWAE bound
DEFAULT_BOUND_SAMPLES = 10


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

    # ---- bounds on log p(x) -------------------------------------------------------------------
    @torch.no_grad()
    def log_weights(self, x: torch.Tensor, samples: int = DEFAULT_BOUND_SAMPLES) -> dict[str, torch.Tensor]:
        """Importance log weights in nats, shape (samples, B) each, from `samples` draws z_k ~ q(z|x)
        (the global torch RNG; stage 1 and the combined model share each draw of z):

        "stage1":   log p1(x | z_k) + log p(z_k) - log q(z_k | x)
        "combined": log p2(x | g1(z_k), w_k) + log p(w_k) - log q(w_k | x, y_k) + log p(z_k) - log q(z_k | x),
                    w_k ~ q(w | x, y_k), y_k = g1(z_k) (Stage2.log_weight; for the flow and the mixture,
                    which infer no w approximately, log p2(x | y_k) itself);
                    absent when stage 2 has no likelihood (the GAN).

        Their mean estimates each model's ELBO and their log-mean-exp is the importance-weighted
        bound (IWAE, Burda et al. 2016): see `bounds`. z is sampled, never the posterior mean: the
        likelihood at the mean is not a bound (it typically overstates log p(x))."""
        stage1, combined = [], []
        for z, params, prior_ratio in posterior_draws(self.stage1, x, samples):
            stage1.append(-self.stage1.likelihood.nll(params, x).float() + prior_ratio)
            if self.stage2.has_likelihood:
                y = self.stage1.likelihood.mean(params).float().to(x.dtype)
                combined.append(self.stage2.log_weight(x, y, z).float() + prior_ratio)
        out = {"stage1": torch.stack(stage1)}
        if combined:
            out["combined"] = torch.stack(combined)
        return out

    @torch.no_grad()
    def bounds(self, x: torch.Tensor, samples: int = DEFAULT_BOUND_SAMPLES) -> dict[str, dict[str, torch.Tensor]]:
        """Per-example lower bounds on log p(x) in nats, shape (B,) each, for "stage1" and (when
        stage 2 has a likelihood) "combined": {"elbo_sampled", "iwae"} from the same `samples` draws
        (see log_weights and bounds_from_log_weights). With samples=1 the two are equal."""
        return {stage: bounds_from_log_weights(w) for stage, w in self.log_weights(x, samples).items()}

    @torch.no_grad()
    def log_likelihood_given_y(self, x: torch.Tensor) -> torch.Tensor | None:
        """log p2(x | y) in nats, (B,), with y = g1(mu(x)) read from x itself, for a stage 2 whose
        likelihood is exact given y (the flow, the mixture; one dequantisation draw); None otherwise.
        A conditional density given stage 1's reading of x, not a bound on log p(x)."""
        if not self.stage2.exact_likelihood:
            return None
        z, y = self.stage1_output(x, sample=False)
        return self.stage2.log_likelihood(x, y, z).float()


def check_samples(samples) -> int:
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ConfigError(f"samples={samples!r}: the number of posterior draws of the ELBO / IWAE bound must be "
                          f"an integer >= 1")
    return samples


def log_normal(v: torch.Tensor, mu: torch.Tensor | None = None, logvar: torch.Tensor | None = None) -> torch.Tensor:
    """log N(v; mu, diag(exp(logvar))) summed over the last dimension; N(0, I) when mu is None."""
    if mu is None:
        return -0.5 * (v.pow(2) + LOG_2PI).sum(-1)
    return -0.5 * ((v - mu).pow(2) * torch.exp(-logvar) + logvar + LOG_2PI).sum(-1)


def bounds_from_log_weights(log_w: torch.Tensor) -> dict[str, torch.Tensor]:
    """(K, B) importance log weights -> per-example "elbo_sampled" (their mean: the Monte Carlo
    ELBO) and "iwae" (log (1/K) sum_k exp(log_w_k), the importance-weighted bound; >= the mean on
    the same draws, tighter as K grows, equal to it at K = 1)."""
    return {"elbo_sampled": log_w.mean(0), "iwae": torch.logsumexp(log_w, 0) - math.log(len(log_w))}


def posterior_draws(vae, x: torch.Tensor, samples: int):
    """`samples` times: (z ~ q(z|x) from the global torch RNG, the decoder's likelihood parameters
    at z, log p(z) - log q(z|x)), float32, (B, D) / (B, ...) / (B,)."""
    samples = check_samples(samples)
    mu, logvar = (t.float() for t in vae.encode(x))
    for _ in range(samples):
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        yield z, vae.decode(z), log_normal(z) - log_normal(z, mu, logvar)


@torch.no_grad()
def stage1_log_weights(vae, x: torch.Tensor, samples: int = DEFAULT_BOUND_SAMPLES) -> torch.Tensor:
    """A plain VAE's importance log weights log p(x | z_k) + log p(z_k) - log q(z_k | x), (samples, B)
    (MultiStageModel.log_weights' "stage1", for a VAE alone)."""
    return torch.stack([-vae.likelihood.nll(params, x).float() + prior_ratio
                        for _, params, prior_ratio in posterior_draws(vae, x, samples)])


def bits_per_dim(nats: torch.Tensor, dims: int) -> torch.Tensor:
    """-log-likelihood in nats per example -> bits per dimension."""
    return nats / (dims * math.log(2.0))
