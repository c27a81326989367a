"""The task of a multi-stage run: it owns the frozen stage 1 (read from the stage-1 run, or from this
run's own checkpoint on resume), trains stage 2 (and a GAN's discriminator, "aux") through the
MultiStageObjective, measures stage 2's reconstruction at every evaluation and stage 1's frozen
scores once, at the end, and draws side-by-side pictures, traversals and samples.

A multi-stage run keeps a copy of its stage-1 config (RUN/stage1/config.yaml) and stage 1's weights
inside its own checkpoints, so that it loads and resumes after the stage-1 run has moved away.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from untwine.errors import CheckpointError, ConfigError
from untwine.train.tasks.base import RunContext
from untwine.train.tasks.vae import VAETask, eval_batch_size, no_metrics

STAGE1_COPY = Path("stage1") / "config.yaml"


def stage1_config(cfg, run_dir: Path | None = None):
    """The stage-1 run's config: the copy inside `run_dir` if there is one, else the stage-1 run's."""
    from untwine.train.config import load_config
    if run_dir is not None and (Path(run_dir) / STAGE1_COPY).is_file():
        return load_config(Path(run_dir) / STAGE1_COPY)
    stage1 = Path(cfg.stage1.run)
    path = stage1 / "config.yaml"
    if not path.is_file():
        raise CheckpointError(f"stage-1 run {str(stage1)!r}: {str(path)!r} is missing; stage1= must name a finished "
                              f"untwine run directory (it holds config.yaml and checkpoints/)")
    try:
        return load_config(path)
    except ConfigError as e:
        raise CheckpointError(f"stage-1 run {str(stage1)!r}: its config.yaml is not a valid untwine config ({e})") from e


def resolve_config(cfg, run_dir: Path | None, resume: bool):
    """A copy of cfg as the run records it: data.name=stage1 resolved to the stage-1 run's dataset,
    stage1.run an absolute path (a new run); the stage-1 run read and checked first."""
    from untwine.multistage.build import check_stage1, resolve_data_section
    if cfg.objective.name != "multistage" or cfg.objective.params:
        raise ConfigError(f"a multi-stage run (stage1={cfg.stage1.run}) trains stage 2 with objective.name="
                          f"multistage and no objective parameters (got {cfg.objective.name!r} "
                          f"{cfg.objective.params or ''}); put stage 2's parameters under stage2.*")
    cfg = copy.deepcopy(cfg)
    s1cfg = stage1_config(cfg, run_dir if resume else None)
    check_stage1(cfg, s1cfg)
    resolve_data_section(cfg, s1cfg)
    if not resume:
        cfg.stage1.run = str(Path(cfg.stage1.run).resolve())
    return cfg


class MultiStageTask(VAETask):
    def __init__(self, cfg, model: nn.Module, objective: nn.Module, controller, stage1_cfg):
        super().__init__(cfg, model, objective, controller)
        self.stage1_cfg = stage1_cfg

    def compiled_networks(self) -> list:
        # what a step runs: stage2_loss (frozen stage 1's code and decoding, then stage 2's loss);
        # compiling model.stage2 compiled nothing, since a stage 2 is called through its methods
        return [(self.model, "stage2_loss")]

    def own_beta(self):
        own = getattr(self.objective, "beta", None)
        return own if own is not None else getattr(self.model.stage2, "beta", None)

    def write_run_files(self, run_dir: Path) -> None:
        from untwine.train.config import save_config
        save_config(self.stage1_cfg, Path(run_dir) / STAGE1_COPY)

    def measure(self, ctx: RunContext, final: bool) -> dict | None:
        from untwine.data.split import dataset_split
        t = ctx.cfg.trainer
        if dataset_split(ctx.data) is None:
            return None
        stages = t.multistage_eval != "none"
        # A frozen stage 1's disentanglement scores cannot move during stage 2: score them once, at the
        # end; what moves, and is measured at every evaluation, is stage 2's reconstruction.
        scores = not no_metrics(t.eval_preset) and final
        if not scores and not stages:
            return None
        with self.evaluating(ctx.device), torch.no_grad():
            # a multi-stage model's encode is stage 1's, so its scores are stage 1's exactly
            shown = final and t.progress
            result = self.scores(ctx, progress=shown) if scores else {}
            if stages:
                if shown:
                    print(f"evaluate: stage 1 against the combined model ({t.multistage_eval}: "
                          "reconstruction and bounds" + (", samples, fidelity, w-invariance"
                                                         if t.multistage_eval == "full" else "") + ")",
                          flush=True)
                result["multistage"] = self._evaluate_stages(ctx, full=final)
        return result

    def _evaluate_stages(self, ctx: RunContext, full: bool) -> dict:
        """Stage 1 against the combined model on the same held-out images; `full` adds samples,
        fidelity and w-invariance where trainer.multistage_eval asks for them (the final evaluation)."""
        from untwine.multistage import evaluation as ev
        t, batch_size = ctx.cfg.trainer, eval_batch_size(ctx)
        if full and t.multistage_eval == "full":
            return ev.evaluate_multistage(self.model, ctx.data, seed=t.seed, batch_size=batch_size)
        recon = ev.evaluate_reconstruction(self.model, ctx.data, seed=t.seed, batch_size=batch_size)
        return {**recon, "summary": ev.reconstruction_ratios(recon)}

    def image_pictures(self, ctx: RunContext, x: torch.Tensor, out_dir: Path) -> list[Path]:
        from untwine.viz import multistage as msviz
        msviz.save_side_by_side(self.model, x, out_dir / "side_by_side.png")
        msviz.save_multistage_traversals(self.model, x[:4], out_dir / "traversals.png", out_dir / "traversals.gif")
        msviz.save_samples(self.model, out_dir / "samples.png", n=16, seed=ctx.cfg.trainer.seed)
        return [out_dir / n for n in ("side_by_side.png", "traversals.png", "traversals.gif", "samples.png")]


def build_task(cfg, data, run_dir: Path | None = None, weights: dict | None = None) -> MultiStageTask:
    """Stage 1 of the run (`weights`: this run's checkpointed weights, stage 1's among them; None: the
    stage-1 run's last checkpoint) with a fresh stage 2."""
    from untwine.multistage.build import build_multistage, check_stage1
    from untwine.multistage.objective import MultiStageObjective
    from untwine.train.checkpoint import load_model_weights
    from untwine.train.factory import build_controller_from
    s1cfg = stage1_config(cfg, run_dir)
    check_stage1(cfg, s1cfg, data)
    if weights is not None:
        stage1_weights = {k[len("stage1."):]: v for k, v in weights.items() if k.startswith("stage1.")}
    else:
        try:
            stage1_weights, _ = load_model_weights(Path(cfg.stage1.run))
        except CheckpointError as e:
            raise CheckpointError(f"stage-1 run {cfg.stage1.run!r}: {e}") from e
    model = build_multistage(cfg, data, s1cfg, stage1_weights)
    return MultiStageTask(cfg, model, MultiStageObjective(), build_controller_from(cfg), s1cfg)
