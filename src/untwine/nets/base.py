"""The VAE container every objective and the training engine work with."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class VAEOutput:
    """What one forward pass produces. `x_params` are the likelihood's parameters
    (logits for Bernoulli, means for Gaussian), shaped like the input."""

    x_params: torch.Tensor
    mu: torch.Tensor
    logvar: torch.Tensor
    z: torch.Tensor


class VAE(nn.Module):
    """Encoder (x -> mu, logvar), reparameterised sample, decoder (z -> x_params), likelihood."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, likelihood: nn.Module, latent_dim: int):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.likelihood = likelihood
        self.latent_dim = latent_dim

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    @staticmethod
    def reparameterise(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)

    def forward(self, x: torch.Tensor) -> VAEOutput:
        mu, logvar = self.encode(x)
        z = self.reparameterise(mu, logvar) if self.training else mu
        return VAEOutput(self.decode(z), mu, logvar, z)

    @torch.no_grad()
    def representation(self, x: torch.Tensor) -> torch.Tensor:
        """The code metrics score: the encoder mean."""
        return self.encode(x)[0]
