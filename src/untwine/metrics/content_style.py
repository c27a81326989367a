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

Unseen means unseen: the split must be the one the model was trained with. A grouped run's config
holds it (batch.shared_factors, batch.holdout_fraction, batch.holdout_seed: the engine's
GroupSampler draws training content from `split.train` only), so `content_split_from_config(cfg,
data)` rebuilds it, and `evaluate_content_style(model, data, config=cfg)` derives the split and
content_dim from the run and refuses (DataError) a split whose test content the run trained on
(every combination, when the run had batch.holdout_fraction = 0). Without a config or
`trained_content` nothing can be checked, and it says so loudly (`UnverifiedContentWarning`).

Chance levels: `chance_*` is the accuracy of always predicting the most frequent training class.
On held-out content that is biased low: the combinations held out are exactly the ones missing from
training, so the majority training class is under-represented in the test groups. Beside it,
`permutation_*` is the probe itself fitted on training labels permuted across rows (the code then
carries nothing about them) and scored on the true test labels: the accuracy an uninformative
code gets from this probe and these class frequencies, the baseline to compare the "near chance"
scores with.
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


class UnverifiedContentWarning(UserWarning):
    """evaluate_content_style could not check that the test content was held out of training."""


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


def _as_config(config):
    """A Config from a Config, a mapping (a config.yaml's contents) or a run directory / config file."""
    import os
    from pathlib import Path

    from untwine.train.config import Config, load_config

    if isinstance(config, Config):
        return config
    if isinstance(config, (str, os.PathLike)):
        path = Path(config)
        if path.is_dir():
            path = path / "config.yaml"
        if not path.is_file():
            raise DataError(f"{str(config)!r} is neither a run directory (with config.yaml) nor a config file")
        return load_config(path)
    if isinstance(config, dict):
        return load_config(config)
    raise DataError(f"config must be a Config, a mapping, a run directory or a config file; got {type(config).__name__}")


def _space_of(data) -> FactorSpace:
    space = getattr(data, "factor_space", data)
    if not isinstance(space, FactorSpace):
        raise DataError(f"expected a ground-truth dataset or a FactorSpace; got {type(data).__name__}")
    return space


def trained_content_combinations(config, data) -> tuple[np.ndarray, np.ndarray]:
    """(factors, combinations): the content factors (sorted positions) of a grouped run and the
    content combinations its GroupSampler drew training groups from (int64 (n, S)): the training
    part of the run's split, or every combination when batch.holdout_fraction is 0.

    config: the run's Config, its dict, its run directory or config file; data: its dataset or
    FactorSpace."""
    cfg, space = _as_config(config), _space_of(data)
    b = cfg.batch
    if not b.shared_factors:
        raise DataError(f"the run's config names no batch.shared_factors (objective {cfg.objective.name!r}): it "
                        f"did not train on groups sharing content, so it has no content split")
    if b.holdout_fraction > 0:
        split = split_content_combinations(space, b.shared_factors, b.holdout_fraction, b.holdout_seed)
        return split.factors, split.train
    factors = resolve_factors(space, b.shared_factors)
    sizes = [space.sizes[i] for i in factors]
    return factors, np.indices(sizes).reshape(len(sizes), -1).T.astype(np.int64)


def content_split_from_config(config, data) -> ContentSplit:
    """The content split a grouped run trained with (batch.shared_factors, holdout_fraction,
    holdout_seed), rebuilt exactly as the engine's sampler built it: `train` is the content the run
    saw, `test` the content it never saw. A run with batch.holdout_fraction = 0 trained on every
    combination and has no unseen content: DataError."""
    cfg, space = _as_config(config), _space_of(data)
    b = cfg.batch
    if not b.shared_factors:
        raise DataError(f"the run's config names no batch.shared_factors (objective {cfg.objective.name!r}): it "
                        f"did not train on groups sharing content, so it has no content split")
    if b.holdout_fraction <= 0:
        raise DataError(f"the run trained on every combination of its content factors {list(b.shared_factors)} "
                        f"(batch.holdout_fraction=0), so no group is unseen; train with batch.holdout_fraction > 0 "
                        f"(the grouped presets hold out 0.2) to score unseen content")
    return split_content_combinations(space, b.shared_factors, b.holdout_fraction, b.holdout_seed)


def _rows_in(rows: np.ndarray, table: np.ndarray) -> np.ndarray:
    """bool per row of `rows` (n, S): it occurs in `table` (m, S)."""
    if len(table) == 0 or len(rows) == 0:
        return np.zeros(len(rows), dtype=bool)
    known = {tuple(r) for r in np.asarray(table, dtype=np.int64).tolist()}
    return np.array([tuple(r) in known for r in np.asarray(rows, dtype=np.int64).tolist()])


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
    from threadpoolctl import threadpool_limits

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
        # one BLAS thread: a few-dimensional fit gains nothing from more, and on a loaded machine
        # oversubscribed BLAS threads made the L-BFGS fits 10-15x slower (measured)
        with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(ct, yt[:, j])
            accuracy[j] = np.mean(clf.predict(cs) == ys[:, j])
    return accuracy


def _majority_rate(train: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Accuracy of always predicting each column's most frequent training class (chance level)."""
    return np.array([np.mean(test[:, j] == np.bincount(train[:, j]).argmax()) for j in range(train.shape[1])])


def permutation_baseline(codes_train, labels_train, codes_test, labels_test, seed: int = 0, C: float = 1e4,
                         probe: str = "logistic", repeats: int = 1) -> np.ndarray:
    """Probe accuracy per label column, shape (K,), with the training labels permuted across rows
    (one permutation of whole rows per repeat, mean over `repeats`): the probe, the codes and the
    class frequencies of `probe_accuracy`, with every link between code and label broken. The
    chance level of that probe on these test labels, which a majority-class rate underestimates when
    the test classes are not distributed as the training ones (held-out content)."""
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise DataError(f"repeats must be an integer >= 1; got {repeats!r}")
    yt = _labels(labels_train, len(np.asarray(codes_train)), "labels_train")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x9E37]))
    runs = [probe_accuracy(codes_train, yt[rng.permutation(len(yt))], codes_test, labels_test, seed=seed, C=C,
                           probe=probe) for _ in range(repeats)]
    return np.mean(runs, axis=0)


def content_style_probes(content_train, style_train, factors_train, content_test, style_test, factors_test,
                         content_factors: Sequence[int], seed: int = 0, probe: str = "logistic") -> dict:
    """Probe the content factors and the style factors from the content code and from the style code.

    One row per member: `content_*` its group's accumulated content code, `style_*` its own style
    code, `factors_*` (N, K) its factor classes; `content_factors` the positions of the content
    factors (the others are style). Returns mean accuracies `content_from_content` (high: content
    is in the content code), `content_from_style` (near chance: style does not leak content),
    `style_from_style`, `style_from_content` (near chance), and per-factor lists. Two chance levels:
    `chance_content` / `chance_style`, the majority training class's rate on the test rows, and
    `permutation_content` / `permutation_style`, the same probe fitted on permuted training labels
    (content labels from the style code, style labels from the content code: the two scores that
    should sit at chance), with per-factor lists. Compare the "near chance" scores with the latter.
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
    for factor_name, cols, (train, test) in (("content", content, (style_train, style_test)),
                                             ("style", style, (content_train, content_test))):
        acc = permutation_baseline(train, ft[:, cols], test, fs[:, cols], seed=seed, probe=probe)
        out[f"permutation_{factor_name}"] = float(acc.mean())
        out[f"permutation_{factor_name}_per_factor"] = to_floats(acc)
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


def evaluate_content_style(model, data: GroundTruthData, split: ContentSplit | None = None,
                           content_dim: int | None = None, num_groups: int = 500, group_size: int = 5, seed: int = 0,
                           probes: Sequence[str] = ("logistic",), *, config=None,
                           trained_content: np.ndarray | None = None, allow_seen_content: bool = False) -> dict:
    """The whole protocol for a grouped model whose first `content_dim` latent dims are content:
    probes trained on groups of training content and tested on groups of held-out content; group
    retrieval (a hit: the neighbour has the same content combination) and the accuracy curve on the
    held-out groups. The probes and the curve are computed by every classifier in `probes` (see
    `probe_accuracy`): the first one's at the top level, all of them under "by_probe". JSON-ready.

    Where the test content comes from:
    - `config` (the run's Config, dict, run directory or config file): the split defaults to the
      run's own (`content_split_from_config`) and content_dim to its objective's; the content the
      run trained on is rebuilt from it and checked against `split.test`.
    - `trained_content` (int (n, S), columns in `split.factors` order): the content combinations
      the model was trained on, for a model trained outside the engine (an empty array: none).
    A test combination the model was trained on raises DataError, or with `allow_seen_content=True`
    warns and is reported. With neither argument nothing can be checked: UnverifiedContentWarning.
    out["content_holdout"] records what was checked: `verified` (True: no test content was
    trained on; False: some was, see `seen_test_combinations`; None: unchecked)."""
    space = data.factor_space
    cfg = _as_config(config) if config is not None else None
    if cfg is not None:
        if split is None:
            split = content_split_from_config(cfg, space)
        if content_dim is None:
            content_dim = cfg.objective.params.get("content_dim")
    if split is None:
        raise DataError("give the content split (split=...) or the run's config (config=...) to derive it from")
    if content_dim is None:
        raise DataError("give content_dim (the number of leading content latent dims) or the run's config")
    holdout = {"train_combinations": int(len(split.train)), "test_combinations": int(len(split.test)),
               "verified": None, "seen_test_combinations": None, "source": None}
    if trained_content is None and cfg is not None:
        trained_factors, trained_content = trained_content_combinations(cfg, space)
        holdout["source"] = "config"
        if not np.array_equal(trained_factors, split.factors):
            raise DataError(f"the split's content factors {[space.names[i] for i in split.factors]} are not the "
                            f"run's batch.shared_factors {[space.names[i] for i in trained_factors]}: unseen "
                            f"content is only defined for the factors the run's groups shared")
    elif trained_content is not None:
        trained_content = np.asarray(trained_content, dtype=np.int64)
        if trained_content.size == 0:
            trained_content = trained_content.reshape(0, len(split.factors))
        if trained_content.ndim != 2 or trained_content.shape[1] != len(split.factors):
            raise DataError(f"trained_content must be (n, {len(split.factors)}) content classes in the order of "
                            f"split.factors; got shape {trained_content.shape}")
        holdout["source"] = "trained_content"
    if trained_content is None:
        warnings.warn("evaluate_content_style cannot check that the test content was held out of training: "
                      "pass the run's config (config=run.config) or trained_content; scores on content the "
                      "model trained on are not scores on unseen groups", UnverifiedContentWarning, stacklevel=2)
    else:
        seen = _rows_in(split.test, trained_content)
        holdout["seen_test_combinations"] = int(seen.sum())
        holdout["verified"] = not seen.any()
        if seen.any():
            message = (f"{int(seen.sum())} of the {len(split.test)} test content combinations of the split were "
                       f"trained on (first: {split.test[seen][0].tolist()} of "
                       f"{[space.names[i] for i in split.factors]}), so its 'unseen' groups are not unseen")
            if not allow_seen_content:
                raise DataError(message + "; evaluate with the run's own split (content_split_from_config) or "
                                          "train with batch.holdout_fraction > 0, or pass allow_seen_content=True "
                                          "to score seen content knowingly")
            warnings.warn(message + " (allow_seen_content=True)", UserWarning, stacklevel=2)
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
    out["content_holdout"] = holdout
    return out
