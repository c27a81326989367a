"""BetaVAE score (Higgins et al. 2017), disentanglement_lib's protocol.

One training point: pick a factor k uniformly; draw two batches of `batch_size` factor vectors that
agree on factor k (all else independent); the feature is the mean over the batch of |code_a - code_b|
(shape (D,)); the label is k. A logistic regression (sklearn defaults) is fitted on num_train points and
scored on num_eval fresh points. Chance level is about 1/K, not 0.

Arrays: codes_a, codes_b (P, batch, D) are the codes of the two batches of each of P points; labels (P,).
"""
from __future__ import annotations

import warnings

import numpy as np

from untwine.errors import DataError
from untwine.metrics._common import check_codes


def sample_beta_vae_factors(factor_sizes, num_points: int, batch_size: int, rng: np.random.Generator):
    """Factor classes of the two batches of each point: (P, B, K), (P, B, K), and labels (P,)."""
    sizes = np.asarray(factor_sizes, dtype=np.int64)
    labels = rng.integers(0, len(sizes), size=num_points)
    fa = rng.integers(0, sizes, size=(num_points, batch_size, len(sizes)))
    fb = rng.integers(0, sizes, size=(num_points, batch_size, len(sizes)))
    rows = np.arange(num_points)
    fb[rows, :, labels] = fa[rows, :, labels]
    return fa, fb, labels


def _check_batches(codes_a, codes_b, labels, name: str) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(codes_a), np.asarray(codes_b)
    if a.ndim != 3 or a.shape != b.shape:
        raise DataError(f"{name}: codes_a and codes_b must both have shape (points, batch, D); got "
                        f"{a.shape} and {b.shape}")
    lab = np.asarray(labels)
    if lab.shape != (a.shape[0],) or not np.issubdtype(lab.dtype, np.integer):
        raise DataError(f"{name}: labels must be ({a.shape[0]},) integer factor indices; got {lab.shape} {lab.dtype}")
    feats = np.abs(check_codes(a.reshape(-1, a.shape[2]), f"{name} codes_a")
                   - check_codes(b.reshape(-1, b.shape[2]), f"{name} codes_b"))
    return feats.reshape(a.shape).mean(axis=1), lab.astype(np.int64)


def beta_vae_score(codes_a_train, codes_b_train, labels_train, codes_a_eval, codes_b_eval, labels_eval,
                   max_iter: int = 100) -> dict:
    # scikit-learn is imported here, not at module level, so that the `untwine` command starts fast
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    x_train, y_train = _check_batches(codes_a_train, codes_b_train, labels_train, "train")
    x_eval, y_eval = _check_batches(codes_a_eval, codes_b_eval, labels_eval, "eval")
    if len(np.unique(y_train)) < 2:
        raise DataError("train labels hold a single factor; the BetaVAE classifier needs points for >= 2 factors")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # sklearn defaults, as the protocol
        model = LogisticRegression(max_iter=max_iter).fit(x_train, y_train)
    return {"train_accuracy": float(model.score(x_train, y_train)),
            "eval_accuracy": float(model.score(x_eval, y_eval))}
