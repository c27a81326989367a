"""ML-VAE on groups (Bouchacourt et al. 2018, "Multi-Level Variational Autoencoder").

The model is the ordinary VAE with latent_dim = content_dim + style_dim: dims [0, content_dim) are
content, dims [content_dim, latent_dim) style. Every member x_i gives content evidence
q(C | x_i) = N(mu_i, v_i) and its own style posterior q(S_i | x_i). A group's content posterior is
the product of its members' Gaussians (precision-weighted, gradients kept):

    1/v_G = sum_i 1/v_i,    mu_G = v_G * sum_i mu_i / v_i.

One content sample per group goes to every member (a per-member sample lets the decoder ignore
content). ELBO per group = sum_i E log p(x_i | C_G, S_i) - sum_i KL(S_i) - KL(C_G); the loss and its
terms are reported per image (summed over groups, divided by the number of members present), so
they compare with beta-VAE's. beta weighs both KLs.

Groups of unequal size come as a padded batch with a bool `mask` (G, M) on the batch (True =
present); absent members are never encoded, so their pixels may be anything.
"""
from __future__ import annotations

import torch

from untwine.errors import ConfigError, DataError
from untwine.nets.base import VAE
from untwine.objectives.base import Objective, ObjectiveOutput, check_weight, detached_terms, float32_math, gaussian_kl


def _check_mask(mask: torch.Tensor | None, shape: tuple[int, ...]) -> torch.Tensor | None:
    if mask is None:
        return None
    if mask.dtype != torch.bool:
        raise DataError(f"a group mask must be bool (True = member present); got dtype {mask.dtype}")
    if tuple(mask.shape) != tuple(shape):
        raise DataError(f"the group mask has shape {tuple(mask.shape)} but the members are laid out as "
                        f"{tuple(shape)} (groups, members): one flag per member")
    empty = ~mask.any(dim=-1)
    if empty.any():
        first = tuple(int(i) for i in torch.nonzero(empty)[0])
        raise DataError(f"{int(empty.sum())} group(s) have no member present (first at {first}); a group "
                        f"needs at least one member: drop empty groups before the batch")
    return mask


def accumulate_content(mu: torch.Tensor, logvar: torch.Tensor,
                       mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Product of the members' diagonal Gaussians over the member axis (-2).

    mu, logvar: (..., M, D), e.g. (G, M, D) for G groups or (M, D) for one; mask: bool (..., M), True
    for the members to accumulate (None: all). A single member returns its own posterior. Returns
    (mu_G, logvar_G), shape (..., D); differentiable in every present member.
    """
    if mu.shape != logvar.shape:
        raise DataError(f"mu and logvar must have the same shape; got {tuple(mu.shape)} and {tuple(logvar.shape)}")
    if mu.dim() < 2:
        raise DataError(f"content posteriors must be shaped (..., members, dims); got shape {tuple(mu.shape)}")
    mask = _check_mask(mask, tuple(mu.shape[:-1]))
    neg_logvar = -logvar
    if mask is not None:
        present = mask[..., None]
        neg_logvar = neg_logvar.masked_fill(~present, float("-inf"))  # precision 0 for absent members
        mu = torch.where(present, mu, torch.zeros_like(mu))            # never 0 * NaN
    logvar_g = -torch.logsumexp(neg_logvar, dim=-2)                    # 1/v_G = sum 1/v_i
    weights = torch.softmax(neg_logvar, dim=-2)                        # (1/v_i) / sum_j (1/v_j)
    return (weights * mu).sum(dim=-2), logvar_g


class MLVAE(Objective):
    """Grouped ML-VAE; the batch is a GroupBatch (x (G, M, C, H, W), classes), optionally with `mask`."""

    name = "mlvae"
    batch_kind = "groups"
    kl_weight = "beta: weight of the style KLs and the group content KL"

    def __init__(self, content_dim: int | None = None, beta: float = 1.0, latent_dim: int | None = None):
        super().__init__()
        if content_dim is None:
            raise ConfigError("mlvae needs objective.content_dim: how many of the first latent dims hold the "
                              "group's content (the rest are style)")
        if isinstance(content_dim, bool) or not isinstance(content_dim, int) or content_dim < 1:
            raise ConfigError(f"mlvae: content_dim={content_dim!r}; expected an integer >= 1")
        if latent_dim is not None and content_dim >= latent_dim:
            raise ConfigError(f"mlvae: content_dim={content_dim} leaves no style dims with latent_dim={latent_dim}; "
                              f"use content_dim in 1..{latent_dim - 1} or raise model.latent_dim")
        self.content_dim = content_dim
        self.latent_dim = latent_dim
        self.beta = check_weight(self.name, "beta", beta)

    def forward(self, model: VAE, batch, beta: float | None = None, step: int = 0) -> ObjectiveOutput:
        x = getattr(batch, "x", None)
        if not isinstance(x, torch.Tensor) or x.dim() < 3:
            raise DataError(f"mlvae needs a GroupBatch with x shaped (groups, members, ...); got "
                            f"{type(batch).__name__} with x of shape {getattr(x, 'shape', None)}")
        groups, members = x.shape[:2]
        mask = _check_mask(getattr(batch, "mask", None), (groups, members))
        flat = x.reshape(groups * members, *x.shape[2:])
        if mask is None:
            index = torch.arange(groups * members, device=x.device)
        else:
            index = torch.nonzero(mask.reshape(-1).to(x.device)).squeeze(1)
        xp = flat[index]  # present members only: absent ones are never encoded
        mu_raw, logvar_raw = model.encode(xp)
        c = self.content_dim
        if mu_raw.shape[1] <= c or (self.latent_dim is not None and mu_raw.shape[1] != self.latent_dim):
            raise ConfigError(f"mlvae: the encoder gives {mu_raw.shape[1]} latent dims, content_dim={c} and "
                              f"latent_dim={self.latent_dim}: model.latent_dim must equal content + style dims "
                              f"and exceed content_dim")
        with float32_math(x):
            mu, logvar = mu_raw.float(), logvar_raw.float()
            # lay the present members' content out as (G, M, c) for the product over each group
            content_mu = mu.new_zeros(groups * members, c).index_copy(0, index, mu[:, :c])
            content_lv = mu.new_zeros(groups * members, c).index_copy(0, index, logvar[:, :c])
            mu_g, lv_g = accumulate_content(content_mu.view(groups, members, c),
                                            content_lv.view(groups, members, c), mask)
            style_mu, style_lv = mu[:, c:], logvar[:, c:]
            if model.training:
                content, style = model.reparameterise(mu_g, lv_g), model.reparameterise(style_mu, style_lv)
            else:
                content, style = mu_g, style_mu
            # one content sample per group, handed to each of its members
            z = torch.cat([content[index // members], style], dim=1)
        x_params = model.decode(z.to(mu_raw.dtype))
        num_images = xp.shape[0]
        recon = model.likelihood.nll(x_params, xp).sum() / num_images
        with float32_math(x):
            kl_content = gaussian_kl(mu_g, lv_g).sum() / num_images   # once per group
            kl_style = gaussian_kl(style_mu, style_lv).sum() / num_images
            kl = kl_content + kl_style
            weight = self.beta if beta is None else beta
            loss = recon + weight * kl
        return ObjectiveOutput(loss, detached_terms(recon=recon, kl=kl, kl_content=kl_content, kl_style=kl_style))
