"""The tasks of a table fit (`untwine tabular fit`), registered in untwine.train.factory for configs
with data.name = "table", whose data the fit hands to `train(..., data=...)`:

- stage 1 (`TableStage1Task`): the VAE task on transformed rows (the data supply the mixed
  likelihood), scoring the validation rows the data carry (the fit's early stopping);
- stage 2 (objective.name = "table-mixture", `TableStage2Task`): the conditional mixture of factor
  analysers on stage 1's residual r = x - y given its code z, Adam on the exact negative
  log-likelihood per feature (untwine.tabular.model.MixtureNLL); the data are rows [r | z].

Both train, checkpoint and resume exactly like every other run: the engine knows no table.
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from untwine.train.tasks.base import ParamGroup, RunContext, StepOutput, Task
from untwine.train.tasks.vae import VAETask

STAGE2_OBJECTIVE = "table-mixture"


def is_table(cfg) -> bool:
    return cfg.data.name == "table"


def is_table_stage2(cfg) -> bool:
    return cfg.data.name == "table" and cfg.objective.name == STAGE2_OBJECTIVE


def resolve_config(cfg, run_dir: Path | None, resume: bool):
    """A table run resumed at its last step came from `untwine tabular fit`, whose driver never does
    that: say how to continue the fit instead of the engine's "pass trainer.steps=N" (a table's run
    cannot be trained by `untwine train`, which has no rows for it)."""
    if resume and run_dir is not None:
        from untwine.errors import DataError
        from untwine.train.checkpoint import load_checkpoint
        step = load_checkpoint(run_dir).step
        if step >= cfg.trainer.steps:
            raise DataError(f"{run_dir} is a stage of a table fit (`untwine tabular fit`), at its step {step}; "
                            f"continue an interrupted fit with `untwine tabular fit DATA.csv --out MODEL_DIR "
                            f"--resume` (the fit's data and options), not `untwine train --resume`")
    return cfg


def _validation(task, ctx: RunContext, loss_name: str, model) -> dict | None:
    """A table stage's measure: its loss on the fit's validation rows (early stopping reads it)."""
    validation = getattr(ctx.data, "validation", None)
    if validation is None:
        return None
    from untwine.tabular import model as tabular
    with task.evaluating(ctx.device):
        return {"validation": {"loss": getattr(tabular, loss_name)(model, validation.to(ctx.device))}}


class TableStage1Task(VAETask):
    def measure(self, ctx: RunContext, final: bool) -> dict | None:
        return _validation(self, ctx, "stage1_validation_loss", self.model)


def build_stage1(cfg, data, run_dir: Path | None = None, weights: dict | None = None) -> TableStage1Task:
    from untwine.train.factory import build_controller_from, build_objective_from, build_vae_model
    model = build_vae_model(cfg, tuple(data.image_shape), getattr(data, "likelihood", None))
    return TableStage1Task(cfg, model, build_objective_from(cfg, len(data)), build_controller_from(cfg))


class TableStage2Task(Task):
    def __init__(self, cfg, module):
        self.cfg, self.module, self.model = cfg, module, module.mixture

    def parameter_groups(self) -> dict[str, ParamGroup]:
        o = self.cfg.optim
        return {"main": ParamGroup(list(self.model.parameters()), o.lr, tuple(o.betas), "optim.lr")}

    def build_sampler(self, cfg, data, seed: int, device):
        from untwine.train.batches import IndexSampler
        return IndexSampler(data, cfg.optim.batch_size, seed=seed, device=device)

    def step(self, module: nn.Module, batch, step: int) -> StepOutput:
        loss = module(batch)
        return StepOutput({"loss": loss}, {"loss": loss, "nll_per_dim": loss})

    def measure(self, ctx: RunContext, final: bool) -> dict | None:
        return _validation(self, ctx, "stage2_validation_loss", self.module)

    def curve_pictures(self, csv_path: Path, out_dir: Path) -> list[Path]:
        from untwine import viz
        viz.plot_training_curves(csv_path, out_dir / "curves.png")
        return [out_dir / "curves.png"]


def build_stage2(cfg, data, run_dir: Path | None = None, weights: dict | None = None) -> TableStage2Task:
    """The mixture of cfg.objective's components/rank on rows [r | z] (z: cfg.model.latent_dim wide),
    its noise and means started at the residuals' scale (a resumed run's weights replace them)."""
    from untwine.tabular.model import MixtureNLL, build_stage2_mixture
    context_dim = cfg.model.latent_dim
    rows = data.rows
    mixture = build_stage2_mixture(rows.shape[1] - context_dim, context_dim, **cfg.objective.params)
    module = MixtureNLL(mixture, context_dim)
    if weights is None:
        from untwine.tabular.model import start_at_residual_scale
        start_at_residual_scale(mixture, module.split(rows)[0])
    return TableStage2Task(cfg, module)


def resume_command(run_dir: Path) -> str:
    """A table's stage runs are continued by the fit that drives them (its data and options), in
    the model directory that holds them."""
    return f"untwine tabular fit DATA.csv --out {Path(run_dir).parent} --resume (with the fit's own data and options)"
