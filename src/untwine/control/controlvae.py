"""ControlVAE (Shao et al. 2020): a positional nonlinear PI controller steering the KL to a set point.

On the per-batch KL (summed over dimensions, mean over the batch), with f(e) = 1/(1+exp(e)):
    e(t) = C(t) - KL(t);  P(t) = Kp f(e(t));  I(t) = I(t-1) - Ki e(t)
    beta(t) = clip(P(t) + I(t) + beta_min, beta_min, beta_max)
Anti-windup (`anti_windup`):
- "conditional" (default): the integral step is held only when the unclipped beta(t-1) lies
  outside [beta_min, beta_max] and the step would push it further out (below beta_min and
  e > 0, or above beta_max and e < 0); a step back toward the range is always taken.
- "official": I is held whenever the unclipped beta(t-1) lies outside the range, as in the
  paper's code. That rule can pin beta at beta_min for good: once I < -Kp, P + I < 0 whatever
  the KL (P <= Kp), beta(t-1) stays below beta_min and I is never updated again (C = 18, one
  step at KL 5, then any number of steps at KL 100: beta stays 1).
Set point: C starts at 0.5 and rises by 0.15 every 5,000 steps (period x time_scale), capped at
c_max (16 or 18 in the paper's dSprites runs; 18 here). Defaults are the paper's dSprites ones
(Kp 0.01, Ki 0.001, beta_min 1); checked against shj1987/ControlVAE-ICML2020 Disentangling/P_PID.py
and solver_light.py (W_k1 starts at 1 = beta_min, no upper clip there: beta_max defaults to inf).
"""
from __future__ import annotations

import math

from untwine.control.base import BetaController, check_number, check_state, inverse_logistic
from untwine.errors import ConfigError

ANTI_WINDUP = ("conditional", "official")


class ControlVAEController(BetaController):
    name = "controlvae"

    def __init__(self, kp: float = 0.01, ki: float = 0.001, beta_min: float = 1.0, beta_max: float = math.inf,
                 c_start: float = 0.5, c_step: float = 0.15, c_period: int = 5000, c_max: float = 18.0,
                 time_scale: float = 1.0, anti_windup: str = "conditional"):
        owner = self.name
        if anti_windup not in ANTI_WINDUP:
            raise ConfigError(f"controlvae: anti_windup={anti_windup!r}; expected one of {ANTI_WINDUP}")
        self.anti_windup = anti_windup
        self.kp = check_number(owner, "kp", kp, minimum=0.0)
        self.ki = check_number(owner, "ki", ki, minimum=0.0)
        self.beta_min = check_number(owner, "beta_min", beta_min, minimum=0.0)
        self.beta_max = check_number(owner, "beta_max", beta_max, minimum=0.0, allow_inf=True)
        if self.beta_max < self.beta_min:
            raise ConfigError(f"controlvae: beta_max={beta_max} < beta_min={beta_min}; expected beta_min <= beta_max")
        self.c_start = check_number(owner, "c_start", c_start, minimum=0.0)
        self.c_step = check_number(owner, "c_step", c_step, minimum=0.0)
        self.c_max = check_number(owner, "c_max", c_max, minimum=0.0)
        self.time_scale = check_number(owner, "time_scale", time_scale, positive=True)
        self.c_period = check_number(owner, "c_period", c_period, positive=True) * self.time_scale
        self._i_term = 0.0
        self._beta_raw = self.beta_min  # unclipped beta(t-1), what the anti-windup looks at
        self._last_step = 0

    def set_point_at(self, step: int) -> float:
        increments = math.floor(max(step, 0) / self.c_period + 1e-9)
        return min(self.c_max, self.c_start + self.c_step * increments)

    def set_point(self) -> float:
        """C at the step last observed by update() (step 0 before the first update)."""
        return self.set_point_at(self._last_step)

    @property
    def beta(self) -> float:
        return min(max(self._beta_raw, self.beta_min), self.beta_max)

    def update(self, kl: float, step: int) -> float:
        kl = check_number(self.name, "kl", float(kl))
        self._last_step = int(step)
        error = self.set_point_at(step) - kl
        p_term = self.kp * inverse_logistic(error)
        i_step = -self.ki * error
        if not self._holds_integral(i_step):
            self._i_term += i_step
        self._beta_raw = p_term + self._i_term + self.beta_min
        return self.beta

    def _holds_integral(self, i_step: float) -> bool:
        below, above = self._beta_raw < self.beta_min, self._beta_raw > self.beta_max
        if self.anti_windup == "official":
            return below or above
        return (below and i_step < 0) or (above and i_step > 0)

    def state_dict(self) -> dict:
        return {"i_term": self._i_term, "beta_raw": self._beta_raw, "last_step": self._last_step}

    def load_state_dict(self, state: dict) -> None:
        check_state(self.name, state, ("i_term", "beta_raw", "last_step"))
        self._i_term = float(state["i_term"])
        self._beta_raw = float(state["beta_raw"])
        self._last_step = int(state["last_step"])
