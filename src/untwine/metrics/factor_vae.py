"""FactorVAE score (Kim and Mnih 2018), disentanglement_lib's protocol, with its count fixed.

Global variances of each code dimension from `codes_variance` (ddof=1); dimensions with std < 0.05 are
pruned. One point: fix factor k at one random value over a batch of `batch_size` samples; the vote is
the active dimension with the least variance relative to its global variance. A majority-vote classifier
maps each dimension to the factor it most often votes for; accuracy = votes it gets right / all votes.
disentanglement_lib reports num_active_dims as the total number of dims (len of a boolean mask); here it
is the number of active dims. Chance level is about 1/K, not 0.

Arrays: codes (P, batch, D) of the P fixed-factor batches, labels (P,) the fixed factor of each.
"""
from __future__ import annotations

import numpy as np

from untwine.errors import DataError
from untwine.metrics._common import check_codes


def sample_factor_vae_factors(factor_sizes, num_points: int, batch_size: int, rng: np.random.Generator):
    """Factor classes (P, B, K) of P batches, each holding one factor at one value, and labels (P,)."""
    sizes = np.asarray(factor_sizes, dtype=np.int64)
    labels = rng.integers(0, len(sizes), size=num_points)
    f = rng.integers(0, sizes, size=(num_points, batch_size, len(sizes)))
    rows = np.arange(num_points)
    f[rows, :, labels] = f[rows, 0, labels][:, None]
    return f, labels


def _votes(codes, labels, global_var: np.ndarray, active: np.ndarray, num_factors: int, name: str) -> np.ndarray:
    c = np.asarray(codes)
    if c.ndim != 3 or c.shape[2] != len(global_var) or c.shape[1] < 2:
        raise DataError(f"{name} codes must have shape (points, batch >= 2, {len(global_var)}); got {c.shape}")
    lab = np.asarray(labels)
    if lab.shape != (c.shape[0],) or not np.issubdtype(lab.dtype, np.integer) or (lab.size and
                                                                                   (lab.min() < 0 or lab.max() >= num_factors)):
        raise DataError(f"{name} labels must be ({c.shape[0]},) integers in 0..{num_factors - 1}; got {lab.shape}")
    c = check_codes(c.reshape(-1, c.shape[2]), f"{name} codes").reshape(c.shape)
    local = c.var(axis=1, ddof=1)                                   # (P, D)
    argmin = np.argmin(local[:, active] / global_var[active], axis=1)
    votes = np.zeros((num_factors, int(active.sum())), dtype=np.int64)
    np.add.at(votes, (lab, argmin), 1)
    return votes


def active_dims(codes_variance, prune_threshold: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Global variances (D,) of the variance-estimate codes (ddof=1) and the mask of the dimensions
    kept (std >= prune_threshold). No kept dimension: the score is 0 and no batch is needed."""
    cv = check_codes(codes_variance, "codes_variance")
    global_var = cv.var(axis=0, ddof=1)
    return global_var, np.sqrt(global_var) >= prune_threshold


def factor_vae_score(codes_variance, codes_train, labels_train, codes_eval, labels_eval,
                     num_factors: int | None = None, prune_threshold: float = 0.05) -> dict:
    """codes_train / codes_eval (and their labels) may be None when no dimension is active: as
    disentanglement_lib, the score then stops after the variance estimate."""
    global_var, active = active_dims(codes_variance, prune_threshold)
    if not active.any():
        return {"train_accuracy": 0.0, "eval_accuracy": 0.0, "num_active_dims": 0}
    if codes_train is None or codes_eval is None:
        raise DataError(f"{int(active.sum())} code dimension(s) have std >= {prune_threshold}: the FactorVAE "
                        f"score needs codes_train and codes_eval (and their labels), got None")
    if num_factors is None:
        num_factors = int(max(np.max(labels_train), np.max(labels_eval))) + 1
    train_votes = _votes(codes_train, labels_train, global_var, active, num_factors, "train")
    eval_votes = _votes(codes_eval, labels_eval, global_var, active, num_factors, "eval")
    classifier = np.argmax(train_votes, axis=0)
    cols = np.arange(train_votes.shape[1])
    return {"train_accuracy": float(train_votes[classifier, cols].sum() / train_votes.sum()),
            "eval_accuracy": float(eval_votes[classifier, cols].sum() / eval_votes.sum()),
            "num_active_dims": int(active.sum())}
