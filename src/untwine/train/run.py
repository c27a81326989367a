"""Open a finished (or interrupted) run for evaluation and pictures.

    run = load_run("runs/dsprites-dynamicvae-...")
    codes = run.model.representation(run.data.batch(idx))
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from untwine.errors import CheckpointError
from untwine.train.checkpoint import load_model_weights
from untwine.train.config import Config


@dataclass
class RunHandle:
    model: nn.Module   # the VAE (or MultiStageModel) with the checkpoint's weights, in eval mode, on the CPU
    data: object       # the GroundTruthData it was trained on
    config: Config
    step: int
    run_dir: Path


def load_run(run_dir: str | os.PathLike, data=None) -> RunHandle:
    """The model of a run's last checkpoint, its dataset (or `data`) and its resolved config."""
    from untwine.train.factory import build_data, build_model
    from untwine.train.resume import run_config

    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    cfg = run_config(run_dir)  # config.yaml and the changes of the run's resumes
    weights, step = load_model_weights(run_dir)
    data = data if data is not None else build_data(cfg)
    # a multi-stage run carries stage 1's weights and config itself (RUN/stage1/config.yaml)
    model = build_model(cfg, data, run_dir, weights)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise CheckpointError(f"the weights in {run_dir / 'checkpoints'} do not fit the model of {config_path} "
                              f"({e}); was config.yaml edited after training?") from e
    model.eval()
    return RunHandle(model=model, data=data, config=cfg, step=step, run_dir=run_dir)
