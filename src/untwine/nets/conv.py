"""The standard 64x64 convolutional encoder and decoder of disentanglement_lib
(methods/shared/architectures.py: conv_encoder and deconv_decoder, row 3 of Table 1 of the
beta-VAE paper).

TensorFlow's padding="same" becomes explicit paddings here: a 4x4 stride-2 convolution pads one
pixel on each side (64 -> 32 -> 16) and a 2x2 stride-2 one pads none (16 -> 8 -> 4); a 4x4 stride-2
transposed convolution with padding 1 doubles the size exactly (4 -> 8 -> 16 -> 32 -> 64).
Weights use Glorot-uniform and zero biases, TensorFlow's defaults, so training starts where
disentanglement_lib's does. Flattening is in PyTorch's (C, H, W) order rather than TF's (H, W, C):
a fixed permutation of the dense layer's inputs, so the same function class and parameter count.
"""
from __future__ import annotations

import torch
from torch import nn

IMAGE_SIZE = 64


def glorot_init(module: nn.Module) -> None:
    """TensorFlow's default initialisation (Glorot-uniform weights, zero biases)."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)


class Conv64Encoder(nn.Module):
    """(B, C, 64, 64) -> (mu, logvar), each (B, latent_dim)."""

    def __init__(self, in_channels: int = 1, latent_dim: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 4, stride=2, padding=1), nn.ReLU(inplace=True),  # 32x32
            nn.Conv2d(32, 32, 4, stride=2, padding=1), nn.ReLU(inplace=True),  # 16x16
            nn.Conv2d(32, 64, 2, stride=2), nn.ReLU(inplace=True),  # 8x8
            nn.Conv2d(64, 64, 2, stride=2), nn.ReLU(inplace=True),  # 4x4
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, 256), nn.ReLU(inplace=True),
        )
        self.mean = nn.Linear(256, latent_dim)
        self.logvar = nn.Linear(256, latent_dim)
        glorot_init(self)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x)
        return self.mean(h), self.logvar(h)


class Conv64Decoder(nn.Module):
    """(B, latent_dim) -> likelihood parameters (B, C, 64, 64)."""

    def __init__(self, out_channels: int = 1, latent_dim: int = 10):
        super().__init__()
        self.dense = nn.Sequential(
            nn.Linear(latent_dim, 256), nn.ReLU(inplace=True),
            nn.Linear(256, 64 * 4 * 4), nn.ReLU(inplace=True),
            nn.Unflatten(1, (64, 4, 4)),
        )
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(64, 64, 4, stride=2, padding=1), nn.ReLU(inplace=True),  # 8x8
            nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1), nn.ReLU(inplace=True),  # 16x16
            nn.ConvTranspose2d(32, 32, 4, stride=2, padding=1), nn.ReLU(inplace=True),  # 32x32
            nn.ConvTranspose2d(32, out_channels, 4, stride=2, padding=1),  # 64x64
        )
        glorot_init(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.deconv(self.dense(z))
