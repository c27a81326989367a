"""Modularity and explicitness (Ridgeway and Zemel 2018), disentanglement_lib's protocol.

Modularity: from the (D, K) discrete mutual information of 20-bin codes and factors, per code dim
1 - (sum_k m_k^2 - max_k m_k^2) / (max_k m_k^2 (K - 1)), 0 for a dim with no information; mean over dims.
Explicitness: per factor a one-vs-rest-scored logistic regression on the standardised code; macro
ROC-AUC over classes; mean over factors. Chance level is 0.5, not 0.
"""
from __future__ import annotations

import warnings

import numpy as np

from untwine.errors import DataError
from untwine.metrics._common import (check_train_test, discrete_mutual_info, histogram_discretize,
                                     to_floats)


def modularity_from_mutual_info(mi: np.ndarray) -> float:
    """Modularity from a (D, K) mutual-information matrix."""
    sq = np.square(mi)
    top = sq.max(axis=1)
    k = mi.shape[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        delta = (sq.sum(axis=1) - top) / (top * (k - 1.0)) if k > 1 else np.zeros_like(top)
    score = np.where(top > 0, 1.0 - delta, 0.0)
    return float(score.mean())


def _macro_auc(y: np.ndarray, proba: np.ndarray, classes: np.ndarray) -> float:
    """Macro ROC-AUC over the classes that have both positives and negatives in y."""
    # scikit-learn is imported here, not at module level, so that the `untwine` command starts fast
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import label_binarize

    onehot = label_binarize(y, classes=classes)
    if len(classes) == 2:                          # label_binarize gives one column for two classes
        onehot = np.column_stack([1 - onehot[:, 0], onehot[:, 0]])
    ok = (onehot.sum(axis=0) > 0) & (onehot.sum(axis=0) < len(y))
    return float(roc_auc_score(onehot[:, ok], proba[:, ok], average="macro")) if ok.sum() > 1 else \
        float(roc_auc_score(onehot[:, ok][:, 0], proba[:, ok][:, 0]))


def modularity_explicitness(codes_train, factors_train, codes_test, factors_test, num_bins: int = 20) -> dict:
    # scikit-learn is imported here, not at module level, so that the `untwine` command starts fast
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    ct, ft, cs, fs = check_train_test(codes_train, factors_train, codes_test, factors_test)
    mi = discrete_mutual_info(histogram_discretize(ct, num_bins), ft)
    mean, std = ct.mean(axis=0), ct.std(axis=0)
    std = np.where(std > 0, std, 1.0)              # a constant dim stays 0 after centring
    xt, xs = (ct - mean) / std, (cs - mean) / std
    train, test = np.zeros(ft.shape[1]), np.zeros(ft.shape[1])
    # one BLAS/OpenMP thread: the regressions are small (10,000 x D), and threads on a busy machine
    # made them 7x slower here (13 s vs 1.9 s for dSprites); the result is the same
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore", ConvergenceWarning)  # sklearn defaults, as the protocol
        for k in range(ft.shape[1]):
            clf = LogisticRegression().fit(xt, ft[:, k])
            train[k] = _macro_auc(ft[:, k], clf.predict_proba(xt), clf.classes_)
            test[k] = _macro_auc(fs[:, k], clf.predict_proba(xs), clf.classes_) \
                if np.isin(fs[:, k], clf.classes_).all() else np.nan
    if np.isnan(test).any():
        check_test_classes_seen(ft, fs)
    return {"modularity": modularity_from_mutual_info(mi),
            "explicitness_train": float(train.mean()), "explicitness_test": float(test.mean()),
            "explicitness_per_factor": to_floats(test)}


def check_test_classes_seen(train_factors: np.ndarray, test_factors: np.ndarray) -> None:
    """Explicitness scores the test samples with classifiers fitted on the training samples: a class
    that only the test samples hold cannot be scored. Raised before any metric runs."""
    for k in range(train_factors.shape[1]):
        unseen = np.setdiff1d(np.unique(test_factors[:, k]), np.unique(train_factors[:, k]))
        if unseen.size:
            raise DataError(
                f"factor column {k} has test classes never seen in training ({unseen.size} of them, e.g. class "
                f"{int(unseen[0])}) among {len(train_factors)} training and {len(test_factors)} test samples; "
                f"give more samples (each class of every factor needs several), or leave modularity_explicitness "
                f"out (--metrics mig,dci,sap,...)")
