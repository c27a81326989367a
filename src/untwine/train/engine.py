"""The training loop, on Lightning Fabric.

    summary = train(load_config("dsprites-dynamicvae", ["trainer.steps=3000"]))
    summary = train(None, run_dir="runs/x", resume=True)        # continue a run from its checkpoint

Fabric takes accelerator, devices, num_nodes, strategy and precision from the config; several GPUs
or nodes go through Fabric's own launcher (`fabric.launch()`), each rank drawing its own data seed.
The VAE and its objective run as one module under Fabric, so DDP and autocast see the whole loss.

Resuming restores weights, both optimisers, the controller, the sampler position and torch's RNG,
so that on the CPU a resumed run reaches the same weights as an uninterrupted one, bit for bit.
Evaluation and pictures run under a forked RNG, so that they never change the training stream.
"""
from __future__ import annotations

import math
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from torch import nn

from untwine.errors import CheckpointError, ConfigError, UntwineError
from untwine.train import logging as runlog
from untwine.train.checkpoint import (Checkpoint, capture_torch_rng, checkpoint_dir, load_checkpoint,
                                      restore_torch_rng, save_checkpoint)
from untwine.train.config import Config, load_config, save_config

RUN_DIR_ENV = "UNTWINE_RUN_DIR"  # hands the run directory to ranks started by Fabric's launcher
_WARMUP_STEPS = 10               # steps excluded from images/s (allocation, compilation, caches)


class NonFiniteLossError(UntwineError):
    """The loss became NaN or infinite; the run stopped, keeping its last good checkpoint."""


class _TrainStep(nn.Module):
    """VAE + objective as one module, so that Fabric's wrapper (DDP, autocast) sees the whole loss."""

    def __init__(self, model: nn.Module, objective: nn.Module):
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, x: torch.Tensor, beta: float | None, step: int):
        return self.objective(self.model, x, beta=beta, step=step)


# -- building blocks from a config -----------------------------------------------------------------
def build_data(cfg: Config):
    from untwine.data.registry import get_dataset
    return get_dataset(cfg.data.name, cache_dir=cfg.data.cache_dir, path=cfg.data.path)


def build_model(cfg: Config, image_shape: tuple[int, int, int]) -> nn.Module:
    from untwine.nets import build_vae
    m = cfg.model
    if m.arch == "conv64":
        if tuple(image_shape[1:]) != (64, 64):
            raise ConfigError(f"model.arch=conv64 needs 64x64 images; dataset {cfg.data.name!r} has shape "
                              f"{tuple(image_shape)} (C, H, W); use model.arch=mlp")
        return build_vae("conv64", in_channels=image_shape[0], latent_dim=m.latent_dim, likelihood=m.likelihood)
    return build_vae(m.arch, in_dim=tuple(image_shape), latent_dim=m.latent_dim, likelihood=m.likelihood,
                     hidden=m.hidden)


def build_objective_from(cfg: Config, dataset_size: int) -> nn.Module:
    from untwine.objectives import build_objective
    # the builder names any parameter it does not take (ConfigError)
    return build_objective(cfg.objective.name, dataset_size=dataset_size, latent_dim=cfg.model.latent_dim,
                           **cfg.objective.params)


def build_controller_from(cfg: Config):
    if cfg.controller.name in ("none", "", None):
        if cfg.controller.params:
            raise ConfigError(f"controller parameters {sorted(cfg.controller.params)} given without a controller; "
                              f"set controller.name (constant, linear, cyclic, controlvae, dynamicvae) or remove them")
        return None
    from untwine.control import build_controller
    return build_controller(cfg.controller.name, **cfg.controller.params)


def default_run_dir(cfg: Config) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.run.name or cfg.objective.name}-{stamp}"


def cpu_threads(setting: int | str | None) -> int | None:
    """torch threads for trainer.threads: an int as given; "auto": the cores the current load leaves."""
    if setting is None:
        return None
    if setting == "auto":
        cores = os.cpu_count() or 1
        try:
            load = os.getloadavg()[0]
        except (OSError, AttributeError):  # no load average on this platform
            return cores
        return max(1, min(cores, int(cores - load + 0.5)))
    return int(setting)


def data_seed(seed: int, rank: int) -> int:
    """A distinct sampler seed per rank, derived from the run's seed."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def _scalars(terms: Mapping[str, torch.Tensor], fabric=None) -> dict[str, float]:
    """All terms as floats, with one device sync; averaged over ranks under DDP, so that every
    rank's controller sees the same KL and sets the same beta."""
    if not terms:
        return {}
    keys = list(terms)
    values = torch.stack([torch.as_tensor(terms[k]).detach().float().reshape(()) for k in keys])
    if fabric is not None and fabric.world_size > 1:
        values = fabric.all_reduce(values, reduce_op="mean")
    return dict(zip(keys, values.tolist()))


def _no_metrics(preset) -> bool:
    return preset in ("none", "", None) or preset == {}


def _fmt(terms: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in terms.items())


class _Clock:
    """Seconds of training steps only: paused around logging, checkpoints and evaluation."""

    def __init__(self):
        self.seconds, self.mark, self.started = 0.0, None, False

    def start(self) -> None:
        self.started, self.mark = True, time.perf_counter()

    def pause(self) -> None:
        if self.mark is not None:
            self.seconds += time.perf_counter() - self.mark
            self.mark = None

    def resume(self) -> None:
        if self.started:
            self.mark = time.perf_counter()

    def rate(self, items: int) -> float | None:
        total = self.seconds + (time.perf_counter() - self.mark if self.mark is not None else 0.0)
        return items / total if items > 0 and total > 0 else None


# -- progress ----------------------------------------------------------------------------------------
class _Progress:
    """A rich progress bar with the live numbers; silent off rank 0 or when disabled."""

    def __init__(self, enabled: bool, total: int, start: int):
        self.enabled = enabled
        if not enabled:
            return
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)
        self.progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                 TimeRemainingColumn(), TextColumn("{task.fields[live]}"))
        self.task = self.progress.add_task("train", total=total, completed=start, live="")
        self.progress.start()

    def update(self, step: int, live: Mapping[str, float | None] | None = None) -> None:
        if not self.enabled:
            return
        fields = {}
        if live is not None:
            fields["live"] = "  ".join(f"{k} {v:.4g}" for k, v in live.items() if v is not None)
        self.progress.update(self.task, completed=step, **fields)

    def close(self) -> None:
        if self.enabled:
            self.progress.stop()


# -- the loop ------------------------------------------------------------------------------------------
def train(config: "Config | str | Mapping | None" = None, run_dir: str | os.PathLike | None = None,
          resume: bool = False, data=None) -> dict:
    """Train (or, with resume=True, continue) a run; returns a summary dict.

    config: a Config, preset name, YAML path or dict; with resume=True it may be None (the run's own
    config.yaml). run_dir: where the run lives (default config.run.dir, else runs/<name>-<time>).
    data: a GroundTruthData to train on instead of the config's dataset (tests, notebooks).

    The summary holds run_dir, steps, start_step, final terms, final metrics (or None),
    images_per_second (training steps only, after a warm-up), wall_seconds and the pictures written.
    """
    if run_dir is None and "LOCAL_RANK" in os.environ and os.environ.get(RUN_DIR_ENV):
        run_dir = os.environ[RUN_DIR_ENV]  # a rank started by Fabric's launcher: rank 0's directory
    run_dir = Path(run_dir) if run_dir is not None else None
    if resume:
        if run_dir is None:
            raise ConfigError("resume needs the run directory: train(..., run_dir=RUN, resume=True) or "
                              "`untwine train --resume RUN`")
        if config is None:
            config_path = run_dir / "config.yaml"
            if not config_path.is_file():
                raise CheckpointError(f"{str(config_path)!r} is missing: {str(run_dir)!r} is not a run directory "
                                      f"(a run writes config.yaml and checkpoints/ there)")
            config = config_path
        checkpoint_dir(run_dir)  # fail early, before any work, when there is nothing to resume
    elif config is None:
        raise ConfigError("train() needs a config: a Config, a preset name (see `untwine presets`) or a YAML path")
    cfg = config if isinstance(config, Config) else load_config(config)
    if run_dir is None:
        run_dir = Path(cfg.run.dir) if cfg.run.dir else default_run_dir(cfg)
    if not resume and (run_dir / "checkpoints").exists() and any((run_dir / "checkpoints").iterdir()):
        raise ConfigError(f"run directory {str(run_dir)!r} already holds a run; continue it with "
                          f"`untwine train --resume {run_dir}` or choose another --run-dir")
    previous = os.environ.get(RUN_DIR_ENV)
    os.environ[RUN_DIR_ENV] = str(run_dir.resolve())  # inherited by the ranks fabric.launch() starts
    try:
        return _Engine(cfg, run_dir, resume, data).run()
    finally:
        if previous is None:
            os.environ.pop(RUN_DIR_ENV, None)
        else:
            os.environ[RUN_DIR_ENV] = previous


class _Engine:
    def __init__(self, cfg: Config, run_dir: Path, resume: bool, data):
        self.cfg, self.run_dir, self.resume, self.data = cfg, run_dir, resume, data

    # ---- set-up -------------------------------------------------------------------
    def _fabric(self):
        from lightning.fabric import Fabric
        t = self.cfg.trainer
        try:
            return Fabric(accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy,
                          precision=t.precision, loggers=[])
        except (ValueError, RuntimeError, TypeError) as e:  # Lightning's own message says what is unavailable
            raise ConfigError(f"cannot set up trainer.accelerator={t.accelerator!r}, devices={t.devices!r}, "
                              f"strategy={t.strategy!r}, precision={t.precision!r}: {e}") from e

    def run(self) -> dict:
        threads, before = cpu_threads(self.cfg.trainer.threads), torch.get_num_threads()
        if threads is not None:
            torch.set_num_threads(threads)
        try:
            return self._run()
        finally:
            torch.set_num_threads(before)

    def _run(self) -> dict:
        cfg, t = self.cfg, self.cfg.trainer
        fabric = self._fabric()
        fabric.launch()
        self.fabric = fabric
        self.is_main = fabric.global_rank == 0
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / "config.yaml")
        fabric.barrier()

        data = self.data if self.data is not None else build_data(cfg)
        self.data = data
        torch.manual_seed(t.seed)  # same initial weights on every rank
        model = build_model(cfg, tuple(data.image_shape))
        objective = build_objective_from(cfg, len(data))
        controller = build_controller_from(cfg)
        if controller is not None and not getattr(objective, "has_kl_weight", True):
            raise ConfigError(f"objective {cfg.objective.name!r} has no KL weight for controller "
                              f"{cfg.controller.name!r} to set; use controller.name=none")
        if t.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if t.compile:
            # in place, so that state_dict keys stay those of the plain model
            model.encoder.compile()
            model.decoder.compile()
        opt = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas))
        aux_params = list(objective.auxiliary_parameters())
        aux_opt = (torch.optim.Adam(aux_params, lr=cfg.optim.aux_lr, betas=tuple(cfg.optim.aux_betas))
                   if aux_params else None)
        step_module = _TrainStep(model, objective)
        if aux_opt is not None:
            step_module, opt, aux_opt = fabric.setup(step_module, opt, aux_opt)
        else:
            step_module, opt = fabric.setup(step_module, opt)
        self.model, self.objective, self.controller = model, objective, controller

        from untwine.data.samplers import ObservationSampler
        sampler = ObservationSampler(data, cfg.optim.batch_size, seed=data_seed(t.seed, fabric.global_rank),
                                     device=fabric.device)
        start = 0
        csv_log = runlog.CSVLog(self.run_dir / "logs" / runlog.CSV_NAME)
        if self.resume:
            start = self._restore(load_checkpoint(self.run_dir), opt, aux_opt, sampler)
            if self.is_main:
                csv_log.truncate_after(start)
                runlog.truncate_jsonl_after(self.run_dir / runlog.METRICS_JSONL, start)
        else:
            torch.manual_seed(data_seed(t.seed, fabric.global_rank) if fabric.world_size > 1 else t.seed + 1)
        if not _no_metrics(t.eval_preset):
            from untwine.metrics import resolve_metrics
            resolve_metrics(t.eval_preset)  # a wrong preset fails now, not after training
        tb = self._tensorboard() if self.is_main else None

        progress = _Progress(t.progress and self.is_main, t.steps, start)
        images_per_step = cfg.optim.batch_size * fabric.world_size
        warm = min(_WARMUP_STEPS, (t.steps - start) // 5)
        last_terms: dict[str, float] = {}
        clock = _Clock()
        wall0 = time.perf_counter()
        # floats each step where the controller needs the KL (and on the CPU, where it is free);
        # on a GPU otherwise only at log, checkpoint and progress steps, to keep the device busy
        need_every_step = controller is not None or fabric.device.type == "cpu"
        live_every = max(1, min(t.log_every, 10))
        end = t.steps
        try:
            for step in range(start, t.steps):
                done = step + 1
                if t.max_seconds is not None and self._out_of_time(step, wall0):
                    end = step  # out of time: finish as if trainer.steps were `step`
                    if step > start:
                        self._checkpoint(step, opt, aux_opt, sampler)
                    break
                if step == start + warm:
                    self._sync()
                    clock.start()
                x = next(sampler).x
                if t.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                beta = controller.beta if controller is not None else None
                out = step_module(x, beta, step)
                opt.zero_grad(set_to_none=True)
                fabric.backward(out.loss)
                opt.step()
                if out.aux_loss is not None:
                    aux_opt.zero_grad(set_to_none=True)
                    fabric.backward(out.aux_loss)
                    aux_opt.step()

                at_log = done % t.log_every == 0
                at_ckpt = done % t.ckpt_every == 0 or done == t.steps
                at_eval = t.eval_every > 0 and done % t.eval_every == 0 and done != t.steps
                at_live = done % live_every == 0 or done == t.steps
                if need_every_step or at_log or at_ckpt or at_live:
                    terms = {"loss": out.loss, **out.terms}
                    if out.aux_loss is not None:
                        terms["aux_loss"] = out.aux_loss
                    last_terms = _scalars(terms, fabric)
                    if not all(math.isfinite(v) for v in last_terms.values()):
                        self._diverged(step, last_terms)
                    if controller is not None:
                        controller.update(kl=last_terms["kl"], step=step)
                if at_log or at_ckpt or at_eval:
                    self._sync()
                    clock.pause()  # logging, checkpoints and evaluation are not training throughput
                if at_log and self.is_main:
                    row = {"step": done, **last_terms, "beta": self._beta(beta), "set_point": self._set_point(),
                           "lr": opt.param_groups[0]["lr"]}
                    csv_log.write(row)
                    if tb is not None:
                        for k, v in row.items():
                            if k != "step" and v is not None:
                                tb.add_scalar(f"train/{k}", v, done)
                if at_live:
                    ips = clock.rate((done - start - warm) * images_per_step)
                    progress.update(done, {"loss": last_terms.get("loss"), "recon": last_terms.get("recon"),
                                           "kl": last_terms.get("kl"), "beta": self._beta(beta),
                                           "C": self._set_point(), "img/s": ips})
                if at_ckpt:
                    self._checkpoint(done, opt, aux_opt, sampler)
                if at_eval:
                    if self.is_main:
                        self._evaluate(done, final=False)
                    fabric.barrier()
                if at_log or at_ckpt or at_eval:
                    clock.resume()
            self._sync()
            clock.pause()
        finally:
            progress.close()
            csv_log.close()
            if tb is not None:
                tb.close()
        ips = clock.rate((end - start - warm) * images_per_step)
        wall = time.perf_counter() - wall0

        metrics, pictures = None, []
        if self.is_main:
            metrics = self._evaluate(end, final=True)
            if t.pictures:
                pictures = self._pictures(csv_log.path)
        fabric.barrier()
        summary = {"run_dir": str(self.run_dir), "steps": end, "start_step": start, "final_terms": last_terms,
                   "metrics": metrics, "images_per_second": ips, "wall_seconds": wall,
                   "checkpoint": str(self.run_dir / "checkpoints" / "last"), "pictures": [str(p) for p in pictures],
                   "world_size": fabric.world_size, "device": str(fabric.device)}
        if self.is_main:
            runlog.write_json(self.run_dir / "summary.json", summary)
        return summary

    # ---- helpers ------------------------------------------------------------------
    def _out_of_time(self, step: int, wall0: float) -> bool:
        t = self.cfg.trainer
        if self.fabric.world_size == 1:
            return time.perf_counter() - wall0 > t.max_seconds
        if step % t.log_every:  # ranks decide together, at log steps only
            return False
        return bool(self.fabric.broadcast(time.perf_counter() - wall0 > t.max_seconds, src=0))

    def _sync(self) -> None:
        if self.fabric.device.type == "cuda":
            torch.cuda.synchronize(self.fabric.device)

    def _beta(self, beta: float | None) -> float | None:
        if beta is not None:
            return float(beta)
        own = getattr(self.objective, "beta", None)
        return float(own) if isinstance(own, (int, float)) else None

    def _set_point(self) -> float | None:
        if self.controller is None:
            return None
        sp = self.controller.set_point()
        return None if sp is None else float(sp)

    def _tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is a dependency; tolerate its absence in stripped installs
            return None
        return SummaryWriter(log_dir=str(self.run_dir / "logs" / "tensorboard"))

    def _diverged(self, step: int, terms: Mapping[str, float]) -> None:
        last = self.run_dir / "checkpoints" / "last"
        try:
            kept = f"the last good checkpoint (step {load_checkpoint(self.run_dir).step}) is kept in {last}"
        except CheckpointError:
            kept = "no checkpoint had been written yet"
        raise NonFiniteLossError(
            f"non-finite loss at step {step} ({_fmt(terms)}); training stopped and {kept}. Lower optim.lr, "
            f"check the data range ([0, 1] for a Bernoulli likelihood) or the objective's parameters, then "
            f"resume with `untwine train --resume {self.run_dir}`")

    def _checkpoint(self, done: int, opt, aux_opt, sampler) -> None:
        if self.is_main:
            optimizers = {"main": opt.state_dict()}
            if aux_opt is not None:
                optimizers["aux"] = aux_opt.state_dict()
            save_checkpoint(self.run_dir, Checkpoint(
                step=done, model=self.model.state_dict(), optimizers=optimizers,
                aux=self.objective.state_dict(),
                controller=self.controller.state_dict() if self.controller is not None else None,
                sampler=sampler.state_dict(), rng=capture_torch_rng(),
                extra={"world_size": self.fabric.world_size}))
        self.fabric.barrier()

    def _restore(self, ckpt: Checkpoint, opt, aux_opt, sampler) -> int:
        if ckpt.step > self.cfg.trainer.steps:
            raise ConfigError(f"the checkpoint is at step {ckpt.step}, beyond trainer.steps={self.cfg.trainer.steps}; "
                              f"pass trainer.steps=N with N >= {ckpt.step} to continue")
        try:
            self.model.load_state_dict(ckpt.model)
            if ckpt.aux or list(self.objective.state_dict()):
                self.objective.load_state_dict(ckpt.aux)
            opt.load_state_dict(ckpt.optimizers["main"])
            if aux_opt is not None:
                opt_aux_state = ckpt.optimizers.get("aux")
                if opt_aux_state is None:
                    raise KeyError("aux optimizer state")
                aux_opt.load_state_dict(opt_aux_state)
        except (RuntimeError, KeyError, ValueError) as e:
            raise CheckpointError(f"the checkpoint in {self.run_dir / 'checkpoints'} does not fit the model of the "
                                  f"config ({e}); resume with the run's own config.yaml (model and objective "
                                  f"settings unchanged)") from e
        if self.controller is not None:
            if ckpt.controller is None:
                raise CheckpointError("the checkpoint has no controller state but the config has controller "
                                      f"{self.cfg.controller.name!r}; resume with the run's own controller settings")
            self.controller.load_state_dict(ckpt.controller)
        state = dict(ckpt.sampler or {}, seed=sampler.seed, step=ckpt.step)
        sampler.load_state_dict(state)
        if self.fabric.world_size == 1:
            restore_torch_rng(ckpt.rng)
        else:  # other ranks' generators were not saved: a fresh, distinct stream per rank
            torch.manual_seed(data_seed(self.cfg.trainer.seed + ckpt.step, self.fabric.global_rank))
        return ckpt.step

    def _evaluation_batch(self, n: int = 16) -> torch.Tensor:
        rng = np.random.default_rng(self.cfg.trainer.seed)
        idx = rng.choice(len(self.data), size=min(n, len(self.data)), replace=False)
        return self.data.batch(np.sort(idx), device=self.fabric.device)

    def _evaluate(self, step: int, final: bool) -> dict | None:
        preset = self.cfg.trainer.eval_preset
        if _no_metrics(preset):
            return None
        from untwine.metrics import evaluate
        model, device = self.model, self.fabric.device
        was_training = model.training
        model.eval()
        try:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
                # the posterior (mean, logvar): the mean is the code; the log-variance serves mig_sampling
                result = evaluate(model.encode, self.data, metrics=preset, seed=self.cfg.trainer.seed,
                                  batch_size=self.cfg.trainer.eval_batch_size, device=device)
        finally:
            model.train(was_training)
        record = {"step": step, **result}
        if final:
            runlog.write_json(self.run_dir / "metrics.json", record)
        else:
            runlog.append_jsonl(self.run_dir / runlog.METRICS_JSONL, record)
        return result

    def _pictures(self, csv_path: Path) -> list[Path]:
        try:
            from untwine import viz
        except ImportError:
            return []
        out_dir = self.run_dir / "pictures"
        out_dir.mkdir(parents=True, exist_ok=True)
        x = self._evaluation_batch()
        written = []
        device = self.fabric.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            viz.save_reconstructions(self.model, x, out_dir / "reconstructions.png")
            viz.save_traversals(self.model, x, out_dir / "traversals.png", out_dir / "traversals.gif")
            written += [out_dir / "reconstructions.png", out_dir / "traversals.png", out_dir / "traversals.gif"]
            if csv_path.is_file():
                viz.plot_training_curves(csv_path, out_dir / "curves.png")
                written.append(out_dir / "curves.png")
                if self.controller is not None and self.controller.set_point() is not None:
                    viz.plot_beta_kl(csv_path, out_dir / "beta_kl.png")
                    written.append(out_dir / "beta_kl.png")
        return written
