"""DynamicVAE (Shao et al. 2022): an incremental PI controller on a moving average of the KL,
with hybrid (step plus ramp) annealing of the set point. It lets beta start high (disentangle
first) and fall below 1 (reconstruct later).

With f(e) = 1/(1+exp(e)) and KLbar(t) the mean of the last `window` (T = 5) per-batch KL values:
    e(t) = C(t) - KLbar(t)
    beta(t) = beta(t-1) + Kp [f(e(t)) - f(e(t-1))] - Ki e(t)
the integral step skipped while beta(t-1) < beta_min; the beta returned is max(beta(t), beta_min)
(no upper clamp), while the unclamped beta(t) is carried to the next step, as in the paper's code.
One correction to that rule: below beta_min the integral step is skipped only when it would push
beta further down (e > 0). Skipping it in both directions, as the rule reads literally, freezes a
beta that has overshot below beta_min (large Ki, short runs) at beta_min for good, however far the
KL then rises above the set point; conditional integration is the anti-windup the rule intends.
Set point: C(t) = c_start until c_period; then every c_period steps it ramps up by c_step over
c_ramp steps and holds, capped at c_max: C(6000) = 0.5, C(6500) = 0.575, C(7000) = 0.65.
Every period is multiplied by time_scale (0.01 gives C(60) = 0.5, C(65) = 0.575, C(70) = 0.65);
the averaging window counts batches and is not scaled.
Defaults (dSprites): beta0 50, Kp 0.01, Ki 0.005, beta_min 0.1, T 5, C from 0.5 in steps of 0.15
every 6,000 steps ramped over 1,000, C_max 20; checked against shj1987/DynamicVAE-CVPR2022
2D-sprites/I_PID.py, solver_dynamic.py and run_dynamic.sh (Ki passed there as -0.005, added).
Two deliberate differences from that code: KLbar averages the values seen so far during the
first T-1 steps (the code pads its queue with zeros, which reads as a KL far below the set
point), and C(t) is the closed form above (the code's running sum starts the ramp one step
earlier).
"""
from __future__ import annotations

import math

from untwine.control.base import BetaController, check_number, check_state, inverse_logistic
from untwine.errors import ConfigError


class DynamicVAEController(BetaController):
    name = "dynamicvae"

    def __init__(self, beta0: float = 50.0, kp: float = 0.01, ki: float = 0.005, beta_min: float = 0.1,
                 window: int = 5, c_start: float = 0.5, c_step: float = 0.15, c_period: int = 6000,
                 c_ramp: int = 1000, c_max: float = 20.0, time_scale: float = 1.0):
        owner = self.name
        self.beta0 = check_number(owner, "beta0", beta0, minimum=0.0)
        self.kp = check_number(owner, "kp", kp, minimum=0.0)
        self.ki = check_number(owner, "ki", ki, minimum=0.0)
        self.beta_min = check_number(owner, "beta_min", beta_min, minimum=0.0)
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ConfigError(f"dynamicvae: window={window!r}; expected a positive integer number of batches")
        self.window = window
        self.c_start = check_number(owner, "c_start", c_start, minimum=0.0)
        self.c_step = check_number(owner, "c_step", c_step, minimum=0.0)
        self.c_max = check_number(owner, "c_max", c_max, minimum=0.0)
        self.time_scale = check_number(owner, "time_scale", time_scale, positive=True)
        self.c_period = check_number(owner, "c_period", c_period, positive=True) * self.time_scale
        self.c_ramp = check_number(owner, "c_ramp", c_ramp, minimum=0.0) * self.time_scale
        if self.c_ramp > self.c_period:
            raise ConfigError(f"dynamicvae: c_ramp={c_ramp} is longer than c_period={c_period}; expected c_ramp <= c_period")
        self._beta_raw = self.beta0
        self._prev_error = 0.0  # e(-1) = 0, as in the paper's code
        self._recent_kl: list[float] = []
        self._last_step = 0

    def set_point_at(self, step: int) -> float:
        position = max(step, 0) / self.c_period
        cycles = math.floor(position + 1e-9)
        if cycles == 0:
            return min(self.c_max, self.c_start)
        into_cycle = (position - cycles) * self.c_period
        ramp = 1.0 if self.c_ramp == 0 else min(1.0, max(0.0, into_cycle / self.c_ramp))
        return min(self.c_max, self.c_start + self.c_step * (cycles - 1 + ramp))

    def set_point(self) -> float:
        """C at the step last observed by update() (step 0 before the first update)."""
        return self.set_point_at(self._last_step)

    @property
    def beta(self) -> float:
        return max(self._beta_raw, self.beta_min)

    def update(self, kl: float, step: int) -> float:
        kl = check_number(self.name, "kl", float(kl))
        self._last_step = int(step)
        self._recent_kl = (self._recent_kl + [kl])[-self.window:]
        kl_bar = sum(self._recent_kl) / len(self._recent_kl)
        error = self.set_point_at(step) - kl_bar
        delta = self.kp * (inverse_logistic(error) - inverse_logistic(self._prev_error))
        if self._beta_raw >= self.beta_min or error < 0:  # anti-windup: never integrate further down
            delta -= self.ki * error
        self._beta_raw += delta
        self._prev_error = error
        return self.beta

    def state_dict(self) -> dict:
        return {"beta_raw": self._beta_raw, "prev_error": self._prev_error, "recent_kl": list(self._recent_kl),
                "last_step": self._last_step}

    def load_state_dict(self, state: dict) -> None:
        check_state(self.name, state, ("beta_raw", "prev_error", "recent_kl", "last_step"))
        self._beta_raw = float(state["beta_raw"])
        self._prev_error = float(state["prev_error"])
        self._recent_kl = [float(v) for v in state["recent_kl"]][-self.window:]
        self._last_step = int(state["last_step"])
