"""Evaluation of the multi-stage model (DESIGN section 7): reconstruction, sample quality, factor
fidelity and w-invariance, stage 1 against the combined model on the same images.

    clf = get_factor_classifier(data)                     # untwine's own feature extractor
    report = evaluate_multistage(model, data, clf, n=512)  # JSON-ready {"stage1", "combined", ...}

The functions take a duck-typed combined model (`reconstruct`, `reconstruct_stage1`, `sample(n,
generator)`, `stage1_output`, `stage2.sample_w` / `stage2.generate`, as MultiStageModel has) and,
where it makes sense, a plain stage-1 VAE (`encode`, `decode`, `likelihood`): its reconstruction is
the mean image likelihood.mean(decode(mu)), its samples likelihood.mean(decode(z)), z ~ N(0, I).

Everything runs under no_grad and in eval mode (the training flags are restored), inside a forked
torch RNG seeded from `seed`, so an evaluation never changes a training run and is repeatable.
Evaluation images are drawn from the dataset's evaluation split (untwine.data.split: a grid's, or an
image set's held-out images), which no training sampler ever returns, by `evaluation_indices(data, n, seed)` (a stream of its own, so the
same seed gives the same images in every function here).

Likelihoods are lower bounds on log p(x) from sampled latents (a sampled ELBO and the IWAE bound,
evaluate_reconstruction), never the likelihood at the posterior means, which is not a bound and
overstates it.

Sample quality without downloaded weights: Frechet distance and k-NN precision/recall in the
penultimate features of the factor classifier (not Inception features: values are comparable
between models scored with the same classifier only). On an image set the classifier learns its
weak labels (CelebA's attributes, a folder's subfolders); a set without labels has no classifier,
and sample quality, fidelity and w-invariance are skipped with a note.

Fidelity and w-invariance use only the factors the classifier reads (classifier.readable_factors:
its held-out accuracy at least halfway from chance to 1); the others, and the classifier's own
held-out accuracy of every factor, are reported beside them.
"""
from __future__ import annotations

import contextlib
import math

import numpy as np
import torch

from untwine.data.base import GroundTruthData
from untwine.errors import ConfigError, DataError
from untwine.multistage.classifier import READABLE_SHARE
from untwine.multistage.model import DEFAULT_BOUND_SAMPLES

LIKELIHOODS = ("bernoulli", "gaussian")
#: clamp of a mean image before the Bernoulli cross-entropy (a 0 or 1 pixel would give inf)
BCE_EPS = 1e-6


# ---- reconstruction ---------------------------------------------------------------------------

def reconstruction_metrics(x: torch.Tensor, x_hat: torch.Tensor, likelihood: str = "bernoulli") -> dict[str, float]:
    """Reconstruction quality of mean images `x_hat` against `x` (both (B, C, H, W) in [0, 1]).

    "bce" (Bernoulli): cross-entropy in nats per image (sum over pixels, mean over images), x_hat
    clamped to [1e-6, 1 - 1e-6], with "bce_floor", the entropy of x itself (the least cross-entropy
    any reconstruction can reach: 0 for binary images, thousands of nats for Shapes3D's grey levels),
    and "bce_excess" = bce - bce_floor = sum of KL(Bern(x) || Bern(x_hat)) over pixels, 0 for an
    exact reconstruction: the part of the BCE a model can remove, so ratios of it mean something on
    images that are not binary; "sse" (Gaussian): squared error summed per image, mean over
    images; always "mse" (per pixel), "psnr" (dB, data range 1, mean of per-image values) and
    "ssim" (torchmetrics, 11x11 Gaussian window, mean over images). An exact reconstruction has
    an infinite PSNR.
    """
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    if likelihood not in LIKELIHOODS:
        raise ConfigError(f"likelihood={likelihood!r}; expected one of {LIKELIHOODS}")
    if not isinstance(x, torch.Tensor) or not isinstance(x_hat, torch.Tensor):
        raise DataError("reconstruction_metrics takes torch tensors (B, C, H, W); convert with torch.as_tensor")
    if x.shape != x_hat.shape or x.dim() != 4:
        raise DataError(f"x and x_hat must be image batches of one shape (B, C, H, W); got {tuple(x.shape)} "
                        f"and {tuple(x_hat.shape)}")
    if x.shape[-1] < 11 or x.shape[-2] < 11:
        raise DataError(f"SSIM needs images of at least 11x11 pixels; got {tuple(x.shape[-2:])}")
    x, x_hat = x.detach().float(), x_hat.detach().float()
    # disentanglement_lib's SmallNORB preprocessing leaves levels slightly outside [0, 1] (an
    # unclipped Lanczos resize); the Bernoulli cross-entropy and entropy need targets in [0, 1]
    x = x.clamp(0.0, 1.0)
    if not torch.isfinite(x_hat).all():
        raise DataError("x_hat holds NaN or inf values; the model diverged or produced invalid images")
    x_hat = x_hat.clamp(0.0, 1.0)
    out = {}
    if likelihood == "bernoulli":
        p = x_hat.clamp(BCE_EPS, 1.0 - BCE_EPS)
        bce = -(x * torch.log(p) + (1.0 - x) * torch.log1p(-p))
        entropy = -(torch.xlogy(x, x) + torch.xlogy(1.0 - x, 1.0 - x))  # 0 log 0 = 0
        out["bce"] = float(bce.flatten(1).sum(1).mean())
        out["bce_floor"] = float(entropy.flatten(1).sum(1).mean())
        out["bce_excess"] = float((bce - entropy).flatten(1).sum(1).mean())  # per pixel first: no cancellation
    else:
        out["sse"] = float((x - x_hat).pow(2).flatten(1).sum(1).mean())
    out["mse"] = float((x - x_hat).pow(2).mean())
    out["psnr"] = float(peak_signal_noise_ratio(x_hat, x, data_range=1.0, dim=(1, 2, 3),
                                                reduction="elementwise_mean"))
    out["ssim"] = float(structural_similarity_index_measure(x_hat, x, data_range=1.0))
    return out


# ---- helpers shared by every evaluation --------------------------------------------------------

def _device(model) -> torch.device:
    params = getattr(model, "parameters", None)
    param = next(iter(params()), None) if callable(params) else None
    return param.device if param is not None else torch.device("cpu")


def is_combined(model) -> bool:
    """A two-stage model (stage 1 + stage 2) rather than a plain stage-1 VAE."""
    return hasattr(model, "stage2") and hasattr(model, "reconstruct_stage1")


def _stage1(model):
    return model.stage1 if is_combined(model) else model


def likelihood_name(model) -> str:
    """"bernoulli" or "gaussian", from stage 1's likelihood module."""
    lik = type(getattr(_stage1(model), "likelihood", None)).__name__.lower()
    return "gaussian" if "gaussian" in lik else "bernoulli"


def _require_combined(model, what: str) -> None:
    if not is_combined(model):
        raise ConfigError(f"{what} needs a combined model (stage 1 + stage 2, e.g. MultiStageModel); got "
                          f"{type(model).__name__}, which has no stage 2")


def _check_n(n, what: str = "n", minimum: int = 1) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < minimum:
        raise ConfigError(f"{what}={n!r}; expected an integer >= {minimum}")
    return int(n)


@contextlib.contextmanager
def evaluating(*modules, seed: int = 0, device: torch.device | None = None):
    """no_grad, eval mode (flags restored after) and a forked torch RNG seeded with `seed`."""
    flags = [(m, m.training) for m in modules if hasattr(m, "training") and hasattr(m, "train")]
    devices = [device.index or 0] if device is not None and device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(seed)  # variants that draw from the global stream (randn_like) repeat too
        for m, _ in flags:
            m.eval()
        try:
            yield
        finally:
            for m, was_training in flags:
                m.train(was_training)


def evaluation_indices(data: GroundTruthData, n: int, seed: int = 0, stream: int = 0) -> np.ndarray:
    """n indices of the grid's evaluation split (untwine.data.split: images no training sampler
    returns), drawn uniformly without replacement (with replacement only when n exceeds the
    split); `stream` gives an independent draw for the same seed (the second real set of a
    real-vs-real baseline)."""
    from untwine.data.split import require_dataset_eval_indices

    n = _check_n(n)
    pool = require_dataset_eval_indices(data)
    rng = np.random.default_rng([int(seed), 7919, int(stream)])  # apart from the training samplers' streams
    return pool[rng.choice(len(pool), size=n, replace=n > len(pool))]


def _chunks(indices: np.ndarray, batch_size: int):
    batch_size = _check_n(batch_size, "batch_size")
    for start in range(0, len(indices), batch_size):
        yield indices[start:start + batch_size]


def stage1_reconstruction(model, x: torch.Tensor) -> torch.Tensor:
    """Stage 1's mean image of x: reconstruct_stage1, or likelihood.mean(decode(mu)) of a VAE."""
    if hasattr(model, "reconstruct_stage1"):
        return model.reconstruct_stage1(x).float()
    mu, _ = model.encode(x)
    return model.likelihood.mean(model.decode(mu)).float()


def _samples(model, n: int, generator: torch.Generator, stage: str, device: torch.device) -> torch.Tensor:
    if stage == "combined":
        _require_combined(model, "combined samples")
        return model.sample(n, generator=generator).float()
    stage1 = _stage1(model)
    z = torch.randn(n, stage1.latent_dim, generator=generator, device=device)
    return stage1.likelihood.mean(stage1.decode(z)).float()


def _check_stage(model, stage: str | None) -> str:
    if stage is None:
        return "combined" if is_combined(model) else "stage1"
    if stage not in ("stage1", "combined"):
        raise ConfigError(f"stage={stage!r}; expected 'stage1', 'combined' or None (the model's own)")
    if stage == "combined":
        _require_combined(model, "stage='combined'")
    return stage


def _weighted_mean(parts: list[tuple[int, dict]]) -> dict[str, float]:
    total = sum(w for w, _ in parts)
    return {k: sum(w * d[k] for w, d in parts) / total for k in parts[0][1]}


def _bounds(model, x: torch.Tensor, samples: int) -> dict[str, dict[str, torch.Tensor]]:
    """Per-example {"elbo_sampled", "iwae"} (nats) of "stage1" and, where stage 2 has a likelihood,
    "combined", from `samples` posterior draws; {} for a duck-typed model without bounds."""
    if is_combined(model):
        return model.bounds(x, samples) if hasattr(model, "bounds") else {}
    from untwine.multistage.model import bounds_from_log_weights, stage1_log_weights
    return {"stage1": bounds_from_log_weights(stage1_log_weights(model, x, samples))}


def reconstruction_applicable(model) -> bool:
    """False for a bijective stage 2 (the flow): it inverts every x exactly by construction, so its
    reconstruction error (0) and fidelity (the classifier's own accuracy on x) measure nothing."""
    return not (is_combined(model) and getattr(model.stage2, "bijective", False))


def evaluate_reconstruction(model, data: GroundTruthData, n: int = 512, seed: int = 0,
                            batch_size: int = 64, iwae_samples: int = DEFAULT_BOUND_SAMPLES) -> dict:
    """Reconstruction metrics (see reconstruction_metrics) of stage 1 and, for a combined model,
    of the combined model on the same n evaluation images, plus lower bounds on log p(x) where the
    model has a likelihood. {"stage1": {...}, "combined": {...}}; a plain VAE gives "stage1" only.

    Bounds, nats per image (mean over the images), from the same `iwae_samples` = K draws
    z ~ q(z|x) (and w ~ q(w|x,y)) per image, for stage 1 and the combined model alike
    (MultiStageModel.bounds):
      "elbo_sampled": the Monte Carlo ELBO, mean over the K draws of
                      log p(x|z,w) + log p(z) + log p(w) - log q(z|x) - log q(w|x,y);
      "iwae":         the importance-weighted bound, log-mean-exp of the same K terms (>= elbo_sampled);
      "iwae_samples": K.
    The combined section of a stage 2 whose density is exact given y (flow, mixture) adds
    "log_p_x_given_y": log p2(x | y) at y = g1(mu(x)), stage 2's density given stage 1's reading of
    x itself: a conditional, NOT a bound on log p(x) and not comparable with the bounds.
    The combined section says "reconstruction_applicable": False for a bijective stage 2 (the flow),
    whose reconstructions are exact by construction (see reconstruction_ratios)."""
    from untwine.multistage.model import check_samples
    iwae_samples = check_samples(iwae_samples)
    device = _device(model)
    likelihood = likelihood_name(model)
    combined = is_combined(model)
    parts: dict[str, list] = {"stage1": [], "combined": []}
    with evaluating(model, seed=seed, device=device):
        for chunk in _chunks(evaluation_indices(data, n, seed), batch_size):
            x = data.batch(chunk, device=device)
            metrics = {"stage1": reconstruction_metrics(x, stage1_reconstruction(model, x), likelihood)}
            if combined:
                metrics["combined"] = reconstruction_metrics(x, model.reconstruct(x).float(), likelihood)
            for stage, b in _bounds(model, x, iwae_samples).items():
                metrics[stage].update({key: float(v.mean()) for key, v in b.items()})
            given_y = model.log_likelihood_given_y(x) if hasattr(model, "log_likelihood_given_y") else None
            if given_y is not None:
                metrics["combined"]["log_p_x_given_y"] = float(given_y.mean())
            for stage, m in metrics.items():
                parts[stage].append((len(chunk), m))
    out = {stage: _weighted_mean(p) for stage, p in parts.items() if p}
    for section in out.values():
        if "iwae" in section:
            section["iwae_samples"] = iwae_samples
    if combined:
        out["combined"]["reconstruction_applicable"] = reconstruction_applicable(model)
    return out


# ---- sample quality ------------------------------------------------------------------------------

def _features_array(feat, name: str) -> np.ndarray:
    arr = feat.detach().cpu().double().numpy() if isinstance(feat, torch.Tensor) else np.asarray(feat, np.float64)
    if arr.ndim != 2 or arr.shape[0] < 2:
        raise DataError(f"{name} must be a feature matrix (N, D) with N >= 2; got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise DataError(f"{name} holds NaN or inf values")
    return arr


def _sqrt_psd(cov: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh((cov + cov.T) / 2.0)
    return (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T


def gaussian_frechet_distance(mu_a: np.ndarray, cov_a: np.ndarray, mu_b: np.ndarray, cov_b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + tr(A + B - 2 (A B)^(1/2)), in float64.

    tr (A B)^(1/2) = tr (A^(1/2) B A^(1/2))^(1/2): the inner matrix is symmetric PSD, so two
    symmetric eigendecompositions replace sqrtm's Schur form (no complex parts, stable when
    A or B is singular, as covariances of fewer samples than dimensions are)."""
    from threadpoolctl import threadpool_limits

    mu_a, mu_b = np.asarray(mu_a, np.float64), np.asarray(mu_b, np.float64)
    cov_a, cov_b = np.asarray(cov_a, np.float64), np.asarray(cov_b, np.float64)
    # a 256x256 eigh takes ms on one BLAS thread but can take ~1 s when many threads contend
    with threadpool_limits(limits=1, user_api="blas"):
        root_a = _sqrt_psd(cov_a)
        inner = root_a @ cov_b @ root_a
        tr_cross = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2.0), 0.0, None)).sum()
    fd = float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2.0 * tr_cross)
    return max(fd, 0.0)  # rounding can leave -1e-12 for identical sets


def frechet_distance(feat_a, feat_b) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N, D) (unbiased covariances)."""
    a, b = _features_array(feat_a, "feat_a"), _features_array(feat_b, "feat_b")
    if a.shape[1] != b.shape[1]:
        raise DataError(f"feature sets differ in dimension: {a.shape[1]} and {b.shape[1]}")
    return gaussian_frechet_distance(a.mean(0), np.cov(a, rowvar=False).reshape(a.shape[1], -1),
                                     b.mean(0), np.cov(b, rowvar=False).reshape(b.shape[1], -1))


def _knn_radii(x: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """Distance of each point to its k-th nearest neighbour in the same set (itself excluded)."""
    return torch.cat([torch.cdist(part, x).topk(k + 1, dim=1, largest=False).values[:, k]
                      for part in x.split(chunk)])


def _covered(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """For each point: inside at least one ball (centre, radius)?"""
    return torch.cat([(torch.cdist(part, centres) <= radii[None, :]).any(dim=1) for part in points.split(chunk)])


def precision_recall(real_feat, fake_feat, k: int = 3) -> dict[str, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019): each set's manifold is the union of
    balls around its points reaching their k-th nearest neighbour; precision = share of fake points
    inside the real manifold, recall = share of real points inside the fake manifold."""
    real = torch.from_numpy(_features_array(real_feat, "real_feat"))
    fake = torch.from_numpy(_features_array(fake_feat, "fake_feat"))
    if real.shape[1] != fake.shape[1]:
        raise DataError(f"feature sets differ in dimension: {real.shape[1]} and {fake.shape[1]}")
    k = _check_n(k, "k")
    if k >= min(len(real), len(fake)):
        raise ConfigError(f"k={k} nearest neighbours need more than k points in each set; got "
                          f"{len(real)} real and {len(fake)} fake")
    precision = _covered(fake, real, _knn_radii(real, k)).double().mean()
    recall = _covered(real, fake, _knn_radii(fake, k)).double().mean()
    return {"precision": float(precision), "recall": float(recall)}


def _real_features(data, classifier, n: int, seed: int, batch_size: int, device, stream: int = 0) -> torch.Tensor:
    return torch.cat([classifier.features(data.batch(chunk, device=device)).cpu()
                      for chunk in _chunks(evaluation_indices(data, n, seed, stream), batch_size)])


def sample_quality(model, data: GroundTruthData, classifier, n: int = 1000, seed: int = 0, batch_size: int = 64,
                   stage: str | None = None, k: int = 3, real_features: torch.Tensor | None = None) -> dict[str, float]:
    """Frechet distance and precision/recall of n model samples against n real images, in the
    classifier's features. `stage`: "combined" (model.sample), "stage1" (stage 1's decoder on
    z ~ N(0, I)), None: the model's own (combined for a two-stage model)."""
    stage = _check_stage(model, stage)
    n = _check_n(n, "n", minimum=k + 1)
    device = _device(model)
    with evaluating(model, classifier, seed=seed, device=device):
        real = real_features if real_features is not None else _real_features(data, classifier, n, seed,
                                                                               batch_size, device)
        generator = torch.Generator(device=device).manual_seed(int(seed))
        fake = torch.cat([classifier.features(_samples(model, len(chunk), generator, stage, device).clamp(0, 1)).cpu()
                          for chunk in _chunks(np.arange(n), batch_size)])
    return {"fd": frechet_distance(real, fake), **precision_recall(real, fake, k=k), "n": n}


# ---- factor fidelity and w-invariance ------------------------------------------------------------

def _accuracy(pred: torch.Tensor, truth: torch.Tensor, names, keep=None) -> dict[str, float]:
    """Accuracy per factor of `keep` (default all) and their "mean"."""
    keep = list(names) if keep is None else list(keep)
    acc = {name: float((pred[:, i] == truth[:, i]).double().mean()) for i, name in enumerate(names) if name in keep}
    acc["mean"] = float(np.mean(list(acc.values()))) if acc else None
    return acc


def _read_factors(data, classifier):
    """(the label space, the names of its factors, those the classifier reads)."""
    from untwine.multistage.classifier import label_space
    space = label_space(data)
    names = list(space.names)
    readable = getattr(classifier, "readable", None)
    return space, names, [n for n in names if readable is None or n in readable]


def factor_fidelity(model, data: GroundTruthData, classifier, n: int = 512, seed: int = 0,
                    batch_size: int = 64) -> dict[str, dict[str, float]]:
    """Accuracy per factor (and "mean") of the classifier reading each input's true factors from
    the real image (the ceiling), stage 1's reconstruction and the combined reconstruction, over the
    factors the classifier reads (classifier.readable; all when it has none)."""
    device = _device(model)
    space, names, keep = _read_factors(data, classifier)
    preds: dict[str, list] = {"real": [], "stage1": [], "combined": []}
    truth = []
    with evaluating(model, classifier, seed=seed, device=device):
        for chunk in _chunks(evaluation_indices(data, n, seed), batch_size):
            x = data.batch(chunk, device=device)
            truth.append(torch.from_numpy(space.classes_of(chunk)))
            preds["real"].append(classifier.predict(x).cpu())
            preds["stage1"].append(classifier.predict(stage1_reconstruction(model, x).clamp(0, 1)).cpu())
            if is_combined(model):
                preds["combined"].append(classifier.predict(model.reconstruct(x).float().clamp(0, 1)).cpu())
    truth = torch.cat(truth)
    return {stage: _accuracy(torch.cat(p), truth, names, keep) for stage, p in preds.items() if p}


def w_invariance(model, data: GroundTruthData, classifier, n: int = 256, resamples: int = 5, seed: int = 0,
                 batch_size: int = 64) -> dict:
    """With z fixed at the encoder mean of real images, y = g1(z) and w drawn `resamples` times
    from stage 2's prior, the share of predicted factors that differ from the prediction at the
    first draw: per factor, and "overall" over all factors (the target is < 0.05).

    "held_per_factor" / "held_overall" separate stealing from filling in: over the (image, factor)
    pairs where the classifier reads the true factor from stage 1's own image y (stage 1 holds the
    factor there), the share of draws whose prediction is no longer the true factor. A factor that
    stage 1 does not hold genuinely varies in x given y, and a faithful stage 2 must vary it with w;
    for a factor read at chance level from y, the held pairs are the chance hits.
    Only the factors the classifier reads count (classifier.readable; all when it has none)."""
    _require_combined(model, "w_invariance")
    resamples = _check_n(resamples, "resamples", minimum=2)
    device = _device(model)
    space, all_names, names = _read_factors(data, classifier)
    columns = torch.as_tensor([all_names.index(n) for n in names], dtype=torch.long)
    if not names:
        return {"per_factor": {}, "overall": None, "held_per_factor": {}, "held_overall": None, "held_share": {},
                "resamples": resamples, "n": int(n)}
    changed = torch.zeros(len(names), dtype=torch.float64)
    held_lost = torch.zeros(len(names), dtype=torch.float64)
    held_count = torch.zeros(len(names), dtype=torch.float64)
    total = 0
    with evaluating(model, classifier, seed=seed, device=device):
        generator = torch.Generator(device=device).manual_seed(int(seed))
        for chunk in _chunks(evaluation_indices(data, n, seed), batch_size):
            truth = torch.from_numpy(space.classes_of(chunk))[:, columns]
            z, y = model.stage1_output(data.batch(chunk, device=device), sample=False)
            held = classifier.predict(y.float().clamp(0, 1)).cpu()[:, columns] == truth  # (B, K)
            draws = []
            for _ in range(resamples):
                w = model.stage2.sample_w(len(chunk), y, z, generator=generator)
                draws.append(classifier.predict(model.stage2.generate(y, z, w).float().clamp(0, 1)).cpu()[:, columns])
            draws = torch.stack(draws)  # (R, B, K)
            changed += (draws[1:] != draws[0]).double().sum(dim=(0, 1))
            held_lost += ((draws != truth) & held).double().sum(dim=(0, 1))
            held_count += resamples * held.double().sum(0)
            total += (resamples - 1) * len(chunk)
    per_factor = {name: float(changed[i] / total) for i, name in enumerate(names)}
    held_per_factor = {name: (float(held_lost[i] / held_count[i]) if held_count[i] else None)
                       for i, name in enumerate(names)}
    return {"per_factor": per_factor, "overall": float(changed.sum() / (total * len(names))),
            "held_per_factor": held_per_factor,
            "held_overall": float(held_lost.sum() / held_count.sum()) if held_count.sum() else None,
            "held_share": {name: float(held_count[i] / (resamples * n)) for i, name in enumerate(names)},
            "resamples": resamples, "n": int(n)}


@torch.no_grad()
def code_invariance(model, data: GroundTruthData, n: int = 256, resamples: int = 5, seed: int = 0,
                    batch_size: int = 64, active_threshold: float = 0.01) -> dict:
    """The d-separation claim read by stage 1 itself: with z fixed at the encoder mean of real
    images and w drawn `resamples` times from p(w), stage 1 re-encodes each combined image; per
    active latent (variance of z over these images > `active_threshold`), the variance of the
    re-encoded mean across w draws, averaged over images, as a share of z's variance over the data
    ("per_dim", "overall" = mean over active dims; 0 when w never moves a factor stage 1 encodes),
    and "drift": the mean |re-encoded - z| over the data standard deviation (0 when stage 2 keeps
    z exactly; stage 1's own y would give its reconstruction drift, "stage1_drift")."""
    _require_combined(model, "code_invariance")
    resamples = _check_n(resamples, "resamples", minimum=2)
    device = _device(model)
    codes, reencoded, stage1_codes = [], [], []
    with evaluating(model, seed=seed, device=device):
        generator = torch.Generator(device=device).manual_seed(int(seed))
        for chunk in _chunks(evaluation_indices(data, n, seed), batch_size):
            z, y = model.stage1_output(data.batch(chunk, device=device), sample=False)
            draws = []
            for _ in range(resamples):
                w = model.stage2.sample_w(len(chunk), y, z, generator=generator)
                draws.append(model.encode(model.stage2.generate(y, z, w).to(y.dtype))[0].float().cpu())
            codes.append(z.cpu())
            reencoded.append(torch.stack(draws))  # (R, B, D)
            stage1_codes.append(model.encode(y)[0].float().cpu())
    z = torch.cat(codes).double()
    r = torch.cat(reencoded, dim=1).double()
    z1 = torch.cat(stage1_codes).double()
    spread = z.var(0)
    active = (spread > active_threshold).nonzero().flatten().tolist()
    if not active:
        return {"per_dim": {}, "overall": None, "drift": None, "stage1_drift": None, "active": [], "n": int(n)}
    within = r.var(0).mean(0)  # (D,) variance across draws, mean over images
    sd = spread.sqrt()
    per_dim = {int(j): float(within[j] / spread[j]) for j in active}
    drift = ((r - z).abs().mean((0, 1)) / sd)[active]
    stage1_drift = ((z1 - z).abs().mean(0) / sd)[active]
    return {"per_dim": per_dim, "overall": float(np.mean(list(per_dim.values()))), "drift": float(drift.mean()),
            "stage1_drift": float(stage1_drift.mean()), "active": active, "resamples": resamples, "n": int(n)}


# ---- everything at once ----------------------------------------------------------------------------

def json_ready(value):
    """Nested dicts/lists of numbers with every non-finite float (an exact reconstruction's
    infinite PSNR, a 0/0 ratio) replaced by None, so that strict JSON can hold it."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _ratio(a: float, b: float) -> float | None:
    return float(a / b) if b and math.isfinite(a) and math.isfinite(b) else None


def reconstruction_ratios(recon: dict) -> dict:
    """Combined / stage 1 of evaluate_reconstruction's output: "bce_ratio" and "bce_excess_ratio"
    (Bernoulli) or "sse_ratio" (Gaussian); below 1 the combined model reconstructs better; and
    "reconstruction_applicable". For a bijective stage 2 (the flow) the ratios are None and
    "reconstruction_applicable" False: its exact reconstruction (ratio 0) is a property of the
    construction, not a result, and must never be read as meeting the reconstruction target."""
    keys = ("bce", "bce_excess") if "bce" in recon["stage1"] else ("sse",)
    if recon["combined"].get("reconstruction_applicable", True) is False:
        return {**{f"{k}_ratio": None for k in keys}, "reconstruction_applicable": False}
    return {**{f"{k}_ratio": _ratio(recon["combined"][k], recon["stage1"][k]) for k in keys},
            "reconstruction_applicable": True}


def evaluate_multistage(model, data: GroundTruthData, classifier=None, n: int = 512, seed: int = 0,
                        batch_size: int = 64, resamples: int = 5, k: int = 3,
                        iwae_samples: int = DEFAULT_BOUND_SAMPLES) -> dict:
    """All of the above for a combined model, as a JSON-ready nested dict:

    {"stage1":   {"reconstruction", "samples", "factor_accuracy", "classifier_accuracy"},
     "combined": {"reconstruction", "samples", "factor_accuracy", "classifier_accuracy", "w_invariance",
                  "code_invariance"},
     "classifier": {"accuracy" (held-out, every factor), "real_accuracy" (on these images), "chance",
                    "readable" (the factors fidelity and w-invariance count), "readable_share",
                    "left_out" ({factor: held-out accuracy} of those it cannot read), "config",
                    "real_vs_real" (FD, P/R of two real sets: the floor of the sample scores)},
     "summary": {"bce_ratio" (combined / stage 1, target <= 0.5), "bce_excess_ratio" (the same on
                 the BCE above the images' entropy: the ratio to read on non-binary images),
                 "reconstruction_applicable" (False for a bijective stage 2, the flow: its ratios
                 are None, and its combined reconstruction and factor accuracy are those of x
                 itself, not results), "fd_ratio" (< 1 is better),
                 "w_change" (target < 0.05), "w_change_held" (the same on the factors stage 1 holds),
                 "code_change" (share of stage 1's code variance that w moves)}, "n", "seed"}

    The reconstruction sections hold the bounds of evaluate_reconstruction ("elbo_sampled",
    "iwae" with `iwae_samples` draws, and "log_p_x_given_y" for an exact stage 2).
    "factor_accuracy" (fidelity) and "classifier_accuracy" (the classifier's held-out accuracy, the
    ceiling beside it) cover the readable factors only. A dataset without factors or labels (an image
    folder) gets the reconstruction, the bounds and code_invariance, and "classifier": {"skipped"}.
    `classifier` defaults to get_factor_classifier(data) (trained once, then cached). Non-finite
    values (the infinite PSNR of an exact reconstruction, as a flow's is) become None."""
    _require_combined(model, "evaluate_multistage")
    from untwine.multistage.classifier import label_space
    device = _device(model)
    recon = evaluate_reconstruction(model, data, n=n, seed=seed, batch_size=batch_size, iwae_samples=iwae_samples)
    if classifier is None and label_space(data) is None:  # an image set without labels: no classifier to learn
        codes = code_invariance(model, data, n=n, resamples=resamples, seed=seed, batch_size=batch_size)
        return json_ready({
            "stage1": {"reconstruction": recon["stage1"]},
            "combined": {"reconstruction": recon["combined"], "code_invariance": codes},
            "classifier": {"skipped": f"sample quality (FD, precision/recall), factor fidelity and w-invariance "
                                      f"need a classifier of labelled images; dataset "
                                      f"{getattr(data, 'name', '?')!r} has no labels"},
            "summary": {**reconstruction_ratios(recon), "code_change": codes["overall"]},
            "n": int(n), "seed": int(seed)})
    if classifier is None:
        from untwine.multistage.classifier import get_factor_classifier
        classifier = get_factor_classifier(data, device=device)
    fidelity = factor_fidelity(model, data, classifier, n=n, seed=seed, batch_size=batch_size)
    accuracy = dict(getattr(classifier, "accuracy", {}))
    readable = [name for name in fidelity["real"] if name != "mean"]
    # the classifier's own held-out accuracy over the factors fidelity counts: the ceiling beside it
    ceiling = {name: accuracy[name] for name in readable if name in accuracy}
    ceiling["mean"] = float(np.mean(list(ceiling.values()))) if ceiling else None
    with evaluating(classifier, seed=seed, device=device):
        real = _real_features(data, classifier, n, seed, batch_size, device)
        real2 = _real_features(data, classifier, n, seed, batch_size, device, stream=1)
    samples = {stage: sample_quality(model, data, classifier, n=n, seed=seed, batch_size=batch_size, stage=stage,
                                     k=k, real_features=real) for stage in ("stage1", "combined")}
    invariance = w_invariance(model, data, classifier, n=n, resamples=resamples, seed=seed, batch_size=batch_size)
    codes = code_invariance(model, data, n=n, resamples=resamples, seed=seed, batch_size=batch_size)
    chance = dict(getattr(classifier, "chance", {}))
    return json_ready({
        "stage1": {"reconstruction": recon["stage1"], "samples": samples["stage1"],
                   "factor_accuracy": fidelity["stage1"], "classifier_accuracy": ceiling},
        "combined": {"reconstruction": recon["combined"], "samples": samples["combined"],
                     "factor_accuracy": fidelity["combined"], "classifier_accuracy": ceiling,
                     "w_invariance": invariance, "code_invariance": codes},
        "classifier": {"accuracy": accuracy, "real_accuracy": fidelity["real"], "chance": chance,
                       "readable": readable, "readable_share": READABLE_SHARE,
                       "left_out": {name: accuracy.get(name) for name in label_space(data).names
                                    if name not in readable},
                       "config": dict(getattr(classifier, "config", {})),
                       "real_vs_real": {"fd": frechet_distance(real, real2), **precision_recall(real, real2, k=k)}},
        "summary": {**reconstruction_ratios(recon),
                    "fd_ratio": _ratio(samples["combined"]["fd"], samples["stage1"]["fd"]),
                    "w_change": invariance["overall"], "w_change_held": invariance["held_overall"],
                    "code_change": codes["overall"]},
        "n": int(n), "seed": int(seed),
    })


__all__ = ["code_invariance", "evaluate_multistage", "evaluate_reconstruction", "evaluation_indices",
           "factor_fidelity", "frechet_distance", "gaussian_frechet_distance", "json_ready", "precision_recall",
           "reconstruction_applicable", "reconstruction_metrics", "reconstruction_ratios", "sample_quality",
           "stage1_reconstruction", "w_invariance"]
