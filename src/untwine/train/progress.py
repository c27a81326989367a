"""The training loop's progress bar and step clock: they live in untwine.progress (no torch, no
training loop), so that lower floors (tabular, metrics, multistage) can show progress too."""
from untwine.progress import Clock, Phases, Progress

__all__ = ["Clock", "Phases", "Progress"]
