"""The task of a single-stage VAE: the VAE and its objective as one module (so that DDP and autocast
see the whole loss), Adam over the VAE ("main") and, where the objective has one (FactorVAE's
discriminator), a second Adam over its auxiliary parameters ("aux"); a beta controller after
each step; disentanglement scores and pictures of reconstructions and traversals."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from untwine.errors import ConfigError
from untwine.train.tasks.base import ParamGroup, RunContext, StepOutput, Task


class TrainStep(nn.Module):
    """VAE + objective as one module, so that Fabric's wrapper (DDP, autocast) sees the whole loss."""

    def __init__(self, model: nn.Module, objective: nn.Module):
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, batch, beta: float | None, step: int):
        return self.objective(self.model, batch, beta=beta, step=step)


def no_metrics(preset) -> bool:
    return preset in ("none", "", None) or preset == {}


class VAETask(Task):
    def __init__(self, cfg, model: nn.Module, objective: nn.Module, controller=None):
        if controller is not None and not getattr(objective, "has_kl_weight", True):
            raise ConfigError(f"objective {cfg.objective.name!r} has no KL weight for controller "
                              f"{cfg.controller.name!r} to set; use controller.name=none")
        from untwine.train.batches import batch_kind
        self.cfg, self.model, self.objective, self.controller = cfg, model, objective, controller
        self.module = TrainStep(model, objective)
        self.batch_kind = batch_kind(objective)
        self.observe_every_step = controller is not None
        self.last_beta: float | None = None

    # -- training -------------------------------------------------------------------------------
    def parameter_groups(self) -> dict[str, ParamGroup]:
        o = self.cfg.optim
        aux = list(self.objective.auxiliary_parameters())
        if hasattr(self.model, "auxiliary_parameters"):
            aux += list(self.model.auxiliary_parameters())
        aux_ids = {id(p) for p in aux}
        main = [p for p in self.model.parameters() if p.requires_grad and id(p) not in aux_ids]
        groups = {"main": ParamGroup(main, o.lr, tuple(o.betas), "optim.lr")}
        if aux:
            groups["aux"] = ParamGroup(aux, o.aux_lr, tuple(o.aux_betas), "optim.aux_lr")
        return groups

    def compiled_networks(self) -> list[nn.Module]:
        return [self.model.encoder, self.model.decoder]

    def build_sampler(self, cfg, data, seed: int, device):
        from untwine.train.batches import build_sampler
        return build_sampler(cfg, data, self.objective, seed, device)

    def prepare_batch(self, batch, channels_last: bool):
        from untwine.train.batches import to_device_layout
        if self.batch_kind == "single" and not isinstance(batch, torch.Tensor):
            batch = batch.x  # single-image objectives take the images alone
        return to_device_layout(batch, channels_last)

    def step(self, module: nn.Module, batch, step: int) -> StepOutput:
        beta = self.controller.beta if self.controller is not None else None
        self.last_beta = beta
        out = module(batch, beta, step)
        losses = {"loss": out.loss}
        terms = {"loss": out.loss, **out.terms}
        if out.aux_loss is not None:
            losses["aux_loss"] = terms["aux_loss"] = out.aux_loss
        return StepOutput(losses, terms)

    def after_step(self, scalars: dict[str, float], step: int) -> None:
        if self.controller is not None:
            self.controller.update(kl=scalars["kl"], step=step)

    def own_beta(self):
        return getattr(self.objective, "beta", None)

    def log_extras(self) -> dict[str, float | None]:
        beta = self.last_beta if self.last_beta is not None else self.own_beta()
        sp = self.controller.set_point() if self.controller is not None else None
        return {"beta": float(beta) if isinstance(beta, (int, float)) else None,
                "set_point": None if sp is None else float(sp)}

    # -- state ----------------------------------------------------------------------------------
    def extra_tensors(self) -> dict[str, torch.Tensor]:
        return dict(self.objective.state_dict())

    def load_extra_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        if tensors or list(self.objective.state_dict()):
            self.objective.load_state_dict(tensors)

    def state_dict(self) -> dict | None:
        return self.controller.state_dict() if self.controller is not None else None

    def load_state_dict(self, state: dict | None) -> None:
        if self.controller is None:
            return
        if state is None:
            from untwine.errors import CheckpointError
            raise CheckpointError("the checkpoint has no controller state but the config has controller "
                                  f"{self.cfg.controller.name!r}; resume with the run's own controller settings")
        self.controller.load_state_dict(state)

    # -- evaluation and pictures ----------------------------------------------------------------
    def scores(self, ctx: RunContext, progress: bool = False) -> dict:
        from untwine.metrics import evaluate
        t = ctx.cfg.trainer
        # the posterior (mean, logvar): the mean is the code; the log-variance serves mig_sampling
        return evaluate(self.model.encode, ctx.data, metrics=t.eval_preset, seed=t.seed,
                        batch_size=eval_batch_size(ctx), device=ctx.device, progress=progress)

    def measure(self, ctx: RunContext, final: bool) -> dict | None:
        from untwine.data.split import dataset_split
        if dataset_split(ctx.data) is None or no_metrics(ctx.cfg.trainer.eval_preset):
            return None  # a table: its own evaluation
        with self.evaluating(ctx.device), torch.no_grad():
            # the final evaluation can take minutes: it shows its phases (a periodic one would
            # break into the training bar, and is short)
            result = self.scores(ctx, progress=final and ctx.cfg.trainer.progress)
            if ctx.data.factor_space is None:  # an image set: what needs no labels includes held-out recon
                from untwine.multistage.evaluation import evaluate_reconstruction
                result["reconstruction"] = evaluate_reconstruction(self.model, ctx.data, seed=ctx.cfg.trainer.seed,
                                                                   batch_size=eval_batch_size(ctx))["stage1"]
            return result

    def image_pictures(self, ctx: RunContext, x: torch.Tensor, out_dir: Path) -> list[Path]:
        from untwine import viz
        viz.save_reconstructions(self.model, x, out_dir / "reconstructions.png")
        viz.save_traversals(self.model, x, out_dir / "traversals.png", out_dir / "traversals.gif")
        return [out_dir / "reconstructions.png", out_dir / "traversals.png", out_dir / "traversals.gif"]

    def curve_pictures(self, csv_path: Path, out_dir: Path) -> list[Path]:
        from untwine import viz
        viz.plot_training_curves(csv_path, out_dir / "curves.png")
        written = [out_dir / "curves.png"]
        if self.controller is not None and self.controller.set_point() is not None:
            viz.plot_beta_kl(csv_path, out_dir / "beta_kl.png")
            written.append(out_dir / "beta_kl.png")
        return written


def eval_batch_size(ctx: RunContext) -> int:
    from untwine.metrics.protocol import default_encode_batch_size
    return ctx.cfg.trainer.eval_batch_size or default_encode_batch_size(ctx.device)


def build_task(cfg, data, run_dir: Path | None = None, weights: dict | None = None) -> VAETask:
    """A VAE task for cfg on data (the data may supply the likelihood: tables)."""
    from untwine.train.factory import build_controller_from, build_objective_from, build_vae_model
    model = build_vae_model(cfg, tuple(data.image_shape), getattr(data, "likelihood", None))
    return VAETask(cfg, model, build_objective_from(cfg, len(data)), build_controller_from(cfg))
