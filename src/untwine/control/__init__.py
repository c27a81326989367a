"""Beta schedules and controllers, built by name.

    controller = build_controller("dynamicvae", time_scale=0.01)
    beta = controller.beta                       # weight for this step
    controller.update(kl=float(terms["kl"]), step=step)

Names: "constant" (beta), "linear" (start, end, steps), "cyclic" (cycles, ratio, max, steps),
"controlvae" (kp, ki, beta_min, beta_max, c_start, c_step, c_period, c_max, anti_windup), "dynamicvae" (beta0,
kp, ki, beta_min, window, c_start, c_step, c_period, c_ramp, c_max). All take time_scale.
"""
from __future__ import annotations

from untwine.registry import lookup

from untwine.control.base import BetaController
from untwine.control.controlvae import ControlVAEController
from untwine.control.dynamicvae import DynamicVAEController
from untwine.control.schedules import ConstantBeta, CyclicBeta, LinearBeta

CONTROLLERS: dict[str, type[BetaController]] = {
    cls.name: cls for cls in (ConstantBeta, LinearBeta, CyclicBeta, ControlVAEController, DynamicVAEController)
}

__all__ = [
    "CONTROLLERS", "BetaController", "build_controller", "ConstantBeta", "LinearBeta", "CyclicBeta",
    "ControlVAEController", "DynamicVAEController",
]


def build_controller(name: str, **params) -> BetaController:
    cls, _ = lookup("beta controller", CONTROLLERS, name, params)
    return cls(**params)
