"""What a kind of training gives the loop: a task.

A task holds what Fabric wraps (`module`: DDP and autocast see the whole loss), the weights a run
saves (`model`), named parameter groups, each with its own optimiser (any number; they must be
disjoint, since the loop backpropagates the sum of the losses once), `step(module, batch, step)`
returning named losses and the terms to log, `after_step` (a beta controller's update), and its own
evaluation and pictures. Everything else (seeding, checkpoints, exact resume, logs, the NaN guard,
DDP) is the engine's, once for all tasks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn


@dataclass
class ParamGroup:
    """Parameters with their own Adam; `lr_key` names the config key of its learning rate."""
    params: list[nn.Parameter]
    lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    lr_key: str = "optim.lr"

    def hyper_parameters(self) -> dict[str, Any]:
        return {"lr": float(self.lr), "betas": tuple(float(b) for b in self.betas)}

    def make_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.params, lr=self.lr, betas=tuple(self.betas))


@dataclass
class StepOutput:
    """`losses`: summed for the one backward; `terms`: scalars to log (the losses among them)."""
    losses: dict[str, torch.Tensor]
    terms: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class RunContext:
    """What a task's evaluation and pictures need of the run."""
    cfg: Any
    data: Any
    run_dir: Path
    device: torch.device


class Task:
    module: nn.Module      # what Fabric wraps (DDP, autocast)
    model: nn.Module       # the weights of model.safetensors (what load_run rebuilds)
    observe_every_step = False   # True: the loop reads the terms every step (a controller needs them)

    def parameter_groups(self) -> dict[str, ParamGroup]:
        raise NotImplementedError

    def compiled_networks(self) -> list:
        """What runs each step, for trainer.compile to compile in place: modules (their forward) or
        (object, method name) pairs."""
        return []

    def build_sampler(self, cfg, data, seed: int, device):
        raise NotImplementedError

    def prepare_batch(self, batch, channels_last: bool):
        return batch

    def step(self, module: nn.Module, batch, step: int) -> StepOutput:
        raise NotImplementedError

    def after_step(self, scalars: dict[str, float], step: int) -> None:
        """After the step's terms were read (ranks averaged): e.g. a controller's update."""

    def log_extras(self) -> dict[str, float | None]:
        """Columns logged beside the terms (the KL weight used, a controller's set point)."""
        return {}

    # -- state beyond the module's weights and the optimisers -------------------------------------
    def extra_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors saved beside the model (aux.safetensors), e.g. an objective's discriminator."""
        return {}

    def load_extra_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        if tensors:
            raise RuntimeError(f"unexpected extra tensors {sorted(tensors)[:3]}")

    def state_dict(self) -> dict | None:
        """JSON state (a controller's)."""
        return None

    def load_state_dict(self, state: dict | None) -> None:
        pass

    def write_run_files(self, run_dir: Path) -> None:
        """Files a new run keeps beside its config (a multi-stage run: its stage-1 config)."""

    # -- evaluation and pictures ------------------------------------------------------------------
    def measure(self, ctx: RunContext, final: bool) -> dict | None:
        """Scores of the model now (None: nothing to measure)."""
        return None

    def evaluate(self, ctx: RunContext, step: int, final: bool) -> dict | None:
        """`measure`, recorded: RUN/metrics.json at the end, a line of RUN/metrics.jsonl before."""
        from untwine.train import logging as runlog
        result = self.measure(ctx, final)
        if result is None:
            return None
        record = {"step": step, **result}
        if final:
            runlog.write_json(ctx.run_dir / "metrics.json", record)
        else:
            runlog.append_jsonl(ctx.run_dir / runlog.METRICS_JSONL, record)
        return result

    def image_pictures(self, ctx: RunContext, x: torch.Tensor, out_dir: Path) -> list[Path]:
        return []

    def curve_pictures(self, csv_path: Path, out_dir: Path) -> list[Path]:
        return []

    def evaluation_batch(self, ctx: RunContext, n: int = 16) -> torch.Tensor:
        """The pictures' images: from the dataset's evaluation split (never trained on) where it has one."""
        from untwine.data.split import held_out_pool
        pool = held_out_pool(ctx.data)
        rng = np.random.default_rng(ctx.cfg.trainer.seed)
        idx = pool[rng.choice(len(pool), size=min(n, len(pool)), replace=False)]
        return ctx.data.batch(np.sort(idx), device=ctx.device)

    def pictures(self, ctx: RunContext, csv_path: Path) -> list[Path]:
        out_dir = ctx.run_dir / "pictures"
        out_dir.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []
        with self.evaluating(ctx.device):
            if len(getattr(ctx.data, "image_shape", ())) == 3:
                written += self.image_pictures(ctx, self.evaluation_batch(ctx), out_dir)
            if csv_path.is_file():
                written += self.curve_pictures(csv_path, out_dir)
        return written

    def evaluating(self, device: torch.device):
        """Context: the model in eval mode under a forked RNG (evaluation never moves the training stream)."""
        return _Evaluating(self.model, device)


class _Evaluating:
    def __init__(self, model: nn.Module, device: torch.device):
        self.model, self.device = model, device

    def __enter__(self):
        self.was_training = self.model.training
        self.fork = torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else [])
        self.fork.__enter__()
        self.model.eval()
        return self

    def __exit__(self, *exc):
        self.model.train(self.was_training)
        return self.fork.__exit__(*exc)
