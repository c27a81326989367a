"""Which batches an objective consumes, and the sampler that makes them.

An objective declares `batch_kind`:
- "single" (default): a float32 image tensor (B, C, H, W) from `ObservationSampler`;
- "pairs": a `PairBatch` (x1, x2, changed) from `PairSampler` (Locatello et al.'s weak pairs);
- "groups": a `GroupBatch` (x (G, M, C, H, W), classes) from `GroupSampler` (ML-VAE).
`optim.batch_size` is always the number of images per step, so that throughput and the images a
run sees compare across kinds. Data without a factor space is drawn uniformly by index: an image set
(data/images.py) from the images outside its evaluation split, distinct within a batch (as
ObservationSampler's); a table from all its rows.
Every sampler draws batch t from (seed, t) only, so seeding and exact resume hold for every kind.
"""
from __future__ import annotations

import numpy as np
import torch

from untwine.errors import ConfigError

BATCH_KINDS = ("single", "pairs", "groups")


class IndexSampler:
    """Uniform batches of rows for data without a factor space (`data.batch(indices)`), with the
    samplers' (seed, step) seeding and state_dict."""

    def __init__(self, data, batch_size: int, seed: int = 0, device=None):
        from untwine.data.split import dataset_split
        self.data, self.batch_size, self.seed, self.device, self.step = data, int(batch_size), int(seed), device, 0
        split = dataset_split(data)
        self.pool = split.train_indices if split is not None else None  # None: every row (a table)
        if self.pool is not None and self.batch_size > len(self.pool):
            raise ConfigError(f"optim.batch_size={self.batch_size} exceeds the {len(self.pool)} training images of "
                              f"{getattr(data, 'name', 'the dataset')!r}; a batch holds distinct images: use "
                              f"optim.batch_size <= {len(self.pool)}")

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.step]))
        self.step += 1
        if self.pool is not None:
            return self.data.batch(self.pool[rng.choice(len(self.pool), size=self.batch_size, replace=False)],
                                   device=self.device)
        return self.data.batch(rng.integers(0, len(self.data), size=self.batch_size, dtype=np.int64),
                               device=self.device)

    def state_dict(self) -> dict:
        return {"sampler": type(self).__name__, "seed": self.seed, "step": self.step, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        if state.get("batch_size", self.batch_size) != self.batch_size:
            raise ConfigError(f"cannot resume: the run drew batches of {state['batch_size']} rows, the config "
                              f"asks for {self.batch_size}; resume with the run's optim.batch_size")
        self.seed, self.step = int(state["seed"]), int(state["step"])


def batch_kind(objective) -> str:
    kind = getattr(objective, "batch_kind", "single")
    if kind not in BATCH_KINDS:
        raise ConfigError(f"objective {type(objective).__name__} declares batch_kind={kind!r}; "
                          f"expected one of {BATCH_KINDS}")
    return kind


def build_sampler(cfg, data, objective, seed: int, device):
    """The sampler for `objective`'s batch kind, configured by cfg.optim.batch_size and cfg.batch."""
    from untwine.data.samplers import GroupSampler, ObservationSampler, PairSampler

    kind, size, b = batch_kind(objective), cfg.optim.batch_size, cfg.batch
    if getattr(data, "factor_space", None) is None:
        if kind != "single":
            raise ConfigError(f"objective {cfg.objective.name!r} trains on {kind} of observations sharing factors, "
                              f"but this dataset has no factor space; use a ground-truth dataset")
        return IndexSampler(data, size, seed=seed, device=device)
    if kind == "single":
        return ObservationSampler(data, size, seed=seed, device=device)
    if kind == "pairs":
        if size < 2:
            raise ConfigError(f"optim.batch_size={size} images cannot hold a pair; use at least 2")
        return PairSampler(data, size // 2, k=b.k, mode=b.mode, seed=seed, device=device)
    if not b.shared_factors:
        raise ConfigError(f"objective {cfg.objective.name!r} trains on groups: name their content factors as "
                          f"batch.shared_factors=[...] (one of {list(data.factor_space.names)})")
    if size < b.group_size:
        raise ConfigError(f"optim.batch_size={size} images cannot hold one group of batch.group_size="
                          f"{b.group_size}; raise the batch size or lower the group size")
    combos = None
    if b.holdout_fraction > 0:
        from untwine.metrics.content_style import split_content_combinations
        combos = split_content_combinations(data.factor_space, b.shared_factors, b.holdout_fraction,
                                            b.holdout_seed).train
    return GroupSampler(data, size // b.group_size, b.group_size, b.shared_factors, seed=seed, device=device,
                        content_combinations=combos)


def to_device_layout(batch, channels_last: bool):
    """Batch with its image tensors in channels-last memory format (4-d images only)."""
    if not channels_last:
        return batch

    def cl(t):
        return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t

    if isinstance(batch, torch.Tensor):
        return cl(batch)
    return type(batch)(*(cl(t) if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in batch))



