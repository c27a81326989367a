"""The decoder likelihood of a transformed table row (TVAE's): Gaussian on alpha, cross-entropy on one-hots.

    lik = MixedLikelihood(transformer.spans, variance="learned", sigma=0.1)
    nll = lik.nll(x_params, x)         # (B,) nats, summed over the row's spans
    probs = lik.mean(x_params)         # tanh(alpha), softmax probabilities
    rows = lik.sample(x_params, g)     # alpha + sigma noise, one-hot category draws

Per "continuous" span (alpha in [-1, 1]): N(alpha; tanh(param), sigma^2), as TVAE (its decoder
output goes through tanh and each alpha has its own sigma, learned from 0.1 and kept in
[0.01, 1]; variance="fixed" keeps sigma). The term counts only where its mode span is observed
(the target's mode one-hot sums to 1; on a missing value it is all zero), so a missing value costs
nothing but its missing indicator. Per "softmax" span: -sum_j target_j log softmax(param)_j, which
is the cross-entropy for a one-hot target and 0 for an all-zero (missing) block.
All constants are included: the value is a true negative log-likelihood (alpha as a density).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from untwine.errors import ConfigError
from untwine.tabular.transformer import Span

_LOG_2PI = math.log(2.0 * math.pi)
SIGMA_RANGE = (0.01, 1.0)   # TVAE clamps its sigmas to this range


class MixedLikelihood(nn.Module):
    def __init__(self, spans: Sequence[Span], variance: str = "learned", sigma: float = 0.1):
        super().__init__()
        if variance not in ("fixed", "learned"):
            raise ConfigError(f"mixed likelihood variance={variance!r}; expected 'fixed' or 'learned'")
        if not SIGMA_RANGE[0] <= sigma <= SIGMA_RANGE[1]:
            raise ConfigError(f"mixed likelihood sigma={sigma}; expected a value in {list(SIGMA_RANGE)}")
        if not spans:
            raise ConfigError("mixed likelihood needs at least one span (a table with no modelled column)")
        self.spans = [s if isinstance(s, Span) else Span(**s) for s in spans]
        self.dim = self.spans[-1].stop
        cont = [s for s in self.spans if s.kind == "continuous"]
        soft = [s for s in self.spans if s.kind == "softmax"]
        bad = [s.name for s in self.spans if s.kind not in ("continuous", "softmax")]
        if bad:
            raise ConfigError(f"spans {bad} have an unknown kind; expected 'continuous' or 'softmax'")
        self.variance = variance
        self.register_buffer("alpha_index", torch.tensor([s.start for s in cont], dtype=torch.long))
        # the gate of every alpha (its mode span): a (n_alpha, dim) 0/1 matrix; no gate -> always observed
        gates = torch.zeros(len(cont), self.dim)
        always = torch.zeros(len(cont))
        for i, s in enumerate(cont):
            if s.gate_width > 0:
                gates[i, s.gate_start:s.gate_start + s.gate_width] = 1.0
            else:
                always[i] = 1.0
        self.register_buffer("gates", gates)
        self.register_buffer("always", always)
        self.softmax_spans = [(s.start, s.width) for s in soft]
        # Every column's softmax span (len(soft) for the alpha columns): the log-normalisers of all
        # spans come from segment sums over the whole row at once, not a Python loop of small ops
        # per span (on KDD's 49 spans: 3.4x faster for the likelihood, forward and backward).
        segment = torch.full((self.dim,), len(soft), dtype=torch.long)
        for i, s in enumerate(soft):
            segment[s.start:s.stop] = i
        self.register_buffer("segment", segment, persistent=False)
        self.register_buffer("in_softmax", segment < len(soft), persistent=False)
        log_sigma = torch.full((len(cont),), math.log(sigma))
        if variance == "learned":
            self.log_sigma = nn.Parameter(log_sigma)
        else:
            self.register_buffer("log_sigma", log_sigma)

    # ---- pieces -------------------------------------------------------------------------------
    def _check(self, x_params: torch.Tensor, x: torch.Tensor | None = None) -> None:
        if x_params.dim() != 2 or x_params.shape[1] != self.dim or (x is not None and x.shape != x_params.shape):
            got = tuple(x_params.shape), None if x is None else tuple(x.shape)
            raise ConfigError(f"mixed likelihood got decoder output / data of shapes {got}; expected (B, {self.dim}) "
                              f"both: the decoder's in_dim must be the transformer's output_dim")

    def sigma(self) -> torch.Tensor:
        """sigma of every alpha span, clamped to [0.01, 1] (TVAE's range)."""
        return self.log_sigma.float().clamp(*(math.log(v) for v in SIGMA_RANGE)).exp()

    def observed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, n_alpha): 1 where the alpha's mode span holds a one-hot (the value is present)."""
        return (x @ self.gates.T + self.always).clamp(max=1.0)

    # ---- the likelihood protocol --------------------------------------------------------------
    def nll(self, x_params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        self._check(x_params, x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            params, target = x_params.float(), x.float()
            total = torch.zeros(len(x), device=x.device)
            if len(self.alpha_index):
                mean = torch.tanh(params[:, self.alpha_index])
                log_sigma = self.sigma().log()
                per = 0.5 * ((target[:, self.alpha_index] - mean) * torch.exp(-log_sigma)) ** 2 + log_sigma \
                    + 0.5 * _LOG_2PI
                total = total + (per * self.observed(target)).sum(1)
            if self.softmax_spans:
                # the cross-entropy of each one-hot span; an all-zero (missing) block costs 0
                total = total - (target * self._log_softmax(params) * self.in_softmax).sum(1)
            return total

    def _log_softmax(self, params: torch.Tensor) -> torch.Tensor:
        """(B, dim): every column's log softmax within its span, from segment sums over the whole
        row; the alpha columns hold junk the callers mask out."""
        n, segments = len(params), len(self.softmax_spans) + 1
        index = self.segment.expand(n, -1)
        with torch.no_grad():  # a per-span shift for stability only: the result does not depend on it
            shift = params.new_full((n, segments), -torch.inf).scatter_reduce(1, index, params, "amax")
        shifted = params - shift.gather(1, index)   # subtract before the log: large logits do not cancel
        sums = params.new_zeros(n, segments).index_add(1, self.segment, shifted.exp())
        return shifted - sums.log().gather(1, index)

    def mean(self, x_params: torch.Tensor) -> torch.Tensor:
        """The decoded row: tanh(alpha) and softmax probabilities per span."""
        self._check(x_params)
        params = x_params.float()
        out = params.clone()
        if len(self.alpha_index):
            out[:, self.alpha_index] = torch.tanh(params[:, self.alpha_index])
        if self.softmax_spans:
            out = torch.where(self.in_softmax, self._log_softmax(params).exp(), out)
        return out

    @torch.no_grad()
    def sample(self, x_params: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A row drawn from p(x | params): alpha ~ N(tanh(param), sigma^2) clipped to [-1, 1], one
        category per softmax span."""
        self._check(x_params)
        params = x_params.float()
        out = torch.zeros_like(params)
        if len(self.alpha_index):
            noise = torch.randn(len(params), len(self.alpha_index), generator=generator, device=params.device)
            alpha = torch.tanh(params[:, self.alpha_index]) + noise * self.sigma()
            out[:, self.alpha_index] = alpha.clamp(-1.0, 1.0)
        rows = torch.arange(len(params), device=params.device)
        for start, width in self.softmax_spans:
            probs = torch.softmax(params[:, start:start + width], dim=1)
            pick = torch.multinomial(probs, 1, generator=generator).squeeze(1)
            out[rows, start + pick] = 1.0
        return out
