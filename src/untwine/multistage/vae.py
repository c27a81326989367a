"""Stage-2 conditional VAE: q(w | x, y), p(w) = N(0, I), p2(x | y, w[, z]) with y injected at every
resolution (untwine.multistage.nets).

    stage2 = Stage2VAE(image_shape=(1, 64, 64), latent_dim=10, likelihood="bernoulli", w_dim=16)
    out = stage2.loss(x, y, z)            # recon + beta * KL(q(w|x,y) || N(0, I))

The reconstruction term uses the same likelihood classes as stage 1 (sum over pixels, mean over the
batch), so its nats compare with stage 1's directly. The decoder's residual starts at zero: an
untrained Stage2VAE reproduces stage 1's image and nll exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from untwine.errors import ConfigError
from untwine.multistage.base import Stage2
from untwine.multistage.nets import (
    ConditionalDecoder, ConditionalEncoder, check_batch, check_image_shape, positive_int,
)
from untwine.nets.likelihoods import build_likelihood
from untwine.objectives.base import ObjectiveOutput, check_weight, detached_terms, float32_math, gaussian_kl

LIKELIHOODS = ("bernoulli", "gaussian")


@dataclass
class PosteriorTerms:
    """One pass through encoder and decoder, float32: `recon` the batch mean of the summed nll,
    `nll` per example (B,), `kl_dims` (B, w_dim), the posterior `mu`, `logvar`, the `w` decoded and
    the decoder's likelihood parameters `x_params`."""

    recon: torch.Tensor
    nll: torch.Tensor
    kl_dims: torch.Tensor
    mu: torch.Tensor
    logvar: torch.Tensor
    w: torch.Tensor
    x_params: torch.Tensor

    @property
    def kl(self) -> torch.Tensor:
        """KL of w summed over its dimensions, mean over the batch."""
        return self.kl_dims.sum(1).mean()


class ConditionalLatentStage2(Stage2):
    """What the VAE and the GAN share: an encoder E(x, y) -> q(w | x, y), a conditional decoder
    G(y, w[, z]), a likelihood, p(w) = N(0, I). Subclasses add their loss."""

    def __init__(self, image_shape, latent_dim: int, likelihood: str = "bernoulli", w_dim: int = 16,
                 width: int = 32, use_z: bool = False):
        super().__init__()
        owner = f"stage-2 {self.name}"
        self.image_shape = check_image_shape(owner, image_shape)
        self.latent_dim = positive_int(owner, "latent_dim", latent_dim)
        self.w_dim = positive_int(owner, "w_dim", w_dim)
        width = positive_int(owner, "width", width)
        if not isinstance(use_z, bool):
            raise ConfigError(f"{owner}: use_z={use_z!r}; expected true or false")
        if likelihood not in LIKELIHOODS:
            raise ConfigError(f"{owner}: likelihood={likelihood!r}; expected one of {LIKELIHOODS} (stage 1's)")
        self.use_z = use_z
        self.likelihood = build_likelihood(likelihood)
        channels = self.image_shape[0]
        self.encoder = ConditionalEncoder(channels, self.w_dim, width)
        self.decoder = ConditionalDecoder(channels, self.w_dim, width, z_dim=self.latent_dim if use_z else 0,
                                          residual="logit" if likelihood == "bernoulli" else "identity")

    def _check(self, x: torch.Tensor | None, y: torch.Tensor, z: torch.Tensor) -> None:
        check_batch(f"stage-2 {self.name}", self.image_shape, self.latent_dim, x, y, z)

    def posterior(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(w | x, y): (mu, logvar) in float32, (B, w_dim) each."""
        mu, logvar = self.encoder(x, y)
        return mu.float(), logvar.float()

    def decode(self, y: torch.Tensor, z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """The likelihood parameters of p2(x | y, w[, z]), float32."""
        return self.decoder(y, w, z if self.use_z else None)

    def posterior_terms(self, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, sample: bool,
                        generator: torch.Generator | None = None) -> PosteriorTerms:
        """Encode, decode w (a reparameterised sample when `sample`, else the posterior mean) and score x."""
        self._check(x, y, z)
        mu, logvar = self.posterior(x, y)
        with float32_math(x):
            if sample:
                eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
                w = mu + eps * torch.exp(0.5 * logvar)
            else:
                w = mu
            kl_dims = gaussian_kl(mu, logvar)
        x_params = self.decode(y, z, w)
        nll = self.likelihood.nll(x_params, x)
        return PosteriorTerms(nll.mean(), nll, kl_dims, mu, logvar, w, x_params)

    @torch.no_grad()
    def infer(self, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The posterior mean of w, (B, w_dim)."""
        self._check(x, y, z)
        return self.posterior(x, y)[0]

    @torch.no_grad()
    def generate(self, y: torch.Tensor, z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """The likelihood mean in [0, 1] (a Gaussian mean is clipped to the pixel range)."""
        self._check(None, y, z)
        return self.likelihood.mean(self.decode(y, z, w)).clamp(0.0, 1.0)

    def sample_w(self, n: int, y: torch.Tensor, z: torch.Tensor, generator: torch.Generator | None = None
                 ) -> torch.Tensor:
        """w ~ N(0, I), (n, w_dim), drawn from `generator` when given (reproducible samples)."""
        return torch.randn(n, self.w_dim, generator=generator, device=y.device)


class Stage2VAE(ConditionalLatentStage2):
    """Conditional VAE stage 2: loss = nll(x | y, w) + beta * KL(q(w | x, y) || N(0, I))."""

    name = "vae"
    has_likelihood = True
    exact_likelihood = False

    def __init__(self, image_shape, latent_dim: int, likelihood: str = "bernoulli", w_dim: int = 16,
                 width: int = 32, use_z: bool = False, beta: float = 1.0):
        super().__init__(image_shape, latent_dim, likelihood, w_dim, width, use_z)
        self.beta = check_weight("stage-2 vae", "beta", beta)

    def loss(self, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, beta: float | None = None,
             step: int = 0) -> ObjectiveOutput:
        """`beta` (a controller's) overrides self.beta. w is sampled in training mode, the mean in eval."""
        t = self.posterior_terms(x, y, z, sample=self.training)
        weight = self.beta if beta is None else float(beta)
        with float32_math(x):
            kl = t.kl
            loss = t.recon + weight * kl
        return ObjectiveOutput(loss, detached_terms(recon=t.recon, kl=kl))

    @torch.no_grad()
    def log_likelihood(self, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, samples: int = 1,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """Per-example ELBO over w in nats, (B,): log p2(x | y, w) - KL(q(w|x,y) || N(0, I)).

        samples=k >= 1 (default 1): the Monte Carlo ELBO averaged over k posterior draws (an
        unbiased estimate of a true lower bound on log p2(x | y)), from `generator` when given.
        samples=0: w at the posterior mean, deterministic: a point estimate, NOT a bound (where
        log p2 is concave in w it overstates the ELBO, by Jensen)."""
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 0:
            raise ConfigError(f"log_likelihood: samples={samples!r}; expected an integer >= 0")
        if samples == 0:
            t = self.posterior_terms(x, y, z, sample=False)
            return -t.nll - t.kl_dims.sum(1)
        total = 0.0
        for _ in range(samples):
            t = self.posterior_terms(x, y, z, sample=True, generator=generator)
            total = total - t.nll
        return total / samples - t.kl_dims.sum(1)

    @torch.no_grad()
    def log_weight(self, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """One importance log weight, (B,): log p2(x | y, w) + log p(w) - log q(w | x, y), w ~ q(w | x, y)
        (the global torch RNG); its mean over draws is the ELBO over w, its log-mean-exp the IWAE."""
        from untwine.multistage.model import log_normal
        t = self.posterior_terms(x, y, z, sample=True)
        with float32_math(x):
            return -t.nll.float() + log_normal(t.w) - log_normal(t.w, t.mu, t.logvar)
