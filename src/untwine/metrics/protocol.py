"""One entry point for the whole suite: plan every image the requested metrics need, encode each
distinct image once in batches, share the codes across metrics, score.

disentanglement_lib samples and encodes per metric (about 3 million encoder passes per model at the
default protocol); here one random set of `num_train` + `num_test` points serves MIG, DCI, SAP,
modularity/explicitness, factor R2 and the unsupervised scores, the BetaVAE and FactorVAE batches are
drawn on their own, and the union of all requested grid indices is de-duplicated before encoding.
FactorVAE's fixed-factor batches are planned and encoded in a second round, only when its variance
estimate keeps a dimension (std >= prune_threshold): with none kept the score is 0 without them, as
disentanglement_lib's early exit (an untrained encoder: 2,000 images encoded instead of 60,000+).
"""
from __future__ import annotations

import copy
import sys
import time
import warnings
from typing import Callable, Mapping

import numpy as np
import torch

from untwine.errors import ConfigError, DataError
from untwine.metrics._common import check_codes, check_factors, factor_sizes_of
from untwine.metrics.beta_vae import beta_vae_score, sample_beta_vae_factors
from untwine.metrics.dci import dci
from untwine.metrics.factor_r2 import factor_r2
from untwine.metrics.factor_vae import active_dims, factor_vae_score, sample_factor_vae_factors
from untwine.metrics.mig import mig
from untwine.metrics.mig_sampling import mig_sampling
from untwine.metrics.modularity import check_test_classes_seen, modularity_explicitness
from untwine.metrics.sap import sap
from untwine.metrics.unsupervised import unsupervised_scores
from untwine.progress import Phases

# disentanglement_lib's default protocol parameters (DESIGN section 8)
DEFAULTS: dict[str, dict] = {
    "beta_vae": {"batch_size": 64, "num_train": 10000, "num_eval": 5000},
    "factor_vae": {"batch_size": 64, "num_train": 10000, "num_eval": 5000, "num_variance_estimate": 10000,
                   "prune_threshold": 0.05},
    "mig": {"num_train": 10000, "num_bins": 20},
    "mig_sampling": {"num_samples": 10000, "factors_to_use": None},
    "dci": {"num_train": 10000, "num_test": 5000, "mode": "fast", "max_bins": 256},
    "sap": {"num_train": 10000, "num_test": 5000, "continuous": False},
    "modularity_explicitness": {"num_train": 10000, "num_test": 5000, "num_bins": 20},
    "factor_r2": {"num_train": 10000, "num_test": 5000},
    "unsupervised": {"num_train": 10000, "num_bins": 20},
}
METRICS: tuple[str, ...] = tuple(DEFAULTS)
# metrics scored on the shared random set (the others need special batches or every image)
SHARED = ("mig", "dci", "sap", "modularity_explicitness", "factor_r2", "unsupervised")
# the headline number of each metric, for tables
HEADLINE = {"beta_vae": "eval_accuracy", "factor_vae": "eval_accuracy", "mig": "mig", "mig_sampling": "mig",
            "dci": "disentanglement", "sap": "sap", "modularity_explicitness": "modularity",
            "factor_r2": "factor_r2", "unsupervised": "gaussian_total_correlation",
            "active_dims": "num_active_dims", "reconstruction": "bce"}
#: a latent dimension is active when the variance of its posterior mean over the data exceeds this
#: (Burda et al. 2016's activity statistic)
ACTIVE_VARIANCE = 0.01
# factors the Chen et al. estimator uses by convention (beta-TCVAE, ControlVAE, DynamicVAE: no shape)
MIG_SAMPLING_FACTORS = {"dsprites": ("scale", "orientation", "posX", "posY")}

_FAST_SHARED = {"num_train": 2000, "num_test": 1000}
PRESETS: dict[str, dict[str, dict]] = {
    "full": {m: {} for m in METRICS},
    # everything but the all-images estimator
    "standard": {m: {} for m in METRICS if m != "mig_sampling"},
    # cheap subset with smaller samples, for use during training
    "fast": {"mig": {"num_train": 2000}, "dci": dict(_FAST_SHARED), "sap": dict(_FAST_SHARED),
             "modularity_explicitness": dict(_FAST_SHARED), "factor_r2": dict(_FAST_SHARED),
             "unsupervised": {"num_train": 2000},
             "beta_vae": {"num_train": 500, "num_eval": 250},
             "factor_vae": {"num_train": 500, "num_eval": 250, "num_variance_estimate": 2000}},
}


#: one line per preset, for tables that name the protocol a score was measured under
PRESET_NOTES = {"full": "every metric at disentanglement_lib's sample sizes, mig_sampling on every image",
                "standard": "every metric but mig_sampling at disentanglement_lib's sample sizes",
                "fast": "smaller samples (2,000 codes; beta_vae and factor_vae 500 batches), for use during "
                        "training: not comparable with standard"}


def protocol_name(metrics=None, overrides: Mapping[str, Mapping] | None = None, plan: Mapping | None = None) -> str:
    """The protocol a set of scores was measured under: a preset's name ("fast", "standard", "full"),
    else "custom" (metric names or parameters of the caller's choosing; _meta["params"] has them).
    `plan` (resolved parameters, as _meta["params"] records them) names a preset it equals."""
    if plan is not None:
        for name in PRESETS:
            if resolve_metrics(name) == {k: dict(v) for k, v in plan.items()}:
                return name
        return "custom"
    if overrides:
        return "custom"
    if metrics is None:
        return "full"
    return metrics if isinstance(metrics, str) and metrics in PRESETS else "custom"


def resolve_metrics(metrics=None, overrides: Mapping[str, Mapping] | None = None) -> dict[str, dict]:
    """metrics: None (the full suite), a preset name, a list of metric names or {name: params};
    overrides: {name: params} applied on top. Returns {name: complete params}."""
    if metrics is None:
        chosen = copy.deepcopy(PRESETS["full"])
    elif isinstance(metrics, str):
        if metrics in PRESETS:
            chosen = copy.deepcopy(PRESETS[metrics])
        else:
            chosen = {m.strip(): {} for m in metrics.split(",") if m.strip()}
    elif isinstance(metrics, Mapping):
        chosen = {str(k): dict(v or {}) for k, v in metrics.items()}
    else:
        chosen = {str(m): {} for m in metrics}
    for name, params in (overrides or {}).items():
        if name not in chosen:
            raise ConfigError(f"overrides name metric {name!r}, which is not requested; requested: {list(chosen)}")
        chosen[name].update(params or {})
    out = {}
    for name, params in chosen.items():
        if name not in DEFAULTS:
            raise ConfigError(f"unknown metric {name!r}; choose from {list(METRICS)} or a preset {list(PRESETS)}")
        unknown = set(params) - set(DEFAULTS[name])
        if unknown:
            raise ConfigError(f"metric {name!r} has no parameter(s) {sorted(unknown)}; its parameters are "
                              f"{sorted(DEFAULTS[name])}")
        out[name] = {**DEFAULTS[name], **params}
    if not out:
        raise ConfigError("no metric requested; name at least one of " + ", ".join(METRICS))
    return out


def _score_shared(name: str, p: dict, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]):
    with warnings.catch_warnings():
        # factors are classes by definition; with few samples per class scikit-learn warns, once per
        # classifier, that they "could represent a regression problem"
        warnings.filterwarnings("ignore", message="The number of unique classes is greater than 50%")
        return _score_shared_quietly(name, p, train, test)


def _score_shared_quietly(name: str, p: dict, train: tuple[np.ndarray, np.ndarray],
                          test: tuple[np.ndarray, np.ndarray]):
    ct, ft = train[0][:p["num_train"]], train[1][:p["num_train"]]
    if name == "mig":
        return mig(ct, ft, num_bins=p["num_bins"])
    if name == "unsupervised":
        check_codes(ct)
        return unsupervised_scores(ct, num_bins=p["num_bins"])
    cs, fs = test[0][:p["num_test"]], test[1][:p["num_test"]]
    if name == "dci":
        return dci(ct, ft, cs, fs, mode=p["mode"], max_bins=p["max_bins"])
    if name == "sap":
        return sap(ct, ft, cs, fs, continuous=p["continuous"])
    if name == "modularity_explicitness":
        return modularity_explicitness(ct, ft, cs, fs, num_bins=p["num_bins"])
    return factor_r2(ct, ft, cs, fs)


def _sizes_needed(plan: dict[str, dict]) -> tuple[int, int]:
    shared = [plan[m] for m in SHARED if m in plan]
    return (max((p["num_train"] for p in shared), default=0),
            max((p.get("num_test", 0) for p in shared), default=0))


def _finish(results: dict, timings: dict, meta: dict) -> dict:
    meta["seconds"] = {k: round(v, 4) for k, v in timings.items()}
    results["_meta"] = meta
    return results


def evaluate_arrays(codes, factors, metrics=None, seed: int = 0, factor_sizes=None,
                    overrides: Mapping[str, Mapping] | None = None) -> dict:
    """Score codes (N, D) of samples with factor classes (N, K) given directly.

    A seeded permutation splits the rows into a train part (up to num_train) and a disjoint test part
    (up to num_test, at least a third of N when N is small). Metrics that need special batches
    (beta_vae, factor_vae) or posteriors of every image (mig_sampling) are skipped with a reason.
    """
    plan = resolve_metrics(metrics, overrides)
    c = check_codes(codes)
    f = check_factors(factors, n=c.shape[0])
    factor_sizes_of(f, factor_sizes)
    n_train, n_test = _sizes_needed(plan)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(c))
    n_test_avail = max(1, len(c) // 3) if n_test else 0
    n_te = min(n_test, n_test_avail)
    n_tr = min(n_train, len(c) - n_te)
    train = (c[order[:n_tr]], f[order[:n_tr]])
    test = (c[order[n_tr:n_tr + n_te]], f[order[n_tr:n_tr + n_te]])
    if "modularity_explicitness" in plan:  # fails on few samples: say so before the other metrics run
        p = plan["modularity_explicitness"]
        check_test_classes_seen(train[1][:p["num_train"]], test[1][:p["num_test"]])
    results, timings = {}, {}
    for name, p in plan.items():
        t0 = time.perf_counter()
        if name in SHARED:
            results[name] = _score_shared(name, p, train, test)
        else:
            why = ("needs the posteriors (mean, log-variance) of every image of the dataset"
                   if name == "mig_sampling" else
                   "needs codes of its own fixed-factor batches; run evaluate() on the dataset")
            results[name] = {"skipped": f"{name} {why}"}
        timings[name] = time.perf_counter() - t0
    meta = {"protocol": protocol_name(metrics, overrides), "seed": int(seed), "num_samples": int(len(c)),
            "num_train": int(n_tr), "num_test": int(n_te),
            "num_encoded": 0, "params": plan}
    return _finish(results, timings, meta)


class _Encoder:
    """Encodes grid indices once each, in batches; keeps codes (and log-variances when offered)."""

    def __init__(self, fn: Callable, data, batch_size: int, device, progress: bool = False):
        self.fn, self.data, self.batch_size, self.progress = fn, data, int(batch_size), progress
        self.device = torch.device(device) if device is not None else None
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1; got {batch_size}")

    @staticmethod
    def _numpy(t) -> np.ndarray:
        """The codes in the representation's own dtype: rounding float64 codes to float32 moves values
        across histogram bin edges (MIG 0.353 instead of 0.377 on grid-valued codes). Only half
        precision, which numpy cannot hold (bfloat16), is widened, exactly, to float32."""
        if isinstance(t, torch.Tensor):
            t = t.detach()
            if t.dtype in (torch.float16, torch.bfloat16):
                t = t.float()
            return t.cpu().numpy()
        return np.asarray(t)

    def __call__(self, indices: np.ndarray):
        from untwine.progress import Progress
        means, logvars = [], []
        n = len(indices)
        progress = Progress(self.progress, n, label="evaluate: encode", unit="image")
        with torch.no_grad():
            for s in range(0, n, self.batch_size):
                x = self.data.batch(indices[s:s + self.batch_size], device=self.device)
                out = self.fn(x)
                if isinstance(out, (tuple, list)):
                    if len(out) < 2:
                        raise DataError("the representation returned a 1-tuple; return codes or (mean, logvar)")
                    means.append(self._numpy(out[0]))
                    logvars.append(self._numpy(out[1]))
                else:
                    means.append(self._numpy(out))
                progress.update(min(s + self.batch_size, n))
        progress.close()
        mean = np.concatenate(means).reshape(n, -1)
        logvar = np.concatenate(logvars).reshape(n, -1) if len(logvars) == len(means) and logvars else None
        return mean, logvar


class _CodeTable:
    """Codes of grid images, each image encoded once, in rounds: a round encodes only the images that
    no earlier round did. The grid is finite, so a presence mask over it gives the distinct indices
    and a row lookup gives each request's rows, in O(grid + requests) (np.unique/searchsorted sort)."""

    def __init__(self, encoder: "_Encoder", space):
        self.encoder, self.space = encoder, space
        self.row_of = np.full(len(space), -1, dtype=np.int64)
        self.indices = np.zeros(0, dtype=np.int64)
        self.codes, self.logvar = None, None

    def add(self, requests: Mapping[str, np.ndarray], flat: dict, every_image: bool = False) -> float:
        """Encode the new images of `requests` ({name: factor classes (..., K)}; names ending in
        "_labels" are not images), record their flat indices in `flat`; returns the seconds encoding."""
        k = len(self.space.sizes)
        for name, classes in requests.items():
            if not name.endswith("_labels"):
                flat[name] = self.space.index_of(classes.reshape(-1, k), validate=False)
        present = np.full(len(self.space), every_image)
        for name in requests:
            if name in flat:
                present[flat[name]] = True
        present &= self.row_of < 0
        new = np.flatnonzero(present)
        del present
        if not len(new):
            if self.codes is None:
                self.codes = check_codes(np.zeros((0, 1)), "codes returned by the representation", min_samples=1)
            return 0.0
        t0 = time.perf_counter()
        codes, logvar = self.encoder(new)
        seconds = time.perf_counter() - t0
        codes = check_codes(codes, "codes returned by the representation", min_samples=1)
        if self.codes is not None and codes.shape[1] != self.codes.shape[1]:
            raise DataError(f"the representation returned {codes.shape[1]} code dimensions for some images and "
                            f"{self.codes.shape[1]} for others; it must return the same number for every image")
        self.row_of[new] = len(self.indices) + np.arange(len(new))
        first = self.codes is None
        self.logvar = logvar if first else (None if self.logvar is None or logvar is None
                                            else np.concatenate([self.logvar, logvar]))
        self.codes = codes if first else np.concatenate([self.codes, codes])
        self.indices = np.concatenate([self.indices, new])
        return seconds


def default_encode_batch_size(device=None) -> int:
    """Images per encoder call when none is given: 64 on a CPU, 512 on an accelerator. On this
    project's 2-core CPU a conv64 encoder (one thread) encodes 3,000-4,100 images/s at batches of
    32-64 and 1,650-1,780 at 128-256 (benchmarks/BENCHMARKS.md, metrics section): at 64 images the
    first layer's activations (8 MB) stay in cache, at 256 (33 MB) they do not. A GPU wants large
    batches instead."""
    kind = torch.device(device).type if device is not None else "cpu"
    return 64 if kind == "cpu" else 512


def evaluate(representation: Callable, data, metrics=None, seed: int = 0, batch_size: int | None = None,
             device=None, overrides: Mapping[str, Mapping] | None = None,
             posterior: Callable | None = None, progress: bool | None = None) -> dict:
    """Score a representation (float32 images (N, C, H, W) -> codes (N, D), or -> (mean, logvar)) on a
    GroundTruthData with the requested metrics. `posterior`, when given, is called instead of
    `representation` and must return (mean, logvar); its mean is the code. Deterministic for a seed.
    `batch_size`: images per encoder call (default: `default_encode_batch_size(device)`); the codes
    do not depend on it beyond float rounding. `progress`: lines (a bar in a terminal) while encoding
    and as each metric begins (None: only in a terminal). Returns {metric: {...}, "_meta": {...}},
    JSON-ready."""
    plan = resolve_metrics(metrics, overrides)
    progress = sys.stdout.isatty() if progress is None else bool(progress)
    if batch_size is None:
        batch_size = default_encode_batch_size(device)
    if getattr(data, "factor_space", None) is None:  # an image set: the scores that need no grid
        return evaluate_without_grid(posterior or representation, data, plan, protocol_name(metrics, overrides),
                                     seed=seed, batch_size=batch_size, device=device)
    space = data.factor_space
    sizes = np.asarray(space.sizes, dtype=np.int64)
    varying = np.flatnonzero(sizes > 1)          # a one-value factor carries nothing: leave it out
    if varying.size == 0:
        raise DataError(f"dataset {getattr(data, 'name', '?')!r} has no factor with more than one value")
    root = np.random.SeedSequence(int(seed))
    # one independent stream per sample set, so that one metric's sizes never move another's samples
    streams = dict(zip(["train", "test", "beta_vae", "factor_vae_var", "factor_vae", "mig_sampling"],
                       root.spawn(6)))
    t_start = time.perf_counter()
    requests: dict[str, np.ndarray] = {}          # name -> factor classes (..., K)
    n_train, n_test = _sizes_needed(plan)
    if n_train:
        requests["train"] = space.sample(n_train, np.random.default_rng(streams["train"]))
    if n_test:
        requests["test"] = space.sample(n_test, np.random.default_rng(streams["test"]))
    if "beta_vae" in plan:
        p, rng = plan["beta_vae"], np.random.default_rng(streams["beta_vae"])
        for part, num in (("train", p["num_train"]), ("eval", p["num_eval"])):
            fa, fb, lab = sample_beta_vae_factors(sizes[varying], num, p["batch_size"], rng)
            full_a = np.zeros(fa.shape[:2] + (len(sizes),), np.int64)   # one-value factors stay at 0
            full_b = full_a.copy()
            full_a[..., varying], full_b[..., varying] = fa, fb
            requests[f"beta_vae_{part}_a"], requests[f"beta_vae_{part}_b"] = full_a, full_b
            requests[f"beta_vae_{part}_labels"] = lab
    if "factor_vae" in plan:
        p = plan["factor_vae"]
        requests["factor_vae_var"] = space.sample(p["num_variance_estimate"],
                                                  np.random.default_rng(streams["factor_vae_var"]))
    want_all = "mig_sampling" in plan
    flat: dict[str, np.ndarray] = {}              # request -> flat grid indices of its images
    table = _CodeTable(_Encoder(posterior or representation, data, batch_size, device, progress), space)
    timings = {"encode": table.add(requests, flat, every_image=want_all)}

    def codes_of(key: str) -> np.ndarray:
        return table.codes[table.row_of[flat[key]]].reshape(requests[key].shape[:-1] + (table.codes.shape[1],))

    # FactorVAE's batches only once its variance estimate has kept a dimension: with none kept the
    # score is 0 and disentanglement_lib stops there (an untrained encoder's codes vary by less than
    # the threshold); the batches come from their own stream, so they are the same either way
    fv_active = False
    if "factor_vae" in plan:
        p = plan["factor_vae"]
        fv_active = bool(active_dims(codes_of("factor_vae_var"), p["prune_threshold"])[1].any())
    if fv_active:
        rng = np.random.default_rng(streams["factor_vae"])
        new = {}
        for part, num in (("train", p["num_train"]), ("eval", p["num_eval"])):
            fv, lab = sample_factor_vae_factors(sizes[varying], num, p["batch_size"], rng)
            full = np.zeros(fv.shape[:2] + (len(sizes),), np.int64)
            full[..., varying] = fv
            new[f"factor_vae_{part}"], new[f"factor_vae_{part}_labels"] = full, lab
        requests.update(new)
        timings["encode"] += table.add(new, flat)
    codes_u, logvar_u, unique = table.codes, table.logvar, table.indices

    train = (codes_of("train"), requests["train"][:, varying]) if n_train else None
    test = (codes_of("test"), requests["test"][:, varying]) if n_test else None
    results = {}
    phases = Phases(progress, "evaluate", plan)
    for name, p in plan.items():
        phases.begin(name)
        t0 = time.perf_counter()
        if name in SHARED:
            results[name] = _score_shared(name, p, train, test)
        elif name == "beta_vae":
            results[name] = beta_vae_score(
                codes_of("beta_vae_train_a"), codes_of("beta_vae_train_b"), requests["beta_vae_train_labels"],
                codes_of("beta_vae_eval_a"), codes_of("beta_vae_eval_b"), requests["beta_vae_eval_labels"])
        elif name == "factor_vae":
            batches = [(codes_of(f"factor_vae_{part}"), requests[f"factor_vae_{part}_labels"]) if fv_active
                       else (None, None) for part in ("train", "eval")]
            results[name] = factor_vae_score(codes_of("factor_vae_var"), *batches[0], *batches[1],
                                             num_factors=len(varying), prune_threshold=p["prune_threshold"])
        elif logvar_u is None:
            results[name] = {"skipped": "mig_sampling needs the posterior (mean, logvar): make the "
                                        "representation return a (mean, logvar) tuple or pass posterior="}
        else:
            use = p["factors_to_use"]
            if use is None:
                names = MIG_SAMPLING_FACTORS.get(str(getattr(data, "name", "")).lower())
                use = [space.names.index(n) for n in names] if names else varying.tolist()
            else:
                use = [space.factor_index(u) for u in use]
            factors_all = space.classes_of(unique, validate=False)
            results[name] = mig_sampling(codes_u, logvar_u, factors_all, sizes, num_samples=p["num_samples"],
                                         seed=int(np.random.default_rng(streams["mig_sampling"]).integers(2**31)),
                                         factors_to_use=use, device=device)
            results[name]["factor_names"] = [space.names[k] for k in use]
        timings[name] = time.perf_counter() - t0
    phases.close()
    timings["total"] = time.perf_counter() - t_start
    meta = {"protocol": protocol_name(metrics, overrides), "seed": int(seed),
            "dataset": str(getattr(data, "name", type(data).__name__)),
            "factors": [space.names[k] for k in varying],
            "num_requested": int(sum(v.size for v in flat.values())) + (len(space) if want_all else 0),
            "num_encoded": int(len(unique)), "params": plan}
    return _finish(results, timings, meta)


def evaluate_without_grid(representation: Callable, data, plan: dict[str, dict], protocol: str, seed: int = 0,
                          batch_size: int = 64, device=None) -> dict:
    """The scores of a dataset without a factor grid (an image folder, CelebA), on codes of images
    drawn uniformly from the whole set, as disentanglement_lib's protocols draw from the whole grid:
    "unsupervised" (Gaussian total correlation, mutual information of the codes) and "active_dims"
    always; with weak labels (`data.labels`: CelebA's attributes, a folder's subfolders) the metrics
    that take codes and factor classes (MIG, DCI, SAP, modularity, factor R2) as probes of them. What
    needs a factor grid (BetaVAE, FactorVAE, mig_sampling), or labels a set lacks, is skipped with a
    one-line note, never an error."""
    t_start = time.perf_counter()
    labels = getattr(data, "labels", None)
    n_train, n_test = _sizes_needed(plan)
    take = min(len(data), max(n_train + n_test, 2))
    rng = np.random.default_rng(np.random.SeedSequence(int(seed)).spawn(1)[0])
    indices = rng.choice(len(data), size=take, replace=False)  # distinct: a repeat adds nothing
    t0 = time.perf_counter()
    codes, _ = _Encoder(representation, data, batch_size, device)(indices)
    encode_seconds = time.perf_counter() - t0
    codes = check_codes(codes, "codes returned by the representation", min_samples=2)
    variance = codes.astype(np.float64).var(axis=0)
    results: dict = {"active_dims": {"num_active_dims": int((variance > ACTIVE_VARIANCE).sum()),
                                     "latent_dim": int(codes.shape[1]), "threshold": ACTIVE_VARIANCE}}
    name = str(getattr(data, "name", type(data).__name__))
    factor_names: list[str] = []
    if labels is None:
        if "unsupervised" in plan:
            p = plan["unsupervised"]
            results["unsupervised"] = unsupervised_scores(codes[:p["num_train"]], num_bins=p["num_bins"])
        supervised = [m for m in plan if m != "unsupervised"]
        if supervised:
            results["supervised"] = {"skipped": f"{', '.join(supervised)} need ground-truth factors; dataset "
                                                f"{name!r} has none"}
    else:
        classes = labels.classes_of(indices)
        varying = [k for k in range(classes.shape[1]) if len(np.unique(classes[:, k])) > 1]
        factor_names = [labels.names[k] for k in varying]
        probes = {m: p for m, p in plan.items() if m in SHARED}
        if probes and varying:
            scored = evaluate_arrays(codes, classes[:, varying], metrics=probes, seed=seed)
            scored.pop("_meta")
            results.update(scored)
        grid_only = [m for m in plan if m not in SHARED]
        if grid_only:
            results["grid_metrics"] = {"skipped": f"{', '.join(grid_only)} need a full factor grid; the labels of "
                                                  f"{name!r} are weak factors of its images (probes only)"}
    timings = {"encode": encode_seconds, "total": time.perf_counter() - t_start}
    meta = {"protocol": protocol, "seed": int(seed), "dataset": name, "factors": factor_names,
            "sampled_from": f"all {len(data)} images (no factor grid)", "num_encoded": int(take), "params": plan}
    return _finish(results, timings, meta)
