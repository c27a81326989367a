"""Weakly supervised pair models (Locatello et al. 2020, "Weakly-Supervised Disentanglement Without
Compromises"): GVAE, ML-VAE on pairs, their adaptive forms Ada-GVAE / Ada-ML-VAE, and label variants.

Each objective consumes a PairBatch (x1, x2, changed). Both images are encoded; per latent dimension
delta_j = KL(q(z_j|x1) || q(z_j|x2)), the first image's posterior against the second's, in that
direction as disentanglement_lib's compute_kl(z_mean, z_mean_2, z_logvar, z_logvar_2) (the KL is not
symmetric: the reversed or the symmetrised KL can share other dims, see tests/test_weak.py's
direction_pair); the dimensions judged *shared* get the aggregate posterior of
the pair in both images, the others keep their own. Loss = (recon1 + recon2)/2 + beta*(KL1 + KL2)/2
with the aggregated posteriors (disentanglement_lib's weak_vae.py).

Which dimensions are shared (one rule per class family):
- adaptive ("adagvae", "adamlvae"): delta_j < (min_j delta + max_j delta)/2 per pair, which is
  disentanglement_lib's aggregate_argmax (two equal-width bins of delta, the upper bin keeps its own
  posterior). dlib's delta is 2*KL (its compute_kl omits the 1/2); the threshold does not care.
  When every delta is equal no dimension is below the midpoint, so nothing is shared.
- known k ("gvae", "mlvae_pairs"): the k dimensions with the largest delta keep their own posterior,
  the other latent_dim - k are shared (the paper's known-k case; disentanglement_lib ships only the
  adaptive and label forms). k=None reads each pair's k from the batch: the number of factors the
  sampler resampled (changed.sum(1)).
- labels ("gvae_label", "mlvae_label"): latent dim j stands for factor j (latent_dim >= number of
  factors); dims of changed factors keep their own posterior, every other dim (including dims past
  the last factor) is shared. disentanglement_lib's aggregate_labels keeps one dim, the index of the
  last changed factor; with a full `changed` mask we keep every changed factor's dim, which is the
  same when one factor changes.

Aggregation: GVAE = mean of the means and of the variances. ML-VAE, aggregation="dlib" (default,
as disentanglement_lib): var = 2 v1 v2/(v1 + v2), mean = (mu1/v1 + mu2/v2) * var/2, i.e. twice the
product-of-Gaussians variance; aggregation="exact": the product of the two Gaussians,
var = v1 v2/(v1 + v2) (same mean).
"""
from __future__ import annotations

import math

import torch

from untwine.errors import ConfigError, DataError
from untwine.nets.base import VAE
from untwine.objectives.base import Objective, ObjectiveOutput, check_weight, detached_terms, float32_math, gaussian_kl

ML_AGGREGATIONS = ("dlib", "exact")
_LOG2 = math.log(2.0)


# -- pieces (pure functions of float32 tensors, (B, D)) ---------------------------------------------

def pair_kl(mu1: torch.Tensor, logvar1: torch.Tensor, mu2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N(mu1, v1) || N(mu2, v2)) per example and dimension:
    0.5 * (v1/v2 + (mu2 - mu1)^2/v2 - 1 + log v2 - log v1)."""
    return 0.5 * ((logvar1 - logvar2).exp() + (mu2 - mu1).pow(2) * (-logvar2).exp() - 1.0 + logvar2 - logvar1)


def average_gvae(mu1, logvar1, mu2, logvar2) -> tuple[torch.Tensor, torch.Tensor]:
    """GVAE aggregate: mean (mu1 + mu2)/2, variance (v1 + v2)/2."""
    return 0.5 * (mu1 + mu2), torch.logaddexp(logvar1, logvar2) - _LOG2


def average_mlvae(mu1, logvar1, mu2, logvar2, aggregation: str = "dlib") -> tuple[torch.Tensor, torch.Tensor]:
    """ML-VAE aggregate: precision-weighted mean; variance v1 v2/(v1 + v2) ("exact", the product of
    Gaussians) or twice that ("dlib", disentanglement_lib's form). Computed in log space."""
    if aggregation not in ML_AGGREGATIONS:
        raise ConfigError(f"ML-VAE aggregation={aggregation!r}; expected one of {ML_AGGREGATIONS}")
    # weight of mu1 = p1/(p1 + p2) = sigmoid(log v2 - log v1): stable for any variances
    w1 = torch.sigmoid(logvar2 - logvar1)
    mean = w1 * mu1 + (1.0 - w1) * mu2
    logvar = -torch.logaddexp(-logvar1, -logvar2)
    return mean, logvar + _LOG2 if aggregation == "dlib" else logvar


def adaptive_shared(delta: torch.Tensor) -> torch.Tensor:
    """Shared dims of each pair: delta_j < (min + max)/2 over that pair's dims. bool (B, D)."""
    threshold = 0.5 * (delta.amin(dim=1, keepdim=True) + delta.amax(dim=1, keepdim=True))
    return delta < threshold


def known_k_shared(delta: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """All dims shared except each pair's k[b] dims of largest delta (ties: lower index first). bool (B, D)."""
    order = torch.argsort(delta, dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(delta.shape[1], device=delta.device).expand_as(order))
    return rank >= k.to(rank.device)[:, None]


def label_shared(changed: torch.Tensor, latent_dim: int) -> torch.Tensor:
    """Dim j < K is shared iff factor j was not resampled; dims >= K are shared. bool (B, latent_dim)."""
    batch, num_factors = changed.shape
    if latent_dim < num_factors:
        raise ConfigError(f"label variants align latent dim j with factor j, so they need latent_dim >= "
                          f"{num_factors} (the number of factors); got latent_dim={latent_dim}: raise "
                          f"model.latent_dim or use an adaptive model (adagvae, adamlvae)")
    shared = torch.ones(batch, latent_dim, dtype=torch.bool, device=changed.device)
    shared[:, :num_factors] = ~changed.bool()
    return shared


# -- objectives ---------------------------------------------------------------------------------------

def _check_pairs(batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    try:
        x1, x2, changed = batch.x1, batch.x2, batch.changed
    except AttributeError:
        raise DataError(f"pair models need a PairBatch (x1, x2, changed); got {type(batch).__name__}: "
                        f"set the objective's batch_kind to 'pairs' in the engine") from None
    if x1.shape != x2.shape:
        raise DataError(f"x1 and x2 of a pair batch must have the same shape; got {tuple(x1.shape)} and "
                        f"{tuple(x2.shape)}")
    if changed.dim() != 2 or changed.shape[0] != x1.shape[0]:
        raise DataError(f"changed must be bool (B, K) with B={x1.shape[0]} pairs; got shape {tuple(changed.shape)}")
    return x1, x2, changed


class AdaGVAE(Objective):
    """Ada-GVAE: adaptive shared dims, GVAE aggregate (the base of every pair model here)."""

    name = "adagvae"
    batch_kind = "pairs"
    kl_weight = "beta: weight of the mean KL of the two aggregated posteriors"

    def __init__(self, beta: float = 1.0):
        super().__init__()
        self.beta = check_weight(self.name, "beta", beta)
        self.aggregation = "gvae"

    def shared_dims(self, delta: torch.Tensor, changed: torch.Tensor) -> torch.Tensor:
        return adaptive_shared(delta)

    def aggregate(self, mu1, logvar1, mu2, logvar2) -> tuple[torch.Tensor, torch.Tensor]:
        if self.aggregation == "gvae":
            return average_gvae(mu1, logvar1, mu2, logvar2)
        return average_mlvae(mu1, logvar1, mu2, logvar2, self.aggregation)

    def posteriors(self, mu1, logvar1, mu2, logvar2, changed) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The pair's posteriors after aggregation, stacked (2B, D) as [x1; x2], and the shared mask (B, D)."""
        delta = pair_kl(mu1, logvar1, mu2, logvar2)
        shared = self.shared_dims(delta.detach(), changed)  # a selection: no gradient through it
        amu, alv = self.aggregate(mu1, logvar1, mu2, logvar2)
        mu = torch.cat([torch.where(shared, amu, mu1), torch.where(shared, amu, mu2)])
        logvar = torch.cat([torch.where(shared, alv, logvar1), torch.where(shared, alv, logvar2)])
        return mu, logvar, shared

    def forward(self, model: VAE, batch, beta: float | None = None, step: int = 0) -> ObjectiveOutput:
        x1, x2, changed = _check_pairs(batch)
        x = torch.cat([x1, x2])  # one encoder and one decoder pass for both halves
        mu_raw, logvar_raw = model.encode(x)
        with float32_math(x):
            mu1, mu2 = mu_raw.float().chunk(2)
            lv1, lv2 = logvar_raw.float().chunk(2)
            mu, logvar, shared = self.posteriors(mu1, lv1, mu2, lv2, changed)
            z = model.reparameterise(mu, logvar) if model.training else mu
        x_params = model.decode(z.to(mu_raw.dtype))
        recon = model.likelihood.nll(x_params, x).mean()  # = (recon1 + recon2)/2: equal halves
        with float32_math(x):
            kl = gaussian_kl(mu, logvar).sum(1).mean()  # = (KL1 + KL2)/2
            weight = self.beta if beta is None else beta
            loss = recon + weight * kl
        return ObjectiveOutput(loss, detached_terms(recon=recon, kl=kl, shared_dims=shared.float().sum(1).mean()))


def _ml_aggregation(name: str, aggregation: str) -> str:
    if aggregation not in ML_AGGREGATIONS:
        raise ConfigError(f"{name}: aggregation={aggregation!r}; expected 'dlib' (disentanglement_lib's doubled "
                          f"variance) or 'exact' (the product of the two Gaussians)")
    return aggregation


class AdaMLVAE(AdaGVAE):
    """Ada-ML-VAE: adaptive shared dims, ML-VAE aggregate."""

    name = "adamlvae"

    def __init__(self, beta: float = 1.0, aggregation: str = "dlib"):
        super().__init__(beta)
        self.aggregation = _ml_aggregation(self.name, aggregation)


class GVAE(AdaGVAE):
    """GVAE with k known: the k dims of largest delta change, the rest are shared."""

    name = "gvae"

    def __init__(self, beta: float = 1.0, k: int | None = None, latent_dim: int | None = None):
        super().__init__(beta)
        if k is not None:
            if isinstance(k, bool) or not isinstance(k, int) or k < 1:
                raise ConfigError(f"{self.name}: k={k!r}; expected an integer >= 1 (the number of latent dims "
                                  f"that change in a pair) or null to read it from each pair")
            if latent_dim is not None and k >= latent_dim:
                raise ConfigError(f"{self.name}: k={k} changed dims leaves nothing to share with latent_dim="
                                  f"{latent_dim}; use k in 1..{latent_dim - 1}")
        self.k = k

    def shared_dims(self, delta: torch.Tensor, changed: torch.Tensor) -> torch.Tensor:
        latent_dim = delta.shape[1]
        if self.k is None:
            k = changed.long().sum(1)
        else:
            k = torch.full((delta.shape[0],), self.k, dtype=torch.long, device=delta.device)
        if int(k.max()) >= latent_dim:
            raise DataError(f"{self.name}: a pair has k={int(k.max())} changed factors but the model has only "
                            f"{latent_dim} latent dims; raise model.latent_dim above k or lower batch.k")
        return known_k_shared(delta, k)


class MLVAEPairs(GVAE):
    """ML-VAE on pairs with k known."""

    name = "mlvae_pairs"

    def __init__(self, beta: float = 1.0, k: int | None = None, latent_dim: int | None = None,
                 aggregation: str = "dlib"):
        super().__init__(beta, k, latent_dim)
        self.aggregation = _ml_aggregation(self.name, aggregation)


class GVAELabel(AdaGVAE):
    """GVAE told which factors changed (latent dim j = factor j)."""

    name = "gvae_label"

    def shared_dims(self, delta: torch.Tensor, changed: torch.Tensor) -> torch.Tensor:
        return label_shared(changed.to(delta.device), delta.shape[1])


class MLVAELabel(GVAELabel):
    """ML-VAE told which factors changed (latent dim j = factor j)."""

    name = "mlvae_label"

    def __init__(self, beta: float = 1.0, aggregation: str = "dlib"):
        super().__init__(beta)
        self.aggregation = _ml_aggregation(self.name, aggregation)


PAIR_OBJECTIVES = (GVAE, MLVAEPairs, AdaGVAE, AdaMLVAE, GVAELabel, MLVAELabel)
