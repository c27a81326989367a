"""The beta-controller protocol: read beta before a step, report the step's KL after it.

    beta = controller.beta            # weight for this step's KL
    ... loss, terms = objective(model, x, beta=beta, step=step) ...
    controller.update(kl=float(terms["kl"]), step=step)   # computes the next beta

State is plain numbers and lists (JSON), so that checkpoints never need pickle.
"""
from __future__ import annotations

from abc import ABC, abstractmethod


class BetaController(ABC):
    @property
    @abstractmethod
    def beta(self) -> float:
        """The KL weight to use for the next step."""

    def set_point(self) -> float | None:
        """The KL set point (controllers) or None (schedules)."""
        return None

    @abstractmethod
    def update(self, kl: float, step: int) -> float:
        """Observe the KL of step `step`; return the beta for step + 1."""

    @abstractmethod
    def state_dict(self) -> dict:
        """JSON-serialisable state."""

    @abstractmethod
    def load_state_dict(self, state: dict) -> None: ...


# ---------------------------------------------------------------------------------------------
# Shared helpers (additive).

import math  # noqa: E402

from untwine.errors import CheckpointError, ConfigError  # noqa: E402


def check_number(owner: str, name: str, value, *, minimum: float | None = None, positive: bool = False,
                 allow_inf: bool = False) -> float:
    """A real number (not bool), finite unless allow_inf, >= minimum / > 0 when asked."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and not math.isnan(value)
    ok = ok and (allow_inf or math.isfinite(value))
    ok = ok and (minimum is None or value >= minimum) and (not positive or value > 0)
    if not ok:
        bound = " > 0" if positive else (f" >= {minimum}" if minimum is not None else "")
        raise ConfigError(f"{owner}: {name}={value!r}; expected a {'' if allow_inf else 'finite '}number{bound}")
    return float(value)


def check_state(owner: str, state: dict, keys: tuple[str, ...]) -> None:
    """A controller state must be a dict with exactly these keys."""
    if not isinstance(state, dict) or set(state) != set(keys):
        found = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"{owner}: controller state has keys {found}, expected {sorted(keys)}; the checkpoint was written "
            "by a different controller or is corrupt: resume with the run's own config"
        )


def inverse_logistic(e: float) -> float:
    """f(e) = 1 / (1 + exp(e)) without overflow for large |e|."""
    if e >= 0:
        q = math.exp(-e)
        return q / (1.0 + q)
    return 1.0 / (1.0 + math.exp(e))
