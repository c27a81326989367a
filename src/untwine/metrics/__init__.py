"""Disentanglement metrics: one function per metric on arrays, and `evaluate` for the whole suite.

Every function takes codes (N, D) float and factor classes (N, K) int (train/test pairs where the
protocol has them), uses disentanglement_lib's default parameters, and returns a plain JSON-ready dict.

    from untwine.metrics import evaluate, evaluate_arrays
    scores = evaluate(model.representation, data, metrics="full", seed=0)   # or "standard", "fast", [names]
    scores = evaluate_arrays(codes, factors, metrics=["mig", "dci"])

Scale of each score: 1 = disentangled; constant or noise codes give 0, except the accuracy-type scores
(BetaVAE, FactorVAE, DCI informativeness: chance accuracy; explicitness: 0.5 = chance ROC-AUC; SAP with
classifiers: the ground truth scores 1 - chance) and the unsupervised scores (lower = more factorised).
factor_r2 and explicitness read the factors from the whole code, so a rotation does not lower them.
"""
from __future__ import annotations

import importlib

# Imported on first use, so that the `untwine` command starts without loading scikit-learn.
_LAZY = {
    "beta_vae_score": "beta_vae", "sample_beta_vae_factors": "beta_vae",
    "dci": "dci", "dci_from_importance": "dci",
    "factor_r2": "factor_r2",
    "factor_vae_score": "factor_vae", "sample_factor_vae_factors": "factor_vae",
    "mig": "mig", "mig_sampling": "mig_sampling",
    "modularity_explicitness": "modularity",
    "DEFAULTS": "protocol", "METRICS": "protocol", "PRESETS": "protocol", "evaluate": "protocol",
    "evaluate_arrays": "protocol", "resolve_metrics": "protocol",
    "sap": "sap",
    "gaussian_total_correlation": "unsupervised", "gaussian_wasserstein_correlation": "unsupervised",
    "mutual_info_codes": "unsupervised", "unsupervised_scores": "unsupervised",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"untwine.metrics.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'untwine.metrics' has no attribute {name!r}")


__all__ = sorted(_LAZY)
