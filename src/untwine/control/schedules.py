"""Open-loop beta schedules: constant, linear, cyclic (Fu et al. 2019). They ignore the KL.

Every schedule takes `time_scale`, multiplying each of its step periods (a run of S*time_scale
steps follows the same shape as one of S steps). `beta` is the weight for the next step; after
`update(kl, step)` that is the value at step + 1.
"""
from __future__ import annotations

import math

from untwine.control.base import BetaController, check_number, check_state
from untwine.errors import ConfigError


class StepSchedule(BetaController):
    """Base of the schedules: beta is a function of the step only."""

    name = "schedule"

    def __init__(self, time_scale: float = 1.0):
        self.time_scale = check_number(self.name, "time_scale", time_scale, positive=True)
        self._next_step = 0

    def value(self, step: int) -> float:
        raise NotImplementedError

    @property
    def beta(self) -> float:
        return self.value(self._next_step)

    def update(self, kl: float, step: int) -> float:
        self._next_step = int(step) + 1
        return self.beta

    def state_dict(self) -> dict:
        return {"next_step": self._next_step}

    def load_state_dict(self, state: dict) -> None:
        check_state(self.name, state, ("next_step",))
        self._next_step = int(state["next_step"])


class ConstantBeta(StepSchedule):
    name = "constant"

    def __init__(self, beta: float = 1.0, time_scale: float = 1.0):
        super().__init__(time_scale)
        self.constant = check_number(self.name, "beta", beta, minimum=0.0)

    def value(self, step: int) -> float:
        return self.constant


class LinearBeta(StepSchedule):
    """beta rises (or falls) linearly from `start` to `end` over `steps * time_scale` steps, then holds."""

    name = "linear"

    def __init__(self, start: float = 0.0, end: float = 1.0, steps: int = 10_000, time_scale: float = 1.0):
        super().__init__(time_scale)
        self.start = check_number(self.name, "start", start, minimum=0.0)
        self.end = check_number(self.name, "end", end, minimum=0.0)
        self.steps = check_number(self.name, "steps", steps, positive=True) * self.time_scale

    def value(self, step: int) -> float:
        return self.start + (self.end - self.start) * min(1.0, max(step, 0) / self.steps)


class CyclicBeta(StepSchedule):
    """Cyclical annealing (Fu et al. 2019): `steps * time_scale` steps split into `cycles` equal
    cycles; within each, beta rises linearly from 0 to `max` over the first `ratio` of the cycle and
    holds `max` for the rest. Past the last cycle the pattern repeats."""

    name = "cyclic"

    def __init__(self, cycles: int = 4, ratio: float = 0.5, max: float = 1.0, steps: int = 100_000,
                 time_scale: float = 1.0):
        super().__init__(time_scale)
        if isinstance(cycles, bool) or not isinstance(cycles, int) or cycles < 1:
            raise ConfigError(f"cyclic: cycles={cycles!r}; expected a positive integer")
        self.cycles = cycles
        self.ratio = check_number(self.name, "ratio", ratio, positive=True)
        if self.ratio > 1:
            raise ConfigError(f"cyclic: ratio={ratio!r}; expected a fraction of the cycle in (0, 1]")
        self.max_beta = check_number(self.name, "max", max, minimum=0.0)
        self.period = check_number(self.name, "steps", steps, positive=True) * self.time_scale / cycles

    def value(self, step: int) -> float:
        phase = math.fmod(max(step, 0), self.period) / self.period
        return self.max_beta * min(1.0, phase / self.ratio)
