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
