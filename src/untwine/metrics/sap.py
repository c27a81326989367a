"""Separated Attribute Predictability (Kumar et al. 2018), disentanglement_lib's protocol.

Score matrix S[d, k]: for discrete factors, the test accuracy of LinearSVC(C=0.01, balanced) predicting
factor k from code dimension d alone; for continuous factors, the squared correlation. SAP = mean over
factors of the gap between the best and second-best dimension.
"""
from __future__ import annotations

import warnings

import numpy as np

from untwine.metrics._common import check_train_test, to_floats


def sap_from_scores(score_matrix: np.ndarray) -> float:
    top = -np.sort(-score_matrix, axis=0)
    second = top[1] if score_matrix.shape[0] > 1 else np.zeros(score_matrix.shape[1])
    return float(np.mean(top[0] - second))


def _squared_correlation(codes: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """(D, K) squared Pearson correlations, 0 for a constant code dimension (as disentanglement_lib)."""
    c = codes - codes.mean(axis=0)
    f = factors - factors.mean(axis=0)
    var_c = (c * c).sum(axis=0) / (len(c) - 1)
    var_f = (f * f).sum(axis=0) / (len(f) - 1)
    cov = c.T @ f / (len(c) - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = cov ** 2 / (var_c[:, None] * var_f[None, :])
    return np.where(var_c[:, None] > 1e-12, out, 0.0)


def sap(codes_train, factors_train, codes_test, factors_test, continuous: bool = False,
        C: float = 0.01) -> dict:
    """SAP score; `continuous=True` uses squared correlations on the train set instead of classifiers."""
    # scikit-learn is imported here, not at module level, so that the `untwine` command starts fast
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.svm import LinearSVC

    ct, ft, cs, fs = check_train_test(codes_train, factors_train, codes_test, factors_test)
    if continuous:
        scores = _squared_correlation(ct, ft.astype(np.float64))
    else:
        scores = np.zeros((ct.shape[1], ft.shape[1]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # liblinear at C=0.01 is the protocol
            for d in range(ct.shape[1]):
                for k in range(ft.shape[1]):
                    clf = LinearSVC(C=C, class_weight="balanced").fit(ct[:, d:d + 1], ft[:, k])
                    scores[d, k] = np.mean(clf.predict(cs[:, d:d + 1]) == fs[:, k])
    return {"sap": sap_from_scores(scores), "score_matrix": [to_floats(r) for r in scores]}
