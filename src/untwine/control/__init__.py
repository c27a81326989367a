"""Beta schedules and controllers, built by name.

    controller = build_controller("dynamicvae", time_scale=0.01)
    beta = controller.beta                       # weight for this step
    controller.update(kl=float(terms["kl"]), step=step)

Names: "constant" (beta), "linear" (start, end, steps), "cyclic" (cycles, ratio, max, steps),
"controlvae" (kp, ki, beta_min, beta_max, c_start, c_step, c_period, c_max), "dynamicvae" (beta0,
kp, ki, beta_min, window, c_start, c_step, c_period, c_ramp, c_max). All take time_scale.
"""
from __future__ import annotations

import inspect

from untwine.control.base import BetaController
from untwine.control.controlvae import ControlVAEController
from untwine.control.dynamicvae import DynamicVAEController
from untwine.control.schedules import ConstantBeta, CyclicBeta, LinearBeta
from untwine.errors import ConfigError

CONTROLLERS: dict[str, type[BetaController]] = {
    cls.name: cls for cls in (ConstantBeta, LinearBeta, CyclicBeta, ControlVAEController, DynamicVAEController)
}

__all__ = [
    "CONTROLLERS", "BetaController", "build_controller", "ConstantBeta", "LinearBeta", "CyclicBeta",
    "ControlVAEController", "DynamicVAEController",
]


def build_controller(name: str, **params) -> BetaController:
    if name not in CONTROLLERS:
        raise ConfigError(f"unknown beta controller {name!r}; expected one of {sorted(CONTROLLERS)}")
    cls = CONTROLLERS[name]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise ConfigError(f"beta controller {name!r} got unknown parameter(s) {unknown}; it accepts {sorted(accepted)}")
    return cls(**params)
