"""A conditional mixture of factor analysers on vectors, with an exact log-likelihood.

    mfa = ConditionalMixtureOfFactorAnalysers(dim=4096, context_dim=10, components=10, rank=8)
    log_p = mfa.log_prob(x, context)           # (B,) nats, exact
    post = mfa.posterior(x, context)           # responsibilities and E[w | x, k], Cov[w | x, k]
    x_new = mfa.sample(context, generator=g)   # (B, dim)

    p(x | c) = sum_k pi_k(c) N(x; mu_k, L_k L_k^T + diag(psi_k)),   L_k: (dim, rank)

Each component is a factor analyser x = mu_k + L_k w + eps, w ~ N(0, I_rank), eps ~ N(0, diag(psi_k)).
Only the mixing weights depend on the context c (a small MLP; a free logit vector when
context_dim = 0, the plain unconditional mixture). The dim x dim covariance is never formed: with
M_k = I + L_k^T psi_k^-1 L_k (rank x rank), the Woodbury identity gives
    d^T S^-1 d = d^T psi^-1 d - a^T M^-1 a,  a = L^T psi^-1 d,
and the matrix-determinant lemma log|S| = log|M| + sum log psi, so a batch costs
O(B K dim rank) time and memory. The posterior of the factor latent is closed form:
w | x, k ~ N(M_k^-1 a_k, M_k^-1). Used by the multi-stage "gmm" stage 2 on flattened image
residuals (dim 4096) and meant for table rows (dim ~ 100) as well.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from untwine.errors import ConfigError, DataError

_LOG_2PI = math.log(2.0 * math.pi)


def check_int(owner: str, name: str, value, minimum: int = 1) -> int:
    """An integer >= minimum (bools refused), else a ConfigError naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{owner}: {name}={value!r}; expected an integer >= {minimum}")
    return value


def check_positive(owner: str, name: str, value) -> float:
    """A finite number > 0, else a ConfigError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{owner}: {name}={value!r}; expected a finite number > 0")
    return float(value)


@dataclass
class MixturePosterior:
    """p(k, w | x, c): `log_resp` (B, K) log responsibilities log p(k | x, c); `mean` (B, K, rank)
    E[w | x, k]; `cov` (K, rank, rank) Cov[w | x, k] (the same for every x)."""

    log_resp: torch.Tensor
    mean: torch.Tensor
    cov: torch.Tensor

    def most_probable(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(k, E[w | x, k]) of the most responsible component: shapes (B,) and (B, rank)."""
        k = self.log_resp.argmax(1)
        # a gather, not mean[arange(B), k]: a traced export (untwine export) keeps the batch size free
        return k, self.mean.gather(1, k[:, None, None].expand(-1, 1, self.mean.shape[2])).squeeze(1)


class ConditionalMixtureOfFactorAnalysers(nn.Module):
    """K factor analysers of rank `rank` on `dim`-vectors; mixing weights pi(c) from a context of
    `context_dim` (0: unconditional). `hidden` is the width of the mixing MLP (0: linear).
    `init_variance` is the starting noise variance psi (match it to the data's scale) and
    `min_variance` a floor that keeps the density bounded on degenerate coordinates."""

    def __init__(self, dim: int, context_dim: int = 0, components: int = 10, rank: int = 8, hidden: int = 64,
                 init_variance: float = 1.0, min_variance: float = 1e-6):
        super().__init__()
        owner = "mixture of factor analysers"
        self.dim = check_int(owner, "dim", dim)
        self.context_dim = check_int(owner, "context_dim", context_dim, minimum=0)
        self.components = check_int(owner, "components", components)
        self.rank = check_int(owner, "rank", rank)
        hidden = check_int(owner, "hidden", hidden, minimum=0)
        init_variance = check_positive(owner, "init_variance", init_variance)
        self.min_variance = check_positive(owner, "min_variance", min_variance)
        if init_variance <= self.min_variance:
            raise ConfigError(f"{owner}: init_variance={init_variance} must exceed min_variance={self.min_variance}")
        k, d, r = self.components, self.dim, self.rank
        self.means = nn.Parameter(torch.zeros(k, d))
        # random loadings break the symmetry between components (same means at the start)
        self.loadings = nn.Parameter(torch.randn(k, d, r) * math.sqrt(init_variance / r) * 0.5)
        self.log_psi = nn.Parameter(torch.full((k, d), math.log(init_variance - self.min_variance)))
        if self.context_dim == 0:
            self.mixing = None
            self.mixing_logits = nn.Parameter(torch.zeros(k))
        else:
            layers = [nn.Linear(self.context_dim, hidden), nn.SiLU(), nn.Linear(hidden, k)] if hidden else \
                [nn.Linear(self.context_dim, k)]
            self.mixing = nn.Sequential(*layers)
            # uniform weights at the start, whatever the context
            nn.init.zeros_(self.mixing[-1].weight)
            nn.init.zeros_(self.mixing[-1].bias)

    # ---- pieces ------------------------------------------------------------------------------
    @property
    def psi(self) -> torch.Tensor:
        """Noise variances (K, dim)."""
        return self.log_psi.exp() + self.min_variance

    def _context(self, context: torch.Tensor | None, n: int | None) -> int:
        """Check the context against context_dim; the batch size."""
        if self.context_dim == 0:
            if context is not None and (context.dim() != 2 or context.shape[1] != 0):
                raise DataError(f"this mixture is unconditional (context_dim=0) but got a context of shape "
                                f"{tuple(context.shape)}; pass context=None")
            if context is not None:
                return len(context)
            if n is None:
                raise DataError("an unconditional mixture needs n (the number of samples) when context is None")
            return n
        if context is None or context.dim() != 2 or context.shape[1] != self.context_dim:
            got = None if context is None else tuple(context.shape)
            raise DataError(f"mixture context has shape {got}; expected (B, {self.context_dim})")
        return len(context)

    def log_weights(self, context: torch.Tensor | None, n: int | None = None) -> torch.Tensor:
        """log pi_k(c), shape (B, K)."""
        b = self._context(context, n)
        if self.mixing is None:
            return torch.log_softmax(self.mixing_logits, 0).expand(b, -1)
        return torch.log_softmax(self.mixing(context.float()), 1)

    def _check_x(self, x: torch.Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise DataError(f"mixture data has shape {tuple(x.shape)}; expected (B, {self.dim}) (flatten the rows)")

    def _woodbury(self, x: torch.Tensor):
        """Per component: the (B, K) log-densities, plus a = L^T psi^-1 (x - mu) (B, K, r) and the
        Cholesky factor of M = I + L^T psi^-1 L (K, r, r) for the posterior."""
        self._check_x(x)
        psi = self.psi
        inv_psi = 1.0 / psi
        dev = x.float()[:, None, :] - self.means[None]                      # (B, K, D)
        scaled = dev * inv_psi[None]                                         # psi^-1 d
        a = torch.einsum("bkd,kdr->bkr", scaled, self.loadings)              # L^T psi^-1 d
        m = torch.einsum("kdr,kds->krs", self.loadings * inv_psi[..., None], self.loadings)
        m = m + torch.eye(self.rank, device=x.device)
        chol = torch.linalg.cholesky(m)
        # a^T M^-1 a = |chol^-1 a|^2
        v = torch.linalg.solve_triangular(chol, a.permute(1, 2, 0), upper=False)  # (K, r, B)
        maha = (dev * scaled).sum(-1) - v.pow(2).sum(1).T
        logdet = 2.0 * torch.diagonal(chol, dim1=-2, dim2=-1).log().sum(-1) + psi.log().sum(-1)
        comp = -0.5 * (self.dim * _LOG_2PI + logdet[None] + maha)
        return comp, a, chol

    # ---- the density -------------------------------------------------------------------------
    def component_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log N(x; mu_k, S_k) for every component, shape (B, K)."""
        return self._woodbury(x)[0]

    def log_prob(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """Exact log p(x | c) in nats, shape (B,)."""
        comp = self.component_log_prob(x)
        return torch.logsumexp(self.log_weights(context, len(x)) + comp, 1)

    def posterior(self, x: torch.Tensor, context: torch.Tensor | None = None) -> MixturePosterior:
        """p(k | x, c) and the Gaussian w | x, k ~ N(M_k^-1 a_k, M_k^-1)."""
        comp, a, chol = self._woodbury(x)
        joint = self.log_weights(context, len(x)) + comp
        log_resp = joint - torch.logsumexp(joint, 1, keepdim=True)
        mean = torch.cholesky_solve(a.permute(1, 2, 0), chol).permute(2, 0, 1)   # (B, K, r)
        return MixturePosterior(log_resp, mean, torch.cholesky_inverse(chol))

    def decode(self, k: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """E[x | k, w] = mu_k + L_k w, shape (B, dim), for component indices k (B,) and w (B, rank)."""
        if w.dim() != 2 or w.shape[1] != self.rank or k.shape != (len(w),):
            raise DataError(f"decode got k {tuple(k.shape)} and w {tuple(w.shape)}; expected (B,) and (B, {self.rank})")
        return self.means[k] + torch.einsum("bdr,br->bd", self.loadings[k], w.float())

    def sample_components(self, context: torch.Tensor | None = None, generator: torch.Generator | None = None,
                          n: int | None = None, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """k ~ pi(c) and w ~ N(0, temperature^2 I): shapes (B,) and (B, rank)."""
        log_pi = self.log_weights(context, n)
        k = torch.multinomial(log_pi.exp(), 1, generator=generator).squeeze(1)
        w = torch.randn(len(k), self.rank, generator=generator, device=log_pi.device) * temperature
        return k, w

    def sample(self, context: torch.Tensor | None = None, generator: torch.Generator | None = None,
               n: int | None = None) -> torch.Tensor:
        """x ~ p(x | c), shape (B, dim) with B = len(context) (or n for an unconditional mixture)."""
        k, w = self.sample_components(context, generator, n)
        noise = torch.randn(len(k), self.dim, generator=generator, device=w.device)
        return self.decode(k, w) + noise * self.psi[k].sqrt()
