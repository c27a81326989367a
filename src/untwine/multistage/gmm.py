"""Stage 2 as a mixture of factor analysers on the residual: p2(x | y) exact, no neural decoder.

    stage2 = build_stage2("gmm", image_shape=(1, 64, 64), latent_dim=10, components=10, rank=8)

    u = (255 x + e) / 256,  e ~ U[0, 1)^D     (uniform dequantisation of the 8-bit image)
    p(u | y, z) = sum_k pi_k(z) N(u; y + mu_k, L_k L_k^T + diag(psi_k))

Why the residual in pixel space: stage 1 already explains the layout, so what is left, u - y, is
small, centred and strongly correlated across pixels (edges, texture), which a few low-rank
factors capture; a learned low-dimensional detail code would need an encoder and so lose
exactness. Why the mixing weights depend on z rather than y: y = g1(z) is a deterministic
function of z, so z carries the same information in D numbers instead of C*64*64. The likelihood is
exact (Woodbury and the matrix-determinant lemma, see untwine.multistage.mixture) and trained by
gradient descent on the negative log-likelihood through the engine.

What the numbers mean: the mixture is a continuous density on u, not a probability of x. By
Jensen, log P(x) >= E_e[log p(u | y)] - D log 256 for the 8-bit image x, so `log_likelihood`
returns one draw of that bound (nats) and the "bpd" term is -bound / (D ln 2): bits per dimension
of the 8-bit discrete data, on the same footing as the flow's. A binary dSprites image read as
8-bit (levels 0 and 255 only) gets a bpd that upper-bounds its bits under the model and is far
from 0 until the density concentrates in the two used bins; with bits=1 the dequantisation is
u = (x + e) / 2 and the bpd is that of the binary image, comparable with stage 1's Bernoulli
nll / (D ln 2). Keep `bits` equal between the flow and the mixture to compare them; the ms-flow and
ms-gmm presets take it from the dataset (bits: auto, see data_bits).

infer / generate carry the component in w (w_dim = K + rank): w = [p(k | x, y, z) (K
responsibilities), E[w | x, k*]] with k* the most probable component; generate takes k = argmax of
the first K entries (sample_w puts a one-hot there) and returns y + mu_k + L_k w mapped back from
u to [0, 1] and clipped. infer dequantises at the bin centre (e = 1/2), so that it is deterministic.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from untwine.errors import ConfigError, DataError
from untwine.multistage.base import Stage2
from untwine.multistage.mixture import ConditionalMixtureOfFactorAnalysers, check_int, check_positive
from untwine.multistage.model import bits_per_dim
from untwine.objectives.base import ObjectiveOutput, detached_terms, float32_math

# ---- uniform dequantisation, shared by the exact-likelihood stage-2 variants (flow and mixture) ---
LEVELS = 256   # 8-bit images; bits=1 gives 2 levels, for binary images
LIKELIHOODS = ("bernoulli", "gaussian")


def check_bits(owner: str, bits) -> int:
    """The bit depth of the data (1..16) -> its number of levels 2**bits."""
    if bits == "auto":
        raise ConfigError(f"{owner}: bits='auto' is resolved from the dataset when a run builds stage 2 "
                          f"(untwine.multistage.build); building one directly, give the data's bit depth "
                          f"(1 for binary images such as dSprites, 8 for 8-bit ones; see data_bits)")
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 16:
        raise ConfigError(f"{owner}: bits={bits!r}; expected an integer 1..16 (8 for 8-bit images, 1 for binary ones)")
    return 2 ** bits


def data_bits(data) -> int:
    """The bit depth of a dataset's images: 1 where they are binary by construction (procedural
    dSprites, a bit-packed array such as dSprites' npz), else 8. Scoring binary images as 8-bit data
    adds D log 128 nats (19,873 for 64x64) to the nll against stage 1's Bernoulli bound."""
    from untwine.data.arrays import ArrayGroundTruthData
    from untwine.data.dsprites import DSprites
    if isinstance(data, DSprites) or (isinstance(data, ArrayGroundTruthData) and data.packed):
        return 1
    return 8


def resolve_bits(params: dict, data) -> dict:
    """Stage-2 parameters with bits="auto" (the ms-flow / ms-gmm presets) replaced by data_bits(data);
    anything else unchanged (a copy: the run's config keeps "auto")."""
    params = dict(params)
    if params.get("bits") == "auto":
        params["bits"] = data_bits(data)
    return params


def dequantise(x: torch.Tensor, noise: torch.Tensor | None = None, levels: int = LEVELS) -> torch.Tensor:
    """u = ((levels - 1) x + e) / levels in [0, 1): e uniform noise (shape of x), or the bin centre
    1/2 when `noise` is None (deterministic, exactly invertible by `to_image`)."""
    e = torch.full_like(x, 0.5) if noise is None else noise
    return (x * (levels - 1) + e) / levels


def to_image(u: torch.Tensor, levels: int = LEVELS) -> torch.Tensor:
    """The inverse of `dequantise` at the bin centre, clipped to [0, 1]."""
    return ((u * levels - 0.5) / (levels - 1)).clamp(0.0, 1.0)


def discrete_log_likelihood(log_density_u: torch.Tensor, dims: int, levels: int = LEVELS) -> torch.Tensor:
    """log p(u) of the dequantised image -> the bound on log P(x) of the discrete image: the
    density integrates over a bin of width 1/levels per dimension."""
    return log_density_u - dims * math.log(levels)


def check_images(owner: str, image_shape, x: torch.Tensor, name: str = "x") -> None:
    if tuple(x.shape[1:]) != tuple(image_shape):
        raise DataError(f"{owner}: {name} has shape {tuple(x.shape)}; expected (B, {', '.join(map(str, image_shape))})")


def check_likelihood(owner: str, likelihood: str) -> str:
    if likelihood not in LIKELIHOODS:
        raise ConfigError(f"{owner}: likelihood={likelihood!r}; expected one of {LIKELIHOODS}")
    return likelihood


def likelihood_output(nll: torch.Tensor, dims: int) -> ObjectiveOutput:
    """The loss of an exact-likelihood stage 2: mean nll (nats per image); terms recon = nll,
    kl = 0 (no latent is inferred approximately), bpd of the 8-bit data."""
    loss = nll.mean()
    return ObjectiveOutput(loss, detached_terms(recon=loss, kl=torch.zeros_like(loss),
                                                bpd=bits_per_dim(loss, dims)))


class Stage2GMM(Stage2):
    name = "gmm"
    has_likelihood = True
    exact_likelihood = True

    def __init__(self, image_shape: tuple[int, int, int], latent_dim: int, likelihood: str = "bernoulli",
                 components: int = 10, rank: int = 8, hidden: int = 64, condition_on_z: bool = True,
                 init_variance: float = 0.01, temperature: float = 1.0, bits: int = 8):
        """`components` K and `rank` of the factor analysers; `hidden` the width of the MLP from z to
        the mixing weights; condition_on_z=False gives fixed weights (a plain mixture on u - y);
        `init_variance` the starting per-pixel noise variance of u - y; `temperature` scales the
        factor latent of sample_w; `bits` the bit depth of the data (8; 1 for binary images, whose
        bpd is then of the binary image, comparable with a Bernoulli nll; the ms-gmm preset's "auto"
        is resolved from the dataset by untwine.multistage.build). `likelihood` (stage 1's) is
        accepted for the common signature: the mixture is its own likelihood whatever it is."""
        super().__init__()
        owner = "stage 2 'gmm'"
        if len(tuple(image_shape)) != 3:
            raise ConfigError(f"{owner}: image_shape={image_shape!r}; expected (C, H, W)")
        self.image_shape = tuple(int(s) for s in image_shape)
        self.dims = math.prod(self.image_shape)
        self.latent_dim = check_int(owner, "latent_dim", latent_dim)
        self.likelihood = check_likelihood(owner, likelihood)
        if not isinstance(condition_on_z, bool):
            raise ConfigError(f"{owner}: condition_on_z={condition_on_z!r}; expected true or false")
        self.condition_on_z = condition_on_z
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature >= 0:
            raise ConfigError(f"{owner}: temperature={temperature!r}; expected a number >= 0")
        self.temperature = float(temperature)
        self.bits, self.quant_levels = bits, check_bits(owner, bits)
        check_positive(owner, "init_variance", init_variance)
        self.mixture = ConditionalMixtureOfFactorAnalysers(
            self.dims, context_dim=self.latent_dim if condition_on_z else 0, components=components, rank=rank,
            hidden=hidden, init_variance=init_variance)
        self.components = self.mixture.components
        self.rank = self.mixture.rank
        self.w_dim = self.components + self.rank

    def _context(self, z: torch.Tensor) -> torch.Tensor | None:
        return z.float() if self.condition_on_z else None

    def _residual(self, x: torch.Tensor, y: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        check_images("stage 2 'gmm'", self.image_shape, x)
        check_images("stage 2 'gmm'", self.image_shape, y, "y")
        return (dequantise(x.float(), noise, self.quant_levels) - y.float()).flatten(1)

    def log_likelihood(self, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """One draw of the dequantisation bound on log P(x | y) of the 8-bit image, nats, (B,)."""
        with float32_math(x):
            r = self._residual(x, y, torch.rand_like(x, dtype=torch.float32))
            return discrete_log_likelihood(self.mixture.log_prob(r, self._context(z)), self.dims, self.quant_levels)

    def loss(self, x, y, z, beta=None, step=0) -> ObjectiveOutput:
        return likelihood_output(-self.log_likelihood(x, y, z), self.dims)

    def infer(self, x, y, z) -> torch.Tensor:
        with float32_math(x):
            post = self.mixture.posterior(self._residual(x, y, None), self._context(z))
            _, w = post.most_probable()
            return torch.cat([post.log_resp.exp(), w], 1)

    def generate(self, y, z, w) -> torch.Tensor:
        if w.dim() != 2 or w.shape[1] != self.w_dim:
            raise DataError(f"stage 2 'gmm': w has shape {tuple(w.shape)}; expected (B, {self.w_dim}) "
                            f"= {self.components} component weights then {self.rank} factors")
        with float32_math(y):
            k = w[:, :self.components].argmax(1)
            u = y.float() + self.mixture.decode(k, w[:, self.components:].float()).view(-1, *self.image_shape)
            return to_image(u, self.quant_levels)

    def sample_w(self, n, y, z, generator=None) -> torch.Tensor:
        with float32_math(y):
            k, w = self.mixture.sample_components(self._context(z), generator, n=n, temperature=self.temperature)
            return torch.cat([F.one_hot(k, self.components).float(), w], 1)
