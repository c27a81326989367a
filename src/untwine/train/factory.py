"""The one place that reads a config and builds what a run trains: data, model, objective,
controller, and the task that holds them.

Kinds of training register here (`register_task`): each names when it applies to a config, how it
normalises the config before a run (e.g. a multi-stage run takes its dataset from the stage-1 run)
and how it builds its task. The engine asks `task_kind(cfg)` and never branches on a kind itself.

    register_task("mine", lambda cfg: cfg.objective.name == "mine", "my.module:build_my_task")
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from torch import nn

from untwine.errors import ConfigError


# -- building blocks -------------------------------------------------------------------------------
def build_data(cfg):
    from untwine.data.registry import get_dataset
    options = {"channels": cfg.data.channels} if cfg.data.channels else {}  # an image folder's
    return get_dataset(cfg.data.name, cache_dir=cfg.data.cache_dir, path=cfg.data.path, **options)


def build_vae_model(cfg, image_shape: tuple[int, ...], likelihood: nn.Module | None = None) -> nn.Module:
    """The single-stage VAE of cfg.model for data of `image_shape`; `likelihood` (a module a
    dataset supplies, e.g. a table's mixed likelihood) replaces cfg.model.likelihood."""
    from untwine.nets import build_vae_from_config
    return build_vae_from_config(cfg.model, tuple(image_shape), likelihood, data_name=cfg.data.name)


def build_objective_from(cfg, dataset_size: int) -> nn.Module:
    """The objective of a single-stage config (a multi-stage run's objective belongs to its task)."""
    if cfg.objective.name == "multistage":
        if cfg.stage1.run:
            from untwine.multistage.objective import MultiStageObjective
            return MultiStageObjective()
        raise ConfigError("objective.name=multistage trains the second stage of a multi-stage model: give the "
                          "stage-1 run as stage1=RUN_DIR and a variant as stage2.name (or use an ms-* preset)")
    from untwine.objectives import build_objective
    # the builder names any parameter it does not take (ConfigError)
    return build_objective(cfg.objective.name, dataset_size=dataset_size, latent_dim=cfg.model.latent_dim,
                           **cfg.objective.params)


def build_controller_from(cfg):
    if cfg.controller.name in ("none", "", None):
        if cfg.controller.params:
            raise ConfigError(f"controller parameters {sorted(cfg.controller.params)} given without a controller; "
                              f"set controller.name (constant, linear, cyclic, controlvae, dynamicvae) or remove them")
        return None
    from untwine.control import build_controller
    return build_controller(cfg.controller.name, **cfg.controller.params)


# -- kinds of training -----------------------------------------------------------------------------
def _resolve(target):
    if isinstance(target, str):
        module, _, attr = target.partition(":")
        return getattr(importlib.import_module(module), attr)
    return target


@dataclass
class TaskKind:
    """`build(cfg, data, run_dir, weights)` -> Task, `weights` the run's checkpointed model weights
    (None for a new run); `resolve(cfg, run_dir, resume)` -> the config a run records (a copy)."""
    name: str
    matches: Callable
    build: Callable | str
    resolve: Callable | str | None = None
    resume: Callable | str | None = None   # run_dir -> the command that continues it, where not `untwine train`

    def resume_command(self, run_dir: Path) -> str:
        return _resolve(self.resume)(Path(run_dir)) if self.resume is not None else \
            f"untwine train --resume {run_dir}"

    def build_task(self, cfg, data, run_dir: Path | None = None, weights: dict | None = None):
        return _resolve(self.build)(cfg, data, run_dir, weights)

    def resolve_config(self, cfg, run_dir: Path | None, resume: bool):
        return _resolve(self.resolve)(cfg, run_dir, resume) if self.resolve is not None else cfg


_KINDS: list[TaskKind] = [
    # a table fit's two stages (untwine.tabular hands the engine its data)
    TaskKind("table-stage2", lambda cfg: cfg.data.name == "table" and cfg.objective.name == "table-mixture",
             "untwine.train.tasks.table:build_stage2", "untwine.train.tasks.table:resolve_config",
             "untwine.train.tasks.table:resume_command"),
    TaskKind("table", lambda cfg: cfg.data.name == "table", "untwine.train.tasks.table:build_stage1",
             "untwine.train.tasks.table:resolve_config", "untwine.train.tasks.table:resume_command"),
    TaskKind("multistage", lambda cfg: bool(cfg.stage1.run), "untwine.train.tasks.multistage:build_task",
             "untwine.train.tasks.multistage:resolve_config"),
    TaskKind("vae", lambda cfg: True, "untwine.train.tasks.vae:build_task"),
]


def register_task(name: str, matches: Callable, build: Callable | str, resolve: Callable | str | None = None,
                  resume: Callable | str | None = None) -> None:
    """A kind of training, tried before the built-in ones (a kind of the same name is replaced)."""
    _KINDS[:] = [TaskKind(name, matches, build, resolve, resume)] + [k for k in _KINDS if k.name != name]


def unregister_task(name: str) -> None:
    _KINDS[:] = [k for k in _KINDS if k.name != name]


def task_kind(cfg) -> TaskKind:
    return next(k for k in _KINDS if k.matches(cfg))


def build_task(cfg, data, run_dir: Path | None = None, weights: dict | None = None):
    return task_kind(cfg).build_task(cfg, data, run_dir, weights)


def build_model(cfg, data, run_dir: Path | None = None, weights: dict | None = None) -> nn.Module:
    """The model (what model.safetensors holds) of a config on `data`."""
    return build_task(cfg, data, run_dir, weights).model
