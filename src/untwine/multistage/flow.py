"""Stage 2 as a conditional normalizing flow on the image given the stage-1 output: exact
log-likelihood of x given y (log p2(x | y), a conditional density given stage 1's output, not a
bound on log p(x): the combined model's bounds are MultiStageModel.bounds), exact inversion, sampling.

    stage2 = build_stage2("flow", image_shape=(1, 64, 64), latent_dim=10, levels=3, blocks=4, hidden=32)

    u = (255 x + e) / 256, e ~ U[0, 1)^D              uniform dequantisation of the 8-bit image
    s = logit(a + (1 - 2a) u), a = 0.05                 unbounded, as in RealNVP
    w = f(s; y) ~ N(0, I)                               f: multi-scale conditional coupling flow

The flow (the cINN design of Ardizzone et al. 2019): at each of `levels` scales an invertible
2x2 space-to-depth (i-RevNet downsampling) then `blocks` conditional affine coupling blocks
(FrEIA's AllInOneBlock: affine coupling, global affine scaling, fixed channel permutation) with
conv subnets 3x3 -> 1x1 -> 3x3; after every scale but the last, half of the channels are factored
out into w (RealNVP/Glow multi-scale), which keeps the cost of the coarse scales small. The
condition at every scale is logit(y) brought to that scale by the same space-to-depth, so that each
coupling subnet sees the stage-1 pixels aligned with the ones it transforms (optionally z as
constant channels). The last conv of every subnet starts at zero: the flow starts as the logit
map, an identity-like function of x.

Cost (measured on this 2-core machine class, one torch thread, batch 64 of 1x64x64, under load):
a training step of the defaults (levels 3, blocks 4, hidden 32; 159k parameters) takes 0.9-1.3 s
against 0.18-0.34 s for the conv64 VAE, about 4x; the 32x32 scale's convolutions are most of it,
so blocks=2 brings it to about the VAE's cost.

Why FrEIA (0.2): it is the one of the three candidate libraries whose coupling blocks take
image-shaped conditions at every scale out of the box (its conditional AllInOneBlock /
GraphINN with Split nodes is the classic conditional-INN construction for images); zuko's flows
are for vectors (a 4096-dimensional autoregressive transform is out of reach on a CPU), and
normflows' multi-scale Glow conditions only on a class label. FrEIA's graph runs the inverse
exactly and returns log|det J| per example.

Likelihood in nats and bits per dimension: log p(u | y) = log N(w) + log|det df/ds| + log|ds/du|
(the flow's and the logit's Jacobians), and log P(x | y) >= E_e[log p(u | y)] - D log 256 for the
8-bit image x (the 1/256 bin width per dimension). `log_likelihood` returns one draw of that bound;
the "bpd" term is -bound / (D ln 2), the bits per dimension of the 8-bit discrete data. A binary
dSprites image read as 8-bit (levels 0 and 255) gets a bpd that upper-bounds its bits under the
model; bits=1 dequantises to u = (x + e) / 2 and reports the bpd of the binary image itself,
comparable with stage 1's Bernoulli nll / (D ln 2).

w is flat, (B, D) = all factored-out parts concatenated; infer dequantises at the bin centre, so
generate(y, z, infer(x, y, z)) == x to float precision for 8-bit x. sample_w = N(0, T^2 I) with the
temperature T (default 1; 0.7 is the usual choice for pictures).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import FrEIA.framework as ff
import FrEIA.modules as fm

from untwine.errors import ConfigError, DataError
from untwine.multistage.base import Stage2
from untwine.multistage.gmm import (check_bits, check_images, check_likelihood, dequantise, discrete_log_likelihood,
                                    likelihood_output, to_image)
from untwine.multistage.mixture import check_int, check_positive
from untwine.objectives.base import LOG_2PI, ObjectiveOutput, float32_math


class CouplingSubnet(nn.Sequential):
    """s, t of one coupling block: conv 3x3 -> 1x1 -> 3x3 (Glow), the last one zero so that every
    block starts as the identity."""

    def __init__(self, c_in: int, c_out: int, hidden: int):
        super().__init__(nn.Conv2d(c_in, hidden, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(hidden, hidden, 1), nn.ReLU(),
                         nn.Conv2d(hidden, c_out, 3, padding=1))
        nn.init.zeros_(self[-1].weight)
        nn.init.zeros_(self[-1].bias)


class Stage2Flow(Stage2):
    name = "flow"
    has_likelihood = True
    exact_likelihood = True
    bijective = True   # x <-> w given y: reconstructions are exact by construction

    def __init__(self, image_shape: tuple[int, int, int], latent_dim: int, likelihood: str = "bernoulli",
                 levels: int = 3, blocks: int = 4, hidden: int = 32, clamp: float = 2.0, alpha: float = 0.05,
                 condition_on_z: bool = False, temperature: float = 1.0, bits: int = 8):
        """`levels` scales (H and W must divide by 2^levels), `blocks` coupling blocks per scale,
        `hidden` channels of the coupling subnets, `clamp` the soft bound of the log-scales
        (FrEIA's affine_clamping), `alpha` of the logit transform, `condition_on_z` adds z as
        constant condition channels, `temperature` the std of sample_w, `bits` the bit depth of the
        data (8; 1 for binary images: bpd of the binary image, comparable with a Bernoulli nll; the
        ms-flow preset's "auto" is resolved from the dataset by untwine.multistage.build).
        `likelihood` (stage 1's) is accepted for the common signature: the flow is its own likelihood."""
        super().__init__()
        owner = "stage 2 'flow'"
        if len(tuple(image_shape)) != 3:
            raise ConfigError(f"{owner}: image_shape={image_shape!r}; expected (C, H, W)")
        self.image_shape = tuple(int(s) for s in image_shape)
        c, h, w = self.image_shape
        self.dims = c * h * w
        self.latent_dim = check_int(owner, "latent_dim", latent_dim)
        self.likelihood = check_likelihood(owner, likelihood)
        self.levels = check_int(owner, "levels", levels)
        blocks = check_int(owner, "blocks", blocks)
        hidden = check_int(owner, "hidden", hidden)
        clamp = check_positive(owner, "clamp", clamp)
        self.alpha = check_positive(owner, "alpha", alpha)
        if self.alpha >= 0.5:
            raise ConfigError(f"{owner}: alpha={alpha}; expected 0 < alpha < 0.5 (the logit's margin)")
        if h % 2 ** self.levels or w % 2 ** self.levels:
            raise ConfigError(f"{owner}: images of {h}x{w} cannot go through levels={levels} halvings; "
                              f"use levels <= {min(_twos(h), _twos(w))}")
        if not isinstance(condition_on_z, bool):
            raise ConfigError(f"{owner}: condition_on_z={condition_on_z!r}; expected true or false")
        self.condition_on_z = condition_on_z
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature >= 0:
            raise ConfigError(f"{owner}: temperature={temperature!r}; expected a number >= 0")
        self.temperature = float(temperature)
        self.bits, self.quant_levels = bits, check_bits(owner, bits)
        self.w_dim = self.dims
        self.inn, self.w_shapes = self._build(blocks, hidden, clamp)

    # ---- the graph ---------------------------------------------------------------------------
    def _build(self, blocks: int, hidden: int, clamp: float):
        c, h, w = self.image_shape
        extra = self.latent_dim if self.condition_on_z else 0
        # FrEIA draws its permutations from numpy's global RNG: keep that untouched and draw them
        # from torch's instead (below), so that torch.manual_seed alone fixes the model
        np_state = np.random.get_state()
        try:
            nodes = [ff.InputNode(c, h, w, name="x")]
            conditions, outputs, w_shapes = [], [], []
            current = nodes[0]   # a node, or (node, output index) for the kept half of a split
            for level in range(1, self.levels + 1):
                nodes.append(ff.Node(current, fm.IRevNetDownsampling, {}))
                ch, hh, ww = nodes[-1].output_dims[0]
                cond = ff.ConditionNode(c * 4 ** level + extra, hh, ww, name=f"y{level}")
                conditions.append(cond)
                for _ in range(blocks):
                    nodes.append(ff.Node(nodes[-1], fm.AllInOneBlock,
                                         {"subnet_constructor": lambda ci, co: CouplingSubnet(ci, co, hidden),
                                          "affine_clamping": clamp}, conditions=cond))
                if level < self.levels:
                    split = ff.Node(nodes[-1], fm.Split, {"section_sizes": [ch // 2, ch - ch // 2], "dim": 0})
                    nodes.append(split)
                    outputs.append(ff.OutputNode(split.out1))
                    w_shapes.append(split.output_dims[1])
                    current = split.out0
                else:
                    outputs.append(ff.OutputNode(nodes[-1]))
                    w_shapes.append((ch, hh, ww))
            inn = ff.GraphINN(nodes + conditions + outputs, force_tuple_output=True)
        finally:
            np.random.set_state(np_state)
        for block in inn.modules():
            if isinstance(block, fm.AllInOneBlock):
                n = block.in_channels
                perm = torch.zeros(n, n)
                perm[torch.arange(n), torch.randperm(n)] = 1.0
                # fresh contiguous tensors (FrEIA's inverse is a transposed view, which safetensors refuses)
                shape = block.w_perm.shape
                block.w_perm = nn.Parameter(perm.reshape(shape), requires_grad=False)
                block.w_perm_inv = nn.Parameter(perm.T.contiguous().reshape(shape), requires_grad=False)
        return inn, [tuple(s) for s in w_shapes]

    def _conditions(self, y: torch.Tensor, z: torch.Tensor) -> list[torch.Tensor]:
        cy = self._logit(y.float().clamp(0.0, 1.0))
        conds = []
        for level in range(1, self.levels + 1):
            cond = F.pixel_unshuffle(cy, 2 ** level)   # the same layout as IRevNetDownsampling's
            if self.condition_on_z:
                zc = z.float()[:, :, None, None].expand(-1, -1, *cond.shape[2:])
                cond = torch.cat([cond, zc], 1)
            conds.append(cond)
        return conds

    # ---- the logit transform -----------------------------------------------------------------
    def _logit(self, u: torch.Tensor) -> torch.Tensor:
        p = self.alpha + (1.0 - 2.0 * self.alpha) * u
        return torch.log(p) - torch.log1p(-p)

    def _logit_log_det(self, u: torch.Tensor) -> torch.Tensor:
        """log |ds/du| summed per example."""
        p = self.alpha + (1.0 - 2.0 * self.alpha) * u
        return (math.log(1.0 - 2.0 * self.alpha) - torch.log(p) - torch.log1p(-p)).flatten(1).sum(1)

    def _unlogit(self, s: torch.Tensor) -> torch.Tensor:
        return (torch.sigmoid(s) - self.alpha) / (1.0 - 2.0 * self.alpha)

    # ---- density and inversion ---------------------------------------------------------------
    def _check(self, x: torch.Tensor, y: torch.Tensor) -> None:
        check_images("stage 2 'flow'", self.image_shape, x)
        check_images("stage 2 'flow'", self.image_shape, y, "y")

    def forward_flow(self, u: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(w (B, D), log|det dw/du| (B,)) for a dequantised image u in (0, 1)."""
        outs, log_det = self.inn(self._logit(u), c=self._conditions(y, z))
        return torch.cat([o.flatten(1) for o in outs], 1), log_det + self._logit_log_det(u)

    def log_prob_dequantised(self, u: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Exact log-density log p(u | y) of the dequantised image, nats, (B,)."""
        w, log_det = self.forward_flow(u, y, z)
        return -0.5 * (w.pow(2).sum(1) + self.dims * LOG_2PI) + log_det

    def log_likelihood(self, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """One draw of the dequantisation bound on log P(x | y) of the 8-bit image, nats, (B,)."""
        self._check(x, y)
        with float32_math(x):
            u = dequantise(x.float(), torch.rand_like(x, dtype=torch.float32), self.quant_levels)
            return discrete_log_likelihood(self.log_prob_dequantised(u, y, z), self.dims, self.quant_levels)

    def loss(self, x, y, z, beta=None, step=0) -> ObjectiveOutput:
        return likelihood_output(-self.log_likelihood(x, y, z), self.dims)

    def infer(self, x, y, z) -> torch.Tensor:
        self._check(x, y)
        with float32_math(x):
            return self.forward_flow(dequantise(x.float(), None, self.quant_levels), y, z)[0]

    def generate(self, y, z, w) -> torch.Tensor:
        if w.dim() != 2 or w.shape[1] != self.w_dim:
            raise DataError(f"stage 2 'flow': w has shape {tuple(w.shape)}; expected (B, {self.w_dim})")
        with float32_math(y):
            parts, start = [], 0
            for shape in self.w_shapes:
                n = math.prod(shape)
                parts.append(w[:, start:start + n].float().reshape(-1, *shape))
                start += n
            s, _ = self.inn(parts, c=self._conditions(y, z), rev=True, jac=False)
            return to_image(self._unlogit(s[0]), self.quant_levels)

    def sample_w(self, n, y, z, generator=None) -> torch.Tensor:
        return torch.randn(n, self.w_dim, generator=generator, device=y.device) * self.temperature


def _twos(n: int) -> int:
    """How many times n halves to an integer."""
    k = 0
    while n % 2 == 0 and n > 1:
        n //= 2
        k += 1
    return k
