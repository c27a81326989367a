"""Tasks: one per kind of training (a single-stage VAE, a multi-stage run); see tasks.base."""
from untwine.train.tasks.base import ParamGroup, RunContext, StepOutput, Task

__all__ = ["ParamGroup", "RunContext", "StepOutput", "Task"]
