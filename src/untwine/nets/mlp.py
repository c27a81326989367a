"""Fully connected encoder/decoder pair for low-dimensional and tabular data (or flattened images).

The encoder flattens everything after the batch dimension; the decoder reshapes its output back to
`data_shape`, so x_params always has the data's shape. ReLU hidden layers, linear heads.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


def _stack(widths: Sequence[int]) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for w_in, w_out in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(w_in, w_out), nn.ReLU(inplace=True)]
    return layers


class MLPEncoder(nn.Module):
    """(B, *data_shape) -> (mu, logvar), each (B, latent_dim)."""

    def __init__(self, data_shape: Sequence[int], latent_dim: int = 10, hidden: Sequence[int] = (256, 256)):
        super().__init__()
        in_features = math.prod(data_shape)
        self.features = nn.Sequential(nn.Flatten(), *_stack([in_features, *hidden]))
        width = hidden[-1] if hidden else in_features
        self.mean = nn.Linear(width, latent_dim)
        self.logvar = nn.Linear(width, latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x)
        return self.mean(h), self.logvar(h)


class MLPDecoder(nn.Module):
    """(B, latent_dim) -> likelihood parameters (B, *data_shape); hidden widths mirror the encoder's."""

    def __init__(self, data_shape: Sequence[int], latent_dim: int = 10, hidden: Sequence[int] = (256, 256)):
        super().__init__()
        self.data_shape = tuple(data_shape)
        widths = [latent_dim, *reversed(tuple(hidden))]
        self.net = nn.Sequential(*_stack(widths), nn.Linear(widths[-1], math.prod(self.data_shape)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).unflatten(1, self.data_shape)
