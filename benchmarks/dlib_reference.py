"""A faithful numpy/scikit-learn re-implementation of disentanglement_lib's metric protocols.

disentanglement_lib (google-research/disentanglement_lib) installs but cannot run here (TF1 and
gin), so this module re-does what its evaluation code does, metric by metric, with its default gin
parameters (config/unsupervised_study_v1/metric_configs/*.gin and the abstract_reasoning study's
factor_vae_metric.gin / dci.gin), as the comparison target of benchmarks/bench_metrics.py:

- every metric samples its own factors and encodes its own observations, in the library's loop
  structure (generate_batch_factor_code in batches of 16; one pair of 64-batches per BetaVAE point;
  one 64-batch per FactorVAE point), with its own np.random.RandomState(seed) as
  evaluation/evaluate.py gives each metric (evaluation.random_seed = 0);
- factors are class indices drawn column by column with random_state.randint, as
  data/ground_truth/util.SplitDiscreteStateSpace.sample_latent_factors does;
- DCI uses one sklearn GradientBoostingClassifier() per factor (the slow part, on purpose).

Known quirks of the original are kept, not fixed (they are what "disentanglement_lib's number"
means): FactorVAE's num_active_dims is len() of a boolean mask, i.e. always the code size; MIG and
modularity discretise each code dimension into 20 equal-width bins with np.digitize on the
histogram's left edges; explicitness standardises with the train mean and std (division by zero for
a constant dimension, as in the original). One unavoidable difference: the library was run with
scikit-learn 0.20, whose LogisticRegression() default was liblinear one-vs-rest; the same call on
scikit-learn >= 0.22 is lbfgs multinomial. We call LogisticRegression() with today's defaults, as the
code reads.

Representation functions take the observation batch the dataset adapter produces (a float32
torch tensor (N, C, H, W) in [0, 1], untwine's convention) and return numpy codes (N, D).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import scipy.stats
import sklearn.metrics
import torch
from sklearn import linear_model, svm
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import MultiLabelBinarizer

RepresentationFn = Callable[[object], np.ndarray]


# -- dataset adapter: disentanglement_lib's GroundTruthData interface over an untwine dataset --------
class DlibGroundTruthData:
    """disentanglement_lib's ground-truth interface (data/ground_truth/ground_truth_data.py).

    Wraps an untwine GroundTruthData; observations are untwine float batches (N, C, H, W).
    """

    def __init__(self, data):
        self.data = data
        self.factors_num_values = list(data.factor_space.sizes)

    @property
    def num_factors(self) -> int:
        return len(self.factors_num_values)

    def sample_factors(self, num: int, random_state: np.random.RandomState) -> np.ndarray:
        # util.SplitDiscreteStateSpace.sample_latent_factors: one randint call per factor column.
        factors = np.zeros((num, self.num_factors), dtype=np.int64)
        for i, n in enumerate(self.factors_num_values):
            factors[:, i] = random_state.randint(n, size=num)
        return factors

    def sample_observations_from_factors(self, factors: np.ndarray, random_state) -> torch.Tensor:
        # All dSprites/Shapes3D factors are latent, so nothing else is drawn (the original draws the
        # one-valued dSprites colour factor, which consumes no randomness).
        return self.data.observations(factors)

    def sample(self, num: int, random_state):
        factors = self.sample_factors(num, random_state)
        return factors, self.sample_observations_from_factors(factors, random_state)

    def sample_observations(self, num: int, random_state):
        return self.sample(num, random_state)[1]


class CountingRepresentation:
    """Wraps a torch representation (batch -> codes) as dlib's numpy representation_function,
    counting every image passed through the encoder (the cost the protocol pays)."""

    def __init__(self, representation: Callable[[torch.Tensor], torch.Tensor]):
        self.representation = representation
        self.encoded = 0
        self.calls = 0

    def __call__(self, observations: torch.Tensor) -> np.ndarray:
        self.encoded += int(observations.shape[0])
        self.calls += 1
        with torch.no_grad():
            codes = self.representation(observations)
        return np.asarray(codes.detach().cpu().numpy(), dtype=np.float64)


# -- evaluation/metrics/utils.py ---------------------------------------------------------------------
def generate_batch_factor_code(ground_truth_data, representation_function, num_points, random_state,
                               batch_size):
    """utils.generate_batch_factor_code: sample and encode num_points in batches of batch_size.

    Returns codes (num_codes, num_points) and factors (num_factors, num_points), transposed as there.
    """
    codes, factors = [], []
    done = 0
    while done < num_points:
        n = min(num_points - done, batch_size)
        f, obs = ground_truth_data.sample(n, random_state)
        factors.append(f)
        codes.append(representation_function(obs))
        done += n
    return np.transpose(np.vstack(codes)), np.transpose(np.vstack(factors))


def histogram_discretize(target, num_bins=20):
    """utils._histogram_discretize (the gin 'discretizer' with num_bins = 20): per row, digitize on
    the left edges of a num_bins equal-width histogram, giving bins 1..num_bins."""
    discretized = np.zeros_like(target)
    for i in range(target.shape[0]):
        edges = np.histogram(target[i, :], num_bins)[1][:-1]
        discretized[i, :] = np.digitize(target[i, :], edges)
    return discretized


def make_discretizer(target, num_bins=20, discretizer_fn=histogram_discretize):
    """utils.make_discretizer with the gin defaults of every study (histogram, 20 bins)."""
    return discretizer_fn(target, num_bins)


def discrete_mutual_info(mus, ys):
    """utils.discrete_mutual_info: sklearn mutual_info_score (nats) for each (code, factor)."""
    m = np.zeros([mus.shape[0], ys.shape[0]])
    for i in range(mus.shape[0]):
        for j in range(ys.shape[0]):
            m[i, j] = sklearn.metrics.mutual_info_score(ys[j, :], mus[i, :])
    return m


def discrete_entropy(ys):
    """utils.discrete_entropy: H(y) as mutual_info_score(y, y)."""
    return np.array([sklearn.metrics.mutual_info_score(y, y) for y in ys])


def normalize_data(data, mean=None, stddev=None):
    """utils.normalize_data: standardise each row (code dimension)."""
    if mean is None:
        mean = np.mean(data, axis=1)
    if stddev is None:
        stddev = np.std(data, axis=1)
    return (data - mean[:, np.newaxis]) / stddev[:, np.newaxis], mean, stddev


# -- evaluation/metrics/beta_vae.py ------------------------------------------------------------------
def _beta_vae_point(ground_truth_data, representation_function, batch_size, random_state):
    # beta_vae._generate_training_sample: fix one factor across two batches, mean |z1 - z2|.
    index = random_state.randint(ground_truth_data.num_factors)
    factors1 = ground_truth_data.sample_factors(batch_size, random_state)
    factors2 = ground_truth_data.sample_factors(batch_size, random_state)
    factors2[:, index] = factors1[:, index]
    obs1 = ground_truth_data.sample_observations_from_factors(factors1, random_state)
    obs2 = ground_truth_data.sample_observations_from_factors(factors2, random_state)
    feature = np.mean(np.abs(representation_function(obs1) - representation_function(obs2)), axis=0)
    return index, feature


def _beta_vae_batch(ground_truth_data, representation_function, batch_size, num_points, random_state):
    # beta_vae._generate_training_batch: one point per loop iteration.
    points, labels = None, np.zeros(num_points, dtype=np.int64)
    for i in range(num_points):
        labels[i], feature = _beta_vae_point(ground_truth_data, representation_function, batch_size,
                                             random_state)
        if points is None:
            points = np.zeros((num_points, feature.shape[0]))
        points[i, :] = feature
    return points, labels


def compute_beta_vae_sklearn(ground_truth_data, representation_function, random_state,
                             batch_size=64, num_train=10000, num_eval=5000):
    """beta_vae.compute_beta_vae_sklearn (gin beta_vae_sklearn: batch 64, train 10000, eval 5000)."""
    train_points, train_labels = _beta_vae_batch(ground_truth_data, representation_function,
                                                 batch_size, num_train, random_state)
    model = linear_model.LogisticRegression(random_state=random_state)
    model.fit(train_points, train_labels)
    train_accuracy = np.mean(model.predict(train_points) == train_labels)
    eval_points, eval_labels = _beta_vae_batch(ground_truth_data, representation_function,
                                               batch_size, num_eval, random_state)
    eval_accuracy = model.score(eval_points, eval_labels)
    return {"train_accuracy": float(train_accuracy), "eval_accuracy": float(eval_accuracy)}


# -- evaluation/metrics/factor_vae.py ----------------------------------------------------------------
def _prune_dims(variances, threshold=0.05):
    # factor_vae._prune_dims with gin prune_dims.threshold = 0.05: keep std >= threshold.
    return np.sqrt(variances) >= threshold


def _compute_variances(ground_truth_data, representation_function, batch_size, random_state):
    # factor_vae._compute_variances: one call on batch_size (= num_variance_estimate) observations.
    observations = ground_truth_data.sample_observations(batch_size, random_state)
    return np.var(representation_function(observations), axis=0, ddof=1)


def _factor_vae_point(ground_truth_data, representation_function, batch_size, random_state,
                      global_variances, active_dims):
    # factor_vae._generate_training_sample: fix one factor at the first sample's value, argmin of
    # the normalised variance over active dimensions (an index *into the active dimensions*).
    factor_index = random_state.randint(ground_truth_data.num_factors)
    factors = ground_truth_data.sample_factors(batch_size, random_state)
    factors[:, factor_index] = factors[0, factor_index]
    observations = ground_truth_data.sample_observations_from_factors(factors, random_state)
    local_variances = np.var(representation_function(observations), axis=0, ddof=1)
    argmin = np.argmin(local_variances[active_dims] / global_variances[active_dims])
    return factor_index, argmin


def _factor_vae_votes(ground_truth_data, representation_function, batch_size, num_points,
                      random_state, global_variances, active_dims):
    votes = np.zeros((ground_truth_data.num_factors, global_variances.shape[0]), dtype=np.int64)
    for _ in range(num_points):
        factor_index, argmin = _factor_vae_point(ground_truth_data, representation_function,
                                                 batch_size, random_state, global_variances,
                                                 active_dims)
        votes[factor_index, argmin] += 1
    return votes


def compute_factor_vae(ground_truth_data, representation_function, random_state, batch_size=64,
                       num_train=10000, num_eval=5000, num_variance_estimate=10000):
    """factor_vae.compute_factor_vae (gin factor_vae_score: 64, 10000, 5000, 10000; prune 0.05)."""
    global_variances = _compute_variances(ground_truth_data, representation_function,
                                          num_variance_estimate, random_state)
    active_dims = _prune_dims(global_variances)
    if not active_dims.any():
        return {"train_accuracy": 0.0, "eval_accuracy": 0.0, "num_active_dims": 0}
    training_votes = _factor_vae_votes(ground_truth_data, representation_function, batch_size,
                                       num_train, random_state, global_variances, active_dims)
    classifier = np.argmax(training_votes, axis=0)
    other_index = np.arange(training_votes.shape[1])
    train_accuracy = np.sum(training_votes[classifier, other_index]) / np.sum(training_votes)
    eval_votes = _factor_vae_votes(ground_truth_data, representation_function, batch_size,
                                   num_eval, random_state, global_variances, active_dims)
    eval_accuracy = np.sum(eval_votes[classifier, other_index]) / np.sum(eval_votes)
    # len() of the boolean mask: always the code size (the original's quirk, kept).
    return {"train_accuracy": float(train_accuracy), "eval_accuracy": float(eval_accuracy),
            "num_active_dims": len(active_dims)}


# -- evaluation/metrics/mig.py -----------------------------------------------------------------------
def mig_from_codes(mus_train, ys_train, num_bins=20):
    """The array part of mig.compute_mig: mean over factors of (top1 - top2 MI) / H(factor)."""
    discretized_mus = make_discretizer(mus_train, num_bins)
    m = discrete_mutual_info(discretized_mus, ys_train)  # [num_codes, num_factors]
    entropy = discrete_entropy(ys_train)
    sorted_m = np.sort(m, axis=0)[::-1]
    return float(np.mean(np.divide(sorted_m[0, :] - sorted_m[1, :], entropy[:])))


def compute_mig(ground_truth_data, representation_function, random_state, num_train=10000,
                batch_size=16):
    """mig.compute_mig (gin mig: num_train 10000, histogram discretizer with 20 bins)."""
    mus_train, ys_train = generate_batch_factor_code(ground_truth_data, representation_function,
                                                     num_train, random_state, batch_size)
    return {"discrete_mig": mig_from_codes(mus_train, ys_train)}


# -- evaluation/metrics/dci.py -----------------------------------------------------------------------
def compute_importance_gbt(x_train, y_train, x_test, y_test, progress: Callable[[], None] | None = None):
    """dci.compute_importance_gbt: one default GradientBoostingClassifier per factor."""
    num_factors, num_codes = y_train.shape[0], x_train.shape[0]
    importance_matrix = np.zeros(shape=[num_codes, num_factors], dtype=np.float64)
    train_loss, test_loss = [], []
    for i in range(num_factors):
        model = GradientBoostingClassifier()
        model.fit(x_train.T, y_train[i, :])
        importance_matrix[:, i] = np.abs(model.feature_importances_)
        train_loss.append(np.mean(model.predict(x_train.T) == y_train[i, :]))
        test_loss.append(np.mean(model.predict(x_test.T) == y_test[i, :]))
        if progress is not None:
            progress()
    return importance_matrix, np.mean(train_loss), np.mean(test_loss)


def disentanglement(importance_matrix):
    """dci.disentanglement: 1 - entropy of each code's row (base num_factors), weighted by row mass."""
    per_code = 1.0 - scipy.stats.entropy(importance_matrix.T + 1e-11, base=importance_matrix.shape[1])
    if importance_matrix.sum() == 0.0:
        importance_matrix = np.ones_like(importance_matrix)
    code_importance = importance_matrix.sum(axis=1) / importance_matrix.sum()
    return float(np.sum(per_code * code_importance))


def completeness(importance_matrix):
    """dci.completeness: 1 - entropy of each factor's column (base num_codes), weighted by mass."""
    per_factor = 1.0 - scipy.stats.entropy(importance_matrix + 1e-11, base=importance_matrix.shape[0])
    if importance_matrix.sum() == 0.0:
        importance_matrix = np.ones_like(importance_matrix)
    factor_importance = importance_matrix.sum(axis=0) / importance_matrix.sum()
    return float(np.sum(per_factor * factor_importance))


def dci_from_codes(mus_train, ys_train, mus_test, ys_test, progress=None):
    """The array part of dci.compute_dci."""
    importance_matrix, train_acc, test_acc = compute_importance_gbt(mus_train, ys_train, mus_test,
                                                                   ys_test, progress)
    return {"informativeness_train": float(train_acc), "informativeness_test": float(test_acc),
            "disentanglement": disentanglement(importance_matrix),
            "completeness": completeness(importance_matrix)}


def compute_dci(ground_truth_data, representation_function, random_state, num_train=10000,
                num_test=5000, batch_size=16, progress=None):
    """dci.compute_dci (gin dci: num_train 10000, num_test 5000)."""
    mus_train, ys_train = generate_batch_factor_code(ground_truth_data, representation_function,
                                                     num_train, random_state, batch_size)
    mus_test, ys_test = generate_batch_factor_code(ground_truth_data, representation_function,
                                                   num_test, random_state, batch_size)
    return dci_from_codes(mus_train, ys_train, mus_test, ys_test, progress)


# -- evaluation/metrics/sap_score.py -----------------------------------------------------------------
def sap_score_matrix(mus, ys, mus_test, ys_test, continuous_factors=False):
    """sap_score._compute_score_matrix: per (code, factor), a 1-D LinearSVC's test accuracy
    (discrete factors) or the squared correlation (continuous)."""
    score_matrix = np.zeros([mus.shape[0], ys.shape[0]])
    for i in range(mus.shape[0]):
        for j in range(ys.shape[0]):
            mu_i, y_j = mus[i, :], ys[j, :]
            if continuous_factors:
                cov = np.cov(mu_i, y_j, ddof=1)
                score_matrix[i, j] = cov[0, 1] ** 2 / (cov[0, 0] * cov[1, 1]) if cov[0, 0] > 1e-12 else 0.0
            else:
                classifier = svm.LinearSVC(C=0.01, class_weight="balanced")
                classifier.fit(mu_i[:, np.newaxis], y_j)
                pred = classifier.predict(mus_test[i, :][:, np.newaxis])
                score_matrix[i, j] = np.mean(pred == ys_test[j, :])
    return score_matrix


def sap_from_codes(mus, ys, mus_test, ys_test, continuous_factors=False):
    """sap_score._compute_avg_diff_top_two of the score matrix."""
    sorted_matrix = np.sort(sap_score_matrix(mus, ys, mus_test, ys_test, continuous_factors), axis=0)
    return float(np.mean(sorted_matrix[-1, :] - sorted_matrix[-2, :]))


def compute_sap(ground_truth_data, representation_function, random_state, num_train=10000,
                num_test=5000, batch_size=16, continuous_factors=False):
    """sap_score.compute_sap (gin sap_score: 10000, 5000, continuous_factors False)."""
    mus, ys = generate_batch_factor_code(ground_truth_data, representation_function, num_train,
                                         random_state, batch_size)
    mus_test, ys_test = generate_batch_factor_code(ground_truth_data, representation_function,
                                                   num_test, random_state, batch_size)
    return {"SAP_score": sap_from_codes(mus, ys, mus_test, ys_test, continuous_factors)}


# -- evaluation/metrics/modularity_explicitness.py ---------------------------------------------------
def modularity(mutual_information):
    """modularity_explicitness.modularity: 1 - (sum of squared MI but the max) / (max * (K - 1))."""
    squared_mi = np.square(mutual_information)
    max_squared_mi = np.max(squared_mi, axis=1)
    numerator = np.sum(squared_mi, axis=1) - max_squared_mi
    denominator = max_squared_mi * (squared_mi.shape[1] - 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):  # the original divides by zero here too
        modularity_score = 1.0 - numerator / denominator
    modularity_score[max_squared_mi == 0.0] = 0.0
    return float(np.mean(modularity_score))


def explicitness_per_factor(mus_train, y_train, mus_test, y_test):
    """modularity_explicitness.explicitness_per_factor: one-vs-rest ROC-AUC of a logistic regression."""
    clf = linear_model.LogisticRegression().fit(mus_train.T, y_train)
    mlb = MultiLabelBinarizer()
    roc_train = roc_auc_score(mlb.fit_transform(np.expand_dims(y_train, 1)), clf.predict_proba(mus_train.T))
    roc_test = roc_auc_score(mlb.fit_transform(np.expand_dims(y_test, 1)), clf.predict_proba(mus_test.T))
    return roc_train, roc_test


def modularity_explicitness_from_codes(mus_train, ys_train, mus_test, ys_test, num_bins=20):
    mutual_information = discrete_mutual_info(make_discretizer(mus_train, num_bins), ys_train)
    mus_train_norm, mean_mus, stddev_mus = normalize_data(mus_train)
    mus_test_norm, _, _ = normalize_data(mus_test, mean_mus, stddev_mus)
    scores = np.array([explicitness_per_factor(mus_train_norm, ys_train[i, :], mus_test_norm, ys_test[i, :])
                       for i in range(ys_train.shape[0])])
    return {"modularity_score": modularity(mutual_information),
            "explicitness_score_train": float(np.mean(scores[:, 0])),
            "explicitness_score_test": float(np.mean(scores[:, 1]))}


def compute_modularity_explicitness(ground_truth_data, representation_function, random_state,
                                    num_train=10000, num_test=5000, batch_size=16):
    """modularity_explicitness.compute_modularity_explicitness (gin: 10000, 5000, 20 bins)."""
    mus_train, ys_train = generate_batch_factor_code(ground_truth_data, representation_function,
                                                     num_train, random_state, batch_size)
    mus_test, ys_test = generate_batch_factor_code(ground_truth_data, representation_function,
                                                   num_test, random_state, batch_size)
    return modularity_explicitness_from_codes(mus_train, ys_train, mus_test, ys_test)


# -- evaluation/evaluate.py: one fresh RandomState(seed) per metric ----------------------------------
METRICS = {
    "beta_vae": compute_beta_vae_sklearn,
    "factor_vae": compute_factor_vae,
    "mig": compute_mig,
    "dci": compute_dci,
    "sap": compute_sap,
    "modularity_explicitness": compute_modularity_explicitness,
}


@dataclass
class ReferenceResult:
    scores: dict = field(default_factory=dict)     # metric -> score dict
    seconds: dict = field(default_factory=dict)    # metric -> wall seconds
    encoded: dict = field(default_factory=dict)    # metric -> images through the encoder


def evaluate_reference(data, representation, metrics=None, seed: int = 0, overrides: dict | None = None,
                       progress=None) -> ReferenceResult:
    """Score `representation` (torch batch -> codes) on untwine dataset `data` with each metric's
    disentanglement_lib protocol, each with its own RandomState(seed) and its own sampling/encoding.

    overrides: metric -> keyword arguments (e.g. smaller num_train for a quick run).
    progress: optional callable(metric_name) called before each metric starts.
    """
    gt = DlibGroundTruthData(data)
    out = ReferenceResult()
    for name in metrics or METRICS:
        if progress is not None:
            progress(name)
        rep = CountingRepresentation(representation)
        kwargs = dict((overrides or {}).get(name, {}))
        t0 = time.perf_counter()
        out.scores[name] = METRICS[name](gt, rep, np.random.RandomState(seed), **kwargs)
        out.seconds[name] = time.perf_counter() - t0
        out.encoded[name] = rep.encoded
    return out
