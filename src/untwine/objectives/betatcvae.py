"""beta-TCVAE (Chen et al. 2018): the KL split into index-code mutual information, total
correlation and dimension-wise KL, each with its own weight.

On a mini-batch of B codes z_i ~ q(z|x_i) from a data set of N examples:
    MI   = mean_i [log q(z_i|x_i) - log q(z_i)]
    TC   = mean_i [log q(z_i) - sum_d log q(z_id)]
    DWKL = mean_i [sum_d log q(z_id) - log p(z_i)]
with the aggregate posterior q(z) = (1/N) sum_n q(z|x_n), and each of its marginals q(z_d), estimated
from the batch by importance weights w_ij that sum to 1 over j:
    log q(z_i)  = logsumexp_j [log w_ij + log q(z_i|x_j)]
    log q(z_id) = logsumexp_j [log w_ij + log q(z_id|x_j)]       (the same weights in every dimension)
    MWS (minibatch-weighted sampling): w_ij = 1/B, the batch average.
    MSS (minibatch-stratified sampling): w_ii = 1/N, w_i,(i+1 mod B) = (N-M)/(N M), all other
        w_ij = 1/M, with M = B - 1.
The MSS weights give z_i's own example its share 1/N of q(z_i) and spread 1 - 1/N over the B-1
others; for a batch drawn uniformly without replacement (what ObservationSampler yields) the
estimate of q(z_i) is then unbiased (Chen et al. 2018, appendix; brute-forced in the tests).
Chen et al.'s released code fills column 0 instead of the diagonal with 1/N; here the example's own
term is the one weighted 1/N, as in the paper.
Chen et al. write MWS with w_ij = 1/(N B), which sum to 1/N: that only subtracts the constant log N
from log q(z_i) and from each of the D log q(z_id), so their logged MI is ours + log N, their TC ours
+ (D-1) log N (about 121 nats on dSprites, N = 737,280, D = 10) and their DWKL ours - D log N. The
constants have no gradient, so the loss trains exactly as theirs, but their TC is not in nats
comparable across data sets; here it is 0 for a batch whose posteriors are all the same factorised
Gaussian, and MWS does not depend on N at all (N is needed by MSS only).

Loss = recon + w*KL + (alpha-1)*MI + (beta-1)*TC + (gamma-1)*DWKL, with the closed-form KL and w = 1.
Because MI + TC + DWKL is exactly the sampled estimate of the KL, this equals Chen et al.'s
recon + alpha*MI + beta*TC + gamma*DWKL in expectation, has lower variance, and with
alpha = gamma = 1 is disentanglement_lib's recon + KL + (beta-1)*TC (the same gradient; its TC
leaves out the weights, which puts it (D-1) log B below ours with MWS). TC is penalised for beta > 1.
"""
from __future__ import annotations

import math

import torch

from untwine.errors import ConfigError
from untwine.nets.base import VAE
from untwine.objectives.base import (
    Objective,
    ObjectiveOutput,
    check_weight,
    detached_terms,
    float32_math,
    gaussian_log_density,
    vae_terms,
)

ESTIMATORS = ("mws", "mss")


def log_density_matrix(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """(B, B, D): entry [i, j, d] = log q(z_id | x_j)."""
    return gaussian_log_density(z.unsqueeze(1), mu.unsqueeze(0), logvar.unsqueeze(0))


def mss_log_weights(batch_size: int, dataset_size: int, device=None, dtype=None) -> torch.Tensor:
    """(B, B) log importance weights of minibatch-stratified sampling (rows sum to 1)."""
    n, m = float(dataset_size), float(batch_size - 1)
    w = torch.full((batch_size, batch_size), 1.0 / m, device=device, dtype=dtype)
    rows = torch.arange(batch_size, device=device)
    w[rows, (rows + 1) % batch_size] = (n - m) / (n * m)
    w[rows, rows] = 1.0 / n
    return w.log()


def log_q_joint_and_marginals(
    z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, dataset_size: int, estimator: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example i: (log q(z_i), sum_d log q(z_id)), both shape (B,)."""
    mat = log_density_matrix(z, mu, logvar)
    b = z.shape[0]
    if estimator == "mws":
        log_w = torch.full((b, b), -math.log(b), device=z.device, dtype=z.dtype)
    else:
        log_w = mss_log_weights(b, dataset_size, z.device, z.dtype)
    log_qz = torch.logsumexp(log_w + mat.sum(2), dim=1)
    log_prod = torch.logsumexp(log_w.unsqueeze(2) + mat, dim=1).sum(1)
    return log_qz, log_prod


class BetaTCVAE(Objective):
    name = "betatcvae"
    #: what a controller's beta replaces: w, the weight of the whole KL (1 in Chen et al.);
    #: alpha, beta, gamma keep adding (alpha-1)MI + (beta-1)TC + (gamma-1)DWKL on top of it.
    kl_weight = "w: weight of the whole KL(q(z|x) || N(0, I)) (1 unless a controller sets it)"

    def __init__(self, alpha: float = 1.0, beta: float = 6.0, gamma: float = 1.0, estimator: str = "mws",
                 dataset_size: int | None = None):
        super().__init__()
        self.alpha = check_weight("betatcvae", "alpha", alpha)
        self.beta = check_weight("betatcvae", "beta", beta)
        self.gamma = check_weight("betatcvae", "gamma", gamma)
        if estimator not in ESTIMATORS:
            raise ConfigError(f"betatcvae: estimator={estimator!r}; expected one of {ESTIMATORS}")
        if isinstance(dataset_size, bool) or not isinstance(dataset_size, int) or dataset_size < 2:
            raise ConfigError(
                f"betatcvae: dataset_size={dataset_size!r}; the MWS/MSS estimators need the number of "
                "training examples N (an integer >= 2): pass dataset_size=len(dataset)"
            )
        self.estimator = estimator
        self.dataset_size = dataset_size

    def decompose(self, z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> dict[str, torch.Tensor]:
        """MI, TC and dimension-wise KL estimated on the batch (float32 inputs)."""
        b = z.shape[0]
        if b < 2 or b > self.dataset_size:
            raise ConfigError(
                f"betatcvae: batch of {b} examples with dataset_size={self.dataset_size}; the estimators need "
                "2 <= batch size <= dataset_size"
            )
        log_qz, log_prod = log_q_joint_and_marginals(z, mu, logvar, self.dataset_size, self.estimator)
        log_qz_x = gaussian_log_density(z, mu, logvar).sum(1)
        log_pz = gaussian_log_density(z, torch.zeros_like(z), torch.zeros_like(z)).sum(1)
        return {
            "mi": (log_qz_x - log_qz).mean(),
            "tc": (log_qz - log_prod).mean(),
            "dwkl": (log_prod - log_pz).mean(),
        }

    def forward(self, model: VAE, x: torch.Tensor, beta: float | None = None, step: int = 0) -> ObjectiveOutput:
        t = vae_terms(model, x)
        with float32_math(x):
            parts = self.decompose(t.z, t.mu, t.logvar)
            weight = 1.0 if beta is None else beta
            loss = (t.recon + weight * t.kl + (self.alpha - 1.0) * parts["mi"]
                    + (self.beta - 1.0) * parts["tc"] + (self.gamma - 1.0) * parts["dwkl"])
        return ObjectiveOutput(loss, detached_terms(recon=t.recon, kl=t.kl, **parts))
