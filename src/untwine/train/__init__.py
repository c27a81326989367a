"""Training: typed configs and presets, the Fabric training loop, run directories and checkpoints.

    from untwine.train import load_config, train, load_run
    summary = train(load_config("dsprites-dynamicvae", ["trainer.steps=3000"]))
    run = load_run(summary["run_dir"])
"""
from untwine.train.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from untwine.train.config import Config, config_to_dict, list_presets, load_config, save_config
from untwine.train.run import RunHandle, load_run
from untwine.train.session import TrainingInterrupted, train
from untwine.train.state import NonFiniteLossError, RankMismatchError

__all__ = [
    "Checkpoint", "Config", "NonFiniteLossError", "RankMismatchError", "RunHandle", "TrainingInterrupted",
    "config_to_dict", "list_presets", "load_checkpoint", "load_config", "load_run", "save_checkpoint", "save_config",
    "train",
]
