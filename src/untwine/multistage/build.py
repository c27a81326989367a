"""Build a multi-stage model from a config: check the stage-1 run's config, attach stage 2.

The training task (untwine.train.tasks.multistage) reads the stage-1 run (or, on resume, the copy
of its config and its weights inside the multi-stage run) and hands them here; this module imports
nothing of untwine.train.
"""
from __future__ import annotations

from pathlib import Path

from untwine.errors import CheckpointError, ConfigError

STAGE1_COPY = Path("stage1") / "config.yaml"


def check_stage1(cfg, s1cfg, data=None) -> None:
    """Refuse a stage-1 run that stage 2 cannot build on, naming the run and the mismatch."""
    run = cfg.stage1.run
    if s1cfg.stage2.name != "none" or s1cfg.stage1.run:
        raise ConfigError(f"stage-1 run {run!r} is itself a multi-stage run (stage2.name={s1cfg.stage2.name!r}); "
                          f"give the run of a single-stage VAE (beta-VAE, beta-TCVAE, FactorVAE, DIP-VAE, ...)")
    if cfg.data.name != "stage1" and (cfg.data.name != s1cfg.data.name
                                      or (cfg.data.path or None) != (s1cfg.data.path or None)):
        raise ConfigError(f"stage-1 run {run!r} was trained on data.name={s1cfg.data.name!r} "
                          f"(path {s1cfg.data.path!r}) but this config has data.name={cfg.data.name!r} "
                          f"(path {cfg.data.path!r}); leave data.name=stage1 or name the same dataset")
    shape = None if data is None else tuple(data.image_shape)
    if shape is not None and s1cfg.model.arch == "conv64" and (len(shape) != 3 or shape[1:] != (64, 64)):
        raise ConfigError(f"stage-1 run {run!r} is a conv64 model of 64x64 images; the data has shape "
                          f"{shape}")


def resolve_data_section(cfg, s1cfg) -> None:
    """data.name=stage1: take the dataset of the stage-1 run."""
    if cfg.data.name == "stage1":
        cfg.data.name, cfg.data.path, cfg.data.channels = s1cfg.data.name, s1cfg.data.path, s1cfg.data.channels
        cfg.data.cache_dir = cfg.data.cache_dir or s1cfg.data.cache_dir


def build_multistage(cfg, data, s1cfg, stage1_weights: dict):
    """MultiStageModel(stage 1 of config `s1cfg` with `stage1_weights`, a fresh stage 2). Reading the
    stage-1 run (its config and checkpoint) is the training task's (untwine.train.tasks.multistage)."""
    from untwine.multistage import MultiStageModel, build_stage2
    from untwine.nets import build_vae_from_config

    image_shape = tuple(data.image_shape)
    stage1 = build_vae_from_config(s1cfg.model, image_shape, data_name=s1cfg.data.name)
    try:
        stage1.load_state_dict(stage1_weights)
    except RuntimeError as e:
        raise CheckpointError(f"stage-1 run {cfg.stage1.run!r}: its weights do not fit the model of its config "
                              f"({str(e).splitlines()[0]}); the run is corrupt or its config.yaml was edited") from e
    from untwine.multistage.gmm import resolve_bits
    stage2 = build_stage2(cfg.stage2.name, image_shape=image_shape, latent_dim=s1cfg.model.latent_dim,
                          likelihood=s1cfg.model.likelihood, **resolve_bits(cfg.stage2.params, data))
    return MultiStageModel(stage1, stage2, stage1_sample=cfg.stage1.sample, consistency=cfg.stage1.consistency)
