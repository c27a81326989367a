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
from untwine.metrics.beta_vae import beta_vae_score, sample_beta_vae_factors
from untwine.metrics.dci import dci, dci_from_importance
from untwine.metrics.factor_r2 import factor_r2
from untwine.metrics.factor_vae import factor_vae_score, sample_factor_vae_factors
from untwine.metrics.mig import mig
from untwine.metrics.mig_sampling import mig_sampling
from untwine.metrics.modularity import modularity_explicitness
from untwine.metrics.protocol import DEFAULTS, METRICS, PRESETS, evaluate, evaluate_arrays, resolve_metrics
from untwine.metrics.sap import sap
from untwine.metrics.unsupervised import (gaussian_total_correlation, gaussian_wasserstein_correlation,
                                          mutual_info_codes, unsupervised_scores)

__all__ = [
    "beta_vae_score", "factor_vae_score", "mig", "mig_sampling", "dci", "dci_from_importance", "sap",
    "modularity_explicitness", "factor_r2", "gaussian_total_correlation", "gaussian_wasserstein_correlation",
    "mutual_info_codes", "unsupervised_scores", "evaluate", "evaluate_arrays", "resolve_metrics",
    "sample_beta_vae_factors", "sample_factor_vae_factors", "METRICS", "PRESETS", "DEFAULTS",
]
