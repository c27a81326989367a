"""The interface every ground-truth dataset offers to samplers, models and metrics."""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch

from untwine.data.factors import FactorSpace


class GroundTruthData(ABC):
    """A factor space plus a way to produce the observation of any factor vector.

    Observations come out as uint8 arrays (N, H, W, C) from `images`, and as float32 torch
    tensors (N, C, H, W) in [0, 1] from `batch`, gathered without per-item Python work.
    """

    name: str
    factor_space: FactorSpace
    image_shape: tuple[int, int, int]  # (C, H, W)

    @abstractmethod
    def images(self, indices: np.ndarray) -> np.ndarray:
        """uint8 images (N, H, W, C) for flat grid indices (N,)."""

    def __len__(self) -> int:
        return len(self.factor_space)

    def batch(self, indices: np.ndarray, device: torch.device | str | None = None) -> torch.Tensor:
        """float32 tensor (N, C, H, W) in [0, 1] for flat grid indices (N,)."""
        imgs = torch.from_numpy(np.ascontiguousarray(self.images(indices)))
        x = imgs.to(device=device) if device is not None else imgs
        return x.permute(0, 3, 1, 2).float().div_(255.0)

    def observations(self, classes: np.ndarray, device: torch.device | str | None = None) -> torch.Tensor:
        """float32 tensor (N, C, H, W) for an (N, K) array of factor classes."""
        return self.batch(self.factor_space.index_of(classes), device=device)
