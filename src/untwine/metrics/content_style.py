"""Content/style evaluation of grouped models (ML-VAE), on groups whose content was held out.

The protocol (DESIGN section 6):
1. `split_content_combinations` splits the combinations of the content factors into a training
   part and a held-out part; training groups should draw their content from the training part only
   (`sample_groups_with_content`), evaluation groups from the held-out part, so every test group's
   content combination is new to the model (each single factor value still occurs in training,
   unless the holdout is so large that one does not: the probes then cannot predict it).
2. `encode_groups` gives every member's posterior (mu, logvar), latent dims [0, content_dim) content.
3. One function per score, on arrays:
   - `probe_accuracy`: accuracy of each label column from codes (train -> test), by a linear
     (logistic) or a nonlinear (gradient-boosted trees) probe;
   - `content_style_probes`: content factors from the accumulated content code (high is good) and
     from the style code (near chance is good), and the same for the style factors;
   - `group_retrieval`: the nearest neighbour of a member's content code is a member of its group;
   - `accuracy_vs_members`: content probe accuracy when 1..M members are accumulated.
`evaluate_content_style` runs all of it for a model and returns a JSON-ready dict.
Rows of every code array are samples (members); classes are integer factor classes.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from untwine.data.base import GroundTruthData
from untwine.data.factors import FactorSpace
from untwine.data.samplers import resolve_factors
from untwine.errors import DataError
from untwine.metrics._common import check_codes, to_floats
from untwine.objectives.mlvae import accumulate_content


@dataclass
class ContentSplit:
    """`factors`: positions of the content factors (sorted); `train` / `test`: int64 (n, S) content
    class combinations (columns in the order of `factors`)."""

    factors: np.ndarray
    train: np.ndarray
    test: np.ndarray


def split_content_combinations(space: FactorSpace, shared_factors: str | int | Sequence[str | int],
                               holdout_fraction: float = 0.2, seed: int = 0) -> ContentSplit:
    """Hold out a random `holdout_fraction` of the content factors' value combinations (at least one
    combination on each side)."""
    factors = resolve_factors(space, shared_factors)
    if factors.size == 0 or factors.size == space.num_factors:
        raise DataError(f"content factors {factors.tolist()} must be a non-empty proper subset of {list(space.names)}")
    if isinstance(holdout_fraction, bool) or not isinstance(holdout_fraction, (int, float)) \
            or not 0.0 < holdout_fraction < 1.0:
        raise DataError(f"holdout_fraction={holdout_fraction!r}; expected a number strictly between 0 and 1")
    sizes = [space.sizes[i] for i in factors]
    combos = np.indices(sizes).reshape(len(sizes), -1).T.astype(np.int64)  # row-major, last fastest
    if len(combos) < 2:
        raise DataError(f"the content factors {[space.names[i] for i in factors]} have a single combination; "
                        f"nothing can be held out")
    num_test = min(max(int(round(holdout_fraction * len(combos))), 1), len(combos) - 1)
    order = np.random.default_rng(seed).permutation(len(combos))
    return ContentSplit(factors, combos[np.sort(order[num_test:])], combos[np.sort(order[:num_test])])


def sample_groups_with_content(space: FactorSpace, combinations: np.ndarray,
                               shared_factors: str | int | Sequence[str | int], num_groups: int,
                               group_size: int, rng: np.random.Generator) -> np.ndarray:
    """Groups (G, M, K) whose content is a uniformly drawn row of `combinations` (n, S), style free."""
    from untwine.data.samplers import sample_groups
    return sample_groups(space, num_groups, group_size, shared_factors, rng, combinations)


@torch.no_grad()
def encode_groups(model, data: GroundTruthData, classes: np.ndarray,
                  batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Every member's posterior: float32 (mu, logvar), each (G, M, D)."""
    classes = np.asarray(classes)
    if classes.ndim != 3:
        raise DataError(f"group classes must be (groups, members, factors); got shape {classes.shape}")
    g, m, k = classes.shape
    index = data.factor_space.index_of(classes.reshape(g * m, k))
    device = next(iter(model.parameters())).device
    was_training = model.training
    model.eval()
    try:
        parts = [model.encode(data.batch(chunk, device=device)) for chunk in np.array_split(
            index, max(1, -(-len(index) // batch_size)))]
    finally:
        model.train(was_training)
    mu = torch.cat([p[0] for p in parts]).float().cpu().numpy()
    logvar = torch.cat([p[1] for p in parts]).float().cpu().numpy()
    return mu.reshape(g, m, -1), logvar.reshape(g, m, -1)


def _labels(labels, n: int, name: str) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] != n or not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"{name} must be integer classes shaped ({n}, K); got dtype {arr.dtype}, shape {arr.shape}")
    return arr.astype(np.int64, copy=False)


PROBES = ("logistic", "gbt")


def _probe(kind: str, C: float, seed: int):
    """A fresh classifier: `logistic` (linear readout on standardised codes) or `gbt` (histogram
    gradient boosting: reads a factor however the code bends it, as DCI's trees do)."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "logistic":
        return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=300, random_state=seed))
    if kind == "gbt":
        return HistGradientBoostingClassifier(max_iter=100, early_stopping=False, random_state=seed)
    raise DataError(f"probe must be one of {PROBES}; got {kind!r}")


def probe_accuracy(codes_train, labels_train, codes_test, labels_test, seed: int = 0, C: float = 1e4,
                   probe: str = "logistic") -> np.ndarray:
    """Test accuracy of a classifier per label column, shape (K,): `probe` "logistic" (a linear
    readout on standardised codes) or "gbt" (gradient-boosted trees, nonlinear). A column with one
    class in training is predicted as that class.

    C (logistic only) defaults to weak regularisation (1e4): at sklearn's C=1 a perfect one-dimensional
    code of a 40-class factor (dSprites orientation) is read at 35% accuracy, and with few training
    combinations the penalty pushes the probe onto confounded content dims. A linear readout cannot
    carve a many-valued factor out of a code that curves (a position on an arc), which the trees can:
    report both to tell "not in the code" from "not linearly readable"."""
    from sklearn.exceptions import ConvergenceWarning

    if probe not in PROBES:
        raise DataError(f"probe must be one of {PROBES}; got {probe!r}")

    ct, cs = check_codes(codes_train, "codes_train"), check_codes(codes_test, "codes_test", min_samples=1)
    if ct.shape[1] != cs.shape[1]:
        raise DataError(f"train codes have {ct.shape[1]} dims but test codes have {cs.shape[1]}")
    yt = _labels(labels_train, len(ct), "labels_train")
    ys = _labels(labels_test, len(cs), "labels_test")
    if yt.shape[1] != ys.shape[1]:
        raise DataError(f"train labels have {yt.shape[1]} columns but test labels have {ys.shape[1]}")
    accuracy = np.empty(yt.shape[1])
    for j in range(yt.shape[1]):
        if np.unique(yt[:, j]).size < 2:
            accuracy[j] = np.mean(ys[:, j] == yt[0, j])
            continue
        clf = _probe(probe, C, seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(ct, yt[:, j])
        accuracy[j] = np.mean(clf.predict(cs) == ys[:, j])
    return accuracy


def _majority_rate(train: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Accuracy of always predicting each column's most frequent training class (chance level)."""
    return np.array([np.mean(test[:, j] == np.bincount(train[:, j]).argmax()) for j in range(train.shape[1])])


def content_style_probes(content_train, style_train, factors_train, content_test, style_test, factors_test,
                         content_factors: Sequence[int], seed: int = 0, probe: str = "logistic") -> dict:
    """Probe the content factors and the style factors from the content code and from the style code.

    One row per member: `content_*` its group's accumulated content code, `style_*` its own style
    code, `factors_*` (N, K) its factor classes; `content_factors` the positions of the content
    factors (the others are style). Returns mean accuracies `content_from_content` (high: content
    is in the content code), `content_from_style` (near `chance_content`: style does not leak
    content), `style_from_style`, `style_from_content` (near `chance_style`), and per-factor lists.
    """
    ft = _labels(factors_train, len(np.asarray(content_train)), "factors_train")
    fs = _labels(factors_test, len(np.asarray(content_test)), "factors_test")
    content = np.unique(np.asarray(content_factors, dtype=np.int64))
    if content.size == 0 or content.min() < 0 or content.max() >= ft.shape[1] or content.size == ft.shape[1]:
        raise DataError(f"content_factors {list(content_factors)} must be a non-empty proper subset of the "
                        f"{ft.shape[1]} factor columns")
    style = np.setdiff1d(np.arange(ft.shape[1]), content)
    out: dict = {}
    for code_name, (train, test) in {"content": (content_train, content_test),
                                     "style": (style_train, style_test)}.items():
        for factor_name, cols in {"content": content, "style": style}.items():
            acc = probe_accuracy(train, ft[:, cols], test, fs[:, cols], seed=seed, probe=probe)
            out[f"{factor_name}_from_{code_name}"] = float(acc.mean())
            out[f"{factor_name}_from_{code_name}_per_factor"] = to_floats(acc)
    out["chance_content"] = float(_majority_rate(ft[:, content], fs[:, content]).mean())
    out["chance_style"] = float(_majority_rate(ft[:, style], fs[:, style]).mean())
    return out


def group_retrieval(codes, group_ids) -> dict:
    """Share of members whose nearest other member (Euclidean, in content space) is of the same
    group, and the chance rate of that (pairs of the same group among all other members)."""
    c = check_codes(codes, "codes")
    ids = np.asarray(group_ids)
    if ids.shape != (len(c),):
        raise DataError(f"group_ids must be one id per code row, shape ({len(c)},); got {ids.shape}")
    t = torch.from_numpy(c)
    dist = torch.cdist(t, t)
    dist.fill_diagonal_(float("inf"))
    nearest = dist.argmin(dim=1).numpy()
    _, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
    chance = float(np.mean((counts[inverse] - 1) / (len(c) - 1)))
    return {"retrieval": float(np.mean(ids[nearest] == ids)), "chance": chance}


def accuracy_vs_members(mu_train, logvar_train, content_train, mu_test, logvar_test, content_test,
                        seed: int = 0, probe: str = "logistic") -> dict:
    """Content probe accuracy against the number of members accumulated.

    mu_*, logvar_*: content posteriors (G, M, Dc); content_*: (G, S) content classes per group. For
    m = 1..M the first m members of each group are accumulated (product of Gaussians), a probe is
    fitted on the training groups' accumulated means and scored on the test groups'. Returns arrays
    `members` (M,), `accuracy` (M,) (mean over content factors) and `per_factor` (M, S).
    """
    arrays = [np.asarray(a, dtype=np.float32) for a in (mu_train, logvar_train, mu_test, logvar_test)]
    if any(a.ndim != 3 for a in arrays) or arrays[0].shape != arrays[1].shape or arrays[2].shape != arrays[3].shape:
        raise DataError(f"posteriors must be (groups, members, dims) with mu and logvar alike; got shapes "
                        f"{[a.shape for a in arrays]}")
    members = min(arrays[0].shape[1], arrays[2].shape[1])
    per_factor = []
    for m in range(1, members + 1):
        codes = [accumulate_content(torch.from_numpy(mu[:, :m]), torch.from_numpy(lv[:, :m]))[0].numpy()
                 for mu, lv in (arrays[:2], arrays[2:])]
        per_factor.append(probe_accuracy(codes[0], content_train, codes[1], content_test, seed=seed,
                                         probe=probe))
    per_factor = np.asarray(per_factor)
    return {"members": np.arange(1, members + 1), "accuracy": per_factor.mean(axis=1), "per_factor": per_factor}


def evaluate_content_style(model, data: GroundTruthData, split: ContentSplit, content_dim: int,
                           num_groups: int = 500, group_size: int = 5, seed: int = 0,
                           probes: Sequence[str] = ("logistic",)) -> dict:
    """The whole protocol for a grouped model whose first `content_dim` latent dims are content:
    probes trained on groups of training content and tested on groups of held-out content; group
    retrieval (a hit: the neighbour has the same content combination) and the accuracy curve on the
    held-out groups. The probes and the curve are computed by every classifier in `probes` (see
    `probe_accuracy`): the first one's at the top level, all of them under "by_probe". JSON-ready."""
    space = data.factor_space
    rng = np.random.default_rng(seed)
    c = content_dim
    sets = []  # (mu, logvar, classes) for training content, then held-out content
    for combos in (split.train, split.test):
        classes = sample_groups_with_content(space, combos, split.factors, num_groups, group_size, rng)
        mu, logvar = encode_groups(model, data, classes)
        if not 1 <= c < mu.shape[2]:
            raise DataError(f"content_dim={c} must be in 1..{mu.shape[2] - 1} for a {mu.shape[2]}-dim model")
        sets.append((mu, logvar, classes))

    def member_rows(mu, logvar, classes):
        content = accumulate_content(torch.from_numpy(mu[..., :c]), torch.from_numpy(logvar[..., :c]))[0].numpy()
        return (np.repeat(content, group_size, axis=0), mu[..., c:].reshape(len(content) * group_size, -1),
                classes.reshape(-1, space.num_factors))

    if not probes or any(p not in PROBES for p in probes):
        raise DataError(f"probes must be a non-empty list drawn from {PROBES}; got {list(probes)}")
    test_mu, test_logvar, test_classes = sets[1]
    train_mu, train_logvar, train_classes = sets[0]
    names = [space.names[i] for i in split.factors]
    by_probe = {}
    for probe in probes:
        scores = content_style_probes(*member_rows(*sets[0]), *member_rows(*sets[1]), split.factors, seed=seed,
                                      probe=probe)
        curve = accuracy_vs_members(train_mu[..., :c], train_logvar[..., :c], train_classes[:, 0, split.factors],
                                    test_mu[..., :c], test_logvar[..., :c], test_classes[:, 0, split.factors],
                                    seed=seed, probe=probe)
        scores["accuracy_vs_members"] = {"members": [int(m) for m in curve["members"]],
                                         "accuracy": to_floats(curve["accuracy"]),
                                         "per_factor": [to_floats(r) for r in curve["per_factor"]],
                                         "factor_names": names}
        by_probe[probe] = scores
    out = dict(by_probe[probes[0]])  # the first probe's scores at the top level; every probe's in `by_probe`
    out["probe"] = probes[0]
    out["by_probe"] = by_probe
    content_ids = space.index_of(np.where(np.isin(np.arange(space.num_factors), split.factors),
                                          test_classes, 0).reshape(-1, space.num_factors))
    out["group_retrieval"] = group_retrieval(test_mu[..., :c].reshape(-1, c), content_ids)
    out["content_factors"] = names
    return out
