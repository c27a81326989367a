"""A factor classifier that untwine trains itself on a ground-truth dataset, or on the weak labels of
an image set (CelebA's 40 binary attributes, a folder's subfolders), so that sample quality and
factor fidelity can be measured offline (no downloaded Inception weights exist here).

    clf = get_factor_classifier(get_dataset("dsprites"))    # trained once (~2 min CPU), then cached
    feats = clf.features(x)        # (B, 256) penultimate layer: the space of Frechet distance, P/R
    classes = clf.predict(x)       # (B, K) predicted factor classes
    clf.accuracy                   # {"shape": 0.99, ..., "mean": ...} on held-out images

A small conv net (the disentanglement_lib encoder's trunk) with one softmax head per factor;
continuous factors (position, scale, orientation) are treated as classes of their grid, a binary
attribute as a factor of two classes. Training shows its progress (untwine.progress) and
is deterministic given the seed (batch t is drawn from a generator seeded by (seed, t), the
weights from a forked torch RNG), and never touches the global RNG state.

What it can read: a factor is *readable* when the classifier's held-out accuracy beats chance (the
share of the most frequent class among the held-out images) by at least READABLE_SHARE of the way
to 1, i.e. (accuracy - chance) / (1 - chance) >= READABLE_SHARE. Fidelity and w-invariance are
computed over the readable factors only (the others are listed with their accuracy); a factor read
at chance says nothing about an image. dSprites' orientation, 40 angles with the square's 4-fold and
the ellipse's 2-fold symmetry and 0 = 2 pi, is read at 0.12 (chance 0.025: 0.10 of the way): left out.

Cache: $UNTWINE_CACHE/classifiers/<dataset>-<config hash>.safetensors holds the weights and the
.json beside it the config, the held-out accuracy per factor and the weights' SHA-256. The config
(and so the hash) names the recipe, the device type and the training precision. The JSON is
written last, so an entry without a valid JSON (or whose checksum or tensors do not match) is
rebuilt with a warning, never used. Never pickled.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from untwine.data.base import GroundTruthData
from untwine.data.split import dataset_split, require_dataset_eval_indices
from untwine.errors import ConfigError, DataError
from untwine.io import atomic_write_bytes

#: bump when the architecture or the training recipe changes: old cache entries stop matching
CLASSIFIER_VERSION = 3  # 3: trains on the grid's training split only
#: ~2-3 minutes on one CPU thread at batch 64 (about 60-90 ms a step)
DEFAULT_STEPS = 2000
#: a small image set trains for this many passes over its training images instead (at least
#: MIN_STEPS): 2,000 steps of 64 are 600 passes over 200 images, minutes of CPU that teach nothing
MAX_EPOCHS = 10
MIN_STEPS = 200


def default_steps(data, batch_size: int = 64) -> int:
    """DEFAULT_STEPS, or MAX_EPOCHS passes over a small set's training images (at least MIN_STEPS)."""
    from untwine.data.split import dataset_split
    split = dataset_split(data)
    n = split.num_train if split is not None else len(data)
    return int(min(DEFAULT_STEPS, max(MIN_STEPS, -(-MAX_EPOCHS * n // batch_size))))
DEFAULT_BATCH_SIZE = 64
DEFAULT_LR = 1e-3
FEATURE_DIM = 256
#: held-out images (disjoint from every training batch) for the accuracy per factor
HELD_OUT = 2000
#: a factor is readable when (accuracy - chance) / (1 - chance) reaches this (see the module's docstring)
READABLE_SHARE = 0.5


def label_space(data):
    """What the classifier reads: a factor dataset's grid, an image set's weak labels (ImageLabels),
    or None (an image set without labels); both have names, sizes and classes_of(indices)."""
    space = getattr(data, "factor_space", None)
    return space if space is not None else getattr(data, "labels", None)


def _require_labels(data):
    space = label_space(data)
    if space is None:
        raise DataError(f"dataset {getattr(data, 'name', '?')!r} has no factors or labels for a factor classifier "
                        f"to learn; sample quality in its features needs labelled images (e.g. subfolders as classes)")
    return space


class FactorClassifier(nn.Module):
    """(B, C, 64, 64) images in [0, 1] -> one logit vector per factor; `features` is the 256-d
    penultimate layer."""

    def __init__(self, in_channels: int, factor_names: list[str], factor_sizes: list[int]):
        super().__init__()
        if len(factor_names) != len(factor_sizes) or not factor_names:
            raise ConfigError(f"a factor classifier needs one size per factor; got names {factor_names} "
                              f"and sizes {factor_sizes}")
        self.factor_names = list(factor_names)
        self.factor_sizes = [int(s) for s in factor_sizes]
        self.trunk = nn.Sequential(
            nn.Conv2d(in_channels, 32, 4, stride=2, padding=1), nn.ReLU(),  # 32x32
            nn.Conv2d(32, 32, 4, stride=2, padding=1), nn.ReLU(),  # 16x16
            nn.Conv2d(32, 64, 4, stride=2, padding=1), nn.ReLU(),  # 8x8
            nn.Conv2d(64, 64, 4, stride=2, padding=1), nn.ReLU(),  # 4x4
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, FEATURE_DIM), nn.ReLU(),
        )
        self.heads = nn.ModuleList(nn.Linear(FEATURE_DIM, s) for s in self.factor_sizes)
        #: held-out accuracy per factor (and "mean"), set by training or by the cache
        self.accuracy: dict[str, float] = {}
        #: the config this classifier was trained with (see classifier_config)
        self.config: dict = {}
        #: chance accuracy per factor and the factors it reads (set by get_factor_classifier)
        self.chance: dict[str, float] = {}
        self.readable: list[str] = list(factor_names)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self.trunk(x.float())
        return [head(h) for head in self.heads]

    @torch.no_grad()
    def features(self, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Penultimate-layer features (B, 256), float32, computed in eval mode in chunks."""
        return self._map(lambda xb: self.trunk(xb.float()), x, batch_size)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Predicted factor classes (B, K), int64."""
        return self._map(lambda xb: torch.stack([l.argmax(1) for l in self(xb)], dim=1), x, batch_size)

    def _map(self, fn, x: torch.Tensor, batch_size: int) -> torch.Tensor:
        if x.dim() != 4:
            raise DataError(f"the factor classifier takes image batches (B, C, H, W); got shape {tuple(x.shape)}")
        was_training = self.training
        self.eval()
        try:
            device = next(self.parameters()).device
            return torch.cat([fn(xb.to(device)) for xb in x.split(batch_size)])
        finally:
            self.train(was_training)


#: how the classifier trains: bf16 autocast (fast on a GPU) or float32 (exact; the CPU's default)
PRECISIONS = ("32-true", "bf16-mixed")


def default_precision(device_type: str) -> str:
    """bf16 autocast only where it is fast (CUDA); float32 elsewhere."""
    return "bf16-mixed" if device_type == "cuda" else "32-true"


def classifier_config(data: GroundTruthData, steps: int | None = None, seed: int = 0,
                      batch_size: int = DEFAULT_BATCH_SIZE, lr: float = DEFAULT_LR, held_out: int = HELD_OUT,
                      device: torch.device | str | None = None, precision: str | None = None) -> dict:
    """Everything that determines the trained weights (its hash names the cache entry). The device
    type and the precision are part of it: a GPU bf16 classifier and a CPU fp32 one learn different
    weights, so FD and fidelity from one must never be read as the other's. `device` None is the
    CPU (where training then runs); `precision` None is the device's default (default_precision);
    `steps` None is default_steps(data, batch_size) (DEFAULT_STEPS on the factor datasets)."""
    if steps is None and isinstance(batch_size, (int, np.integer)) and batch_size > 0:
        steps = default_steps(data, int(batch_size))
    for name, value in (("steps", steps), ("batch_size", batch_size), ("held_out", held_out)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ConfigError(f"factor classifier {name}={value!r}; expected a positive integer")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ConfigError(f"factor classifier seed={seed!r}; expected an integer")
    device_type = torch.device(device).type if device is not None else "cpu"
    precision = default_precision(device_type) if precision is None else precision
    if precision not in PRECISIONS:
        raise ConfigError(f"factor classifier precision={precision!r}; expected one of {PRECISIONS} "
                          f"(or None: the device's default)")
    space = _require_labels(data)
    return {"version": CLASSIFIER_VERSION, "dataset": str(data.name), "image_shape": list(data.image_shape),
            "factors": list(space.names), "sizes": list(space.sizes), "steps": int(steps), "seed": int(seed),
            "batch_size": int(batch_size), "lr": float(lr), "held_out": int(held_out),
            "device": device_type, "precision": precision}


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]


def _held_out_indices(data: GroundTruthData, seed: int, held_out: int) -> np.ndarray:
    """Accuracy images: from the dataset's evaluation split, which the classifier never trains on
    (the split every held-out multi-stage number uses)."""
    pool = require_dataset_eval_indices(data)
    rng = np.random.default_rng([seed, 1])
    return np.sort(rng.choice(pool, size=min(held_out, len(pool)), replace=False))


def _train_indices(data: GroundTruthData, seed: int, step: int, batch_size: int) -> np.ndarray:
    """Batch `step`: uniform over the dataset's training split (a function of (seed, step))."""
    pool = dataset_split(data).train_indices
    return pool[np.random.default_rng([seed, 0, step]).integers(0, len(pool), size=batch_size)]


def held_out_accuracy(clf: FactorClassifier, data: GroundTruthData, indices: np.ndarray) -> dict[str, float]:
    device = next(clf.parameters()).device
    truth = torch.from_numpy(label_space(data).classes_of(indices))
    pred = torch.cat([clf.predict(data.batch(chunk, device=device)).cpu() for chunk in np.array_split(
        indices, max(1, len(indices) // 256))])
    acc = {name: float((pred[:, k] == truth[:, k]).double().mean()) for k, name in enumerate(clf.factor_names)}
    acc["mean"] = float(np.mean(list(acc.values())))
    return acc


def chance_accuracy(data, indices: np.ndarray) -> dict[str, float]:
    """Per factor, the accuracy of always guessing its most frequent class among these images."""
    space = label_space(data)
    truth = space.classes_of(indices)
    return {name: float(np.bincount(truth[:, k], minlength=size).max() / max(len(truth), 1))
            for k, (name, size) in enumerate(zip(space.names, space.sizes))}


def readable_factors(accuracy: dict[str, float], chance: dict[str, float],
                     share: float = READABLE_SHARE) -> list[str]:
    """The factors read at least `share` of the way from chance to 1 (see the module's docstring)."""
    return [name for name, c in chance.items()
            if name in accuracy and (accuracy[name] - c) >= share * (1.0 - c) - 1e-9 and c < 1.0]


def train_factor_classifier(data: GroundTruthData, config: dict, device: torch.device | str | None = None,
                            progress: bool = True) -> FactorClassifier:
    """Train a classifier for `config` (from classifier_config); deterministic given config["seed"].
    `progress`: a bar in a terminal, else a line about every 5% of the steps (untwine.progress)."""
    from untwine.progress import Progress

    space = _require_labels(data)
    device = torch.device(device) if device is not None else torch.device("cpu")
    seed, steps, batch_size = config["seed"], config["steps"], config["batch_size"]
    # enable_grad: a caller evaluating under no_grad (the engine's final evaluation) may get here
    # on an empty cache, and training needs the graph
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []), torch.enable_grad():
        torch.manual_seed(seed)
        clf = FactorClassifier(data.image_shape[0], config["factors"], config["sizes"]).to(device)
        held_out = _held_out_indices(data, seed, config["held_out"])
        opt = torch.optim.Adam(clf.parameters(), lr=config["lr"])
        # cosine decay to 0: at a fixed, short budget it ends more accurate than a constant rate
        schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + np.cos(np.pi * t / steps)))
        loss_fn = nn.CrossEntropyLoss()
        clf.train()
        bar = Progress(bool(progress), steps, label=f"factor classifier ({data.name})", unit="step")
        for step in range(steps):
            idx = _train_indices(data, seed, step, batch_size)
            x = data.batch(idx, device=device)
            y = torch.from_numpy(space.classes_of(idx)).to(device)
            # the precision the cache key names (default_precision: bf16 on a GPU, float32 on the CPU)
            bf16 = config.get("precision", default_precision(device.type)) == "bf16-mixed"
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = clf(x)
            loss = sum(loss_fn(l.float(), y[:, k]) for k, l in enumerate(logits))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
            if bar.enabled and ((step + 1) % 50 == 0 or step + 1 == steps):  # reading the loss syncs a GPU
                bar.update(step + 1, {"loss": float(loss.detach())})
        bar.close()
    clf.eval()
    clf.accuracy = held_out_accuracy(clf, data, held_out)
    clf.config = dict(config)
    _set_readable(clf, data)
    return clf


# ---- cache ----------------------------------------------------------------------------------------

def cache_paths(config: dict, cache_dir: str | os.PathLike | None = None) -> tuple[Path, Path]:
    from untwine.data.cache import cache_root
    stem = cache_root(cache_dir) / "classifiers" / f"{config['dataset']}-{config_hash(config)}"
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def save_classifier(clf: FactorClassifier, weights_path: Path, meta_path: Path) -> None:
    from safetensors.torch import save
    blob = save({k: v.detach().cpu().contiguous() for k, v in clf.state_dict().items()})
    atomic_write_bytes(weights_path, blob)
    meta = {"config": clf.config, "accuracy": clf.accuracy, "weights_sha256": hashlib.sha256(blob).hexdigest()}
    atomic_write_bytes(meta_path, json.dumps(meta, indent=1).encode())  # last: it marks the entry complete


def load_classifier(weights_path: Path, meta_path: Path, config: dict) -> FactorClassifier:
    """The cached classifier; raises DataError saying what is wrong with a bad entry."""
    from safetensors.torch import load
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        blob = weights_path.read_bytes()
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"unreadable classifier cache ({e})") from e
    if not isinstance(meta, dict) or meta.get("config") != config:
        raise DataError("classifier cache metadata does not match the requested config")
    if hashlib.sha256(blob).hexdigest() != meta.get("weights_sha256"):
        raise DataError("classifier weights do not match their checksum (damaged or truncated)")
    accuracy = meta.get("accuracy")
    if not isinstance(accuracy, dict):
        raise DataError("classifier cache metadata has no accuracy table")
    clf = FactorClassifier(config["image_shape"][0], config["factors"], config["sizes"])
    try:
        clf.load_state_dict(load(blob))
    except Exception as e:  # safetensors raises its own error types on a malformed header
        raise DataError(f"classifier weights cannot be loaded ({e})") from e
    clf.eval()
    clf.accuracy = {str(k): float(v) for k, v in accuracy.items()}
    clf.config = dict(config)
    return clf


def get_factor_classifier(data: GroundTruthData, steps: int | None = None, seed: int = 0, cache: bool = True,
                          batch_size: int = DEFAULT_BATCH_SIZE, lr: float = DEFAULT_LR, held_out: int = HELD_OUT,
                          device: torch.device | str | None = None, cache_dir: str | os.PathLike | None = None,
                          progress: bool = True, precision: str | None = None) -> FactorClassifier:
    """The factor classifier of `data` for this recipe: loaded from the cache when a valid entry
    exists, else trained (and cached when `cache`), showing its progress. A damaged entry is rebuilt
    with a warning. The entry is per device type and precision (classifier_config). `clf.chance`
    (the most frequent class's share on the held-out images) and `clf.readable` (the factors it
    reads, see readable_factors) are set from the data."""
    config = classifier_config(data, steps=steps, seed=seed, batch_size=batch_size, lr=lr, held_out=held_out,
                               device=device, precision=precision)
    weights_path, meta_path = cache_paths(config, cache_dir)
    if cache and (weights_path.exists() or meta_path.exists()):
        try:
            clf = load_classifier(weights_path, meta_path, config)
            _set_readable(clf, data)
            return clf.to(device) if device is not None else clf
        except DataError as e:
            warnings.warn(f"factor classifier cache {str(weights_path)!r} is not valid ({e}); retraining it",
                          RuntimeWarning, stacklevel=2)
    clf = train_factor_classifier(data, config, device=device, progress=progress)
    if cache:
        from untwine.data.cache import writable_cache_root
        writable_cache_root(cache_dir)
        save_classifier(clf, weights_path, meta_path)
    return clf


def _set_readable(clf: FactorClassifier, data) -> None:
    held_out = _held_out_indices(data, clf.config["seed"], clf.config["held_out"])
    clf.chance = chance_accuracy(data, held_out)
    clf.readable = readable_factors(clf.accuracy, clf.chance)


__all__ = ["DEFAULT_STEPS", "READABLE_SHARE", "FactorClassifier", "chance_accuracy", "classifier_config",
           "get_factor_classifier", "label_space", "readable_factors", "train_factor_classifier"]
