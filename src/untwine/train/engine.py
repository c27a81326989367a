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
from untwine.train.config import Config, check_trainable, load_config, save_config

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

    def forward(self, batch, beta: float | None, step: int):
        return self.objective(self.model, batch, beta=beta, step=step)


# -- building blocks from a config -----------------------------------------------------------------
def build_data(cfg: Config):
    from untwine.data.registry import get_dataset
    return get_dataset(cfg.data.name, cache_dir=cfg.data.cache_dir, path=cfg.data.path)


def build_vae_model(cfg: Config, image_shape: tuple[int, ...], likelihood: nn.Module | None = None) -> nn.Module:
    """The single-stage VAE of cfg.model for data of `image_shape`; `likelihood` (a module a
    dataset supplies, e.g. a table's mixed likelihood) replaces cfg.model.likelihood."""
    from untwine.nets import build_vae
    m = cfg.model
    lik = likelihood if likelihood is not None else m.likelihood
    if lik == "mixed":
        raise ConfigError(f"model.likelihood=mixed is a table's likelihood, supplied by table data; dataset "
                          f"{cfg.data.name!r} supplies none: use bernoulli or gaussian")
    if m.arch == "conv64":
        if len(image_shape) != 3 or tuple(image_shape[1:]) != (64, 64):
            raise ConfigError(f"model.arch=conv64 needs 64x64 images; dataset {cfg.data.name!r} has shape "
                              f"{tuple(image_shape)} (C, H, W); use model.arch=mlp")
        return build_vae("conv64", in_channels=image_shape[0], latent_dim=m.latent_dim, likelihood=lik)
    return build_vae(m.arch, in_dim=tuple(image_shape), latent_dim=m.latent_dim, likelihood=lik, hidden=m.hidden)


def build_model(cfg: Config, data, run_dir: Path | None = None, stage1_weights: dict | None = None) -> nn.Module:
    """The model a config trains on `data`: a VAE, or for a multi-stage config (stage1.run set) the
    frozen stage 1 of that run with a fresh stage 2 (`stage1_weights` instead of the stage-1 run's
    checkpoint, e.g. from the multi-stage run's own checkpoint)."""
    if cfg.stage1.run:
        from untwine.multistage.build import build_multistage, check_stage1, stage1_config
        s1cfg = stage1_config(cfg, run_dir)
        check_stage1(cfg, s1cfg, data)
        return build_multistage(cfg, data, s1cfg, stage1_weights)
    return build_vae_model(cfg, tuple(data.image_shape), getattr(data, "likelihood", None))


def build_objective_from(cfg: Config, dataset_size: int) -> nn.Module:
    if cfg.stage1.run:
        if cfg.objective.name != "multistage" or cfg.objective.params:
            raise ConfigError(f"a multi-stage run (stage1={cfg.stage1.run}) trains stage 2 with objective.name="
                              f"multistage and no objective parameters (got {cfg.objective.name!r} "
                              f"{cfg.objective.params or ''}); put stage 2's parameters under stage2.*")
        from untwine.multistage.objective import MultiStageObjective
        return MultiStageObjective()
    if cfg.objective.name == "multistage":
        raise ConfigError("objective.name=multistage trains the second stage of a multi-stage model: give the "
                          "stage-1 run as stage1=RUN_DIR and a variant as stage2.name (or use an ms-* preset)")
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


def cpu_has_native_bf16() -> bool:
    """True when the CPU executes bf16 matrix products natively (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:  # not Linux: do not guess
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, accelerator: str) -> str:
    """trainer.precision=auto: bf16 autocast where the device has native bf16 (measured here 2.6x a
    float32 step with channels-last), else float32 on a CPU and fp16 autocast on a GPU."""
    if precision != "auto":
        return precision
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    if accelerator in ("cpu", "auto"):
        return "bf16-mixed" if cpu_has_native_bf16() else "32-true"
    return "32-true"


def default_run_dir(cfg: Config) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.run.name or cfg.objective.name}-{stamp}"


def _cpu_sample() -> tuple[int, int, float, float]:
    """(busy, total) CPU ticks of the whole machine since boot (/proc/stat), this process's CPU
    seconds and the wall clock."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return total - idle, total, time.process_time(), time.perf_counter()


def _other_busy_cores(window: float = 0.3) -> float | None:
    """Cores that other processes keep busy now: the machine's CPU time over a short window less
    this process's own; None where /proc/stat cannot be read."""
    try:
        busy0, total0, own0, t0 = _cpu_sample()
        time.sleep(window)
        busy1, total1, own1, t1 = _cpu_sample()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    machine = (busy1 - busy0) / (total1 - total0) * (os.cpu_count() or 1)
    return max(0.0, machine - (own1 - own0) / max(t1 - t0, 1e-9))


def cpu_threads(setting: int | str | None) -> int | None:
    """torch threads for trainer.threads: an int as given; "auto": the cores that other processes
    leave free now. Measured over a short window, not read from the load average: the 1-minute
    average still holds this process's own earlier work (the demo's stage 1 made its stage 2 run
    on one of two idle cores, at 0.65x the speed)."""
    if setting is None:
        return None
    if setting == "auto":
        cores = os.cpu_count() or 1
        busy = _other_busy_cores()
        if busy is None:
            try:
                busy = os.getloadavg()[0]
            except (OSError, AttributeError):  # no load average on this platform
                return cores
        return max(1, min(cores, int(cores - busy + 0.5)))
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
class Progress:
    """Live progress on rank 0: a rich bar in a terminal; without one (a pipe, a log file, CI) plain
    lines about every 5% of the run, since a bar's redraws become garbage there."""

    def __init__(self, enabled: bool, total: int, start: int, stream=None):
        import sys
        self.enabled, self.total, self.start = enabled, total, start
        self.stream = stream if stream is not None else sys.stdout
        self.bar = enabled and self.stream.isatty()
        self.every = max(1, (total - start) // 20)
        self.next = start + self.every
        self.t0 = time.perf_counter()
        if not self.enabled:
            return
        if self.bar:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)
            self.progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[live]}"))
            self.task = self.progress.add_task("train", total=total, completed=start, live="")
            self.progress.start()
        else:
            print(f"train: steps {start}..{total}", file=self.stream, flush=True)

    @staticmethod
    def _live(live: Mapping[str, float | None]) -> str:
        return "  ".join(f"{k} {v:.4g}" for k, v in live.items() if v is not None)

    def update(self, step: int, live: Mapping[str, float | None] | None = None) -> None:
        if not self.enabled:
            return
        if self.bar:
            fields = {} if live is None else {"live": self._live(live)}
            self.progress.update(self.task, completed=step, **fields)
        elif step >= self.next or step == self.total:
            self.next = step + self.every
            elapsed = time.perf_counter() - self.t0
            print(f"train: step {step}/{self.total} ({100 * step / max(self.total, 1):.0f}%, {elapsed:.0f} s)  "
                  f"{self._live(live or {})}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.enabled and self.bar:
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
    check_trainable(cfg)  # before anything is written
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
    """One engine for every model. Reading order: `_setup` (Fabric, data, model, objective,
    optimisers, sampler, resume), `_step` (one optimisation step), `_observe` (scalars, the NaN
    guard, the controller) and `_periodic` (log, checkpoint, evaluate), then `_finish` (final
    evaluation, pictures, report, summary)."""

    def __init__(self, cfg: Config, run_dir: Path, resume: bool, data):
        self.cfg, self.run_dir, self.resume, self.data = cfg, run_dir, resume, data

    def run(self) -> dict:
        threads, before = cpu_threads(self.cfg.trainer.threads), torch.get_num_threads()
        if threads is not None:
            torch.set_num_threads(threads)
        try:
            self._setup()
            self._loop()
            return self._finish()
        finally:
            torch.set_num_threads(before)

    # ---- set-up -------------------------------------------------------------------
    def _fabric(self):
        from lightning.fabric import Fabric
        t = self.cfg.trainer
        precision = resolve_precision(t.precision, t.accelerator)
        try:
            return Fabric(accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy,
                          precision=precision, loggers=[])
        except (ValueError, RuntimeError, TypeError) as e:  # Lightning's own message says what is unavailable
            raise ConfigError(f"cannot set up trainer.accelerator={t.accelerator!r}, devices={t.devices!r}, "
                              f"strategy={t.strategy!r}, precision={precision!r}: {e}") from e

    def _setup(self) -> None:
        cfg, t = self.cfg, self.cfg.trainer
        ckpt = load_checkpoint(self.run_dir) if self.resume else None
        stage1_weights = None
        if cfg.stage1.run:
            stage1_weights = self._prepare_stage1(ckpt)
        fabric = self.fabric = self._fabric()
        fabric.launch()
        self.is_main = fabric.global_rank == 0
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / "config.yaml")
            if cfg.stage1.run:
                from untwine.multistage.build import STAGE1_COPY
                save_config(self.stage1_cfg, self.run_dir / STAGE1_COPY)
        fabric.barrier()

        data = self.data = self.data if self.data is not None else build_data(cfg)
        torch.manual_seed(t.seed)  # same initial weights on every rank
        model = build_model(cfg, data, self.run_dir if self.resume else None, stage1_weights)
        objective = build_objective_from(cfg, len(data))
        controller = build_controller_from(cfg)
        if controller is not None and not getattr(objective, "has_kl_weight", True):
            raise ConfigError(f"objective {cfg.objective.name!r} has no KL weight for controller "
                              f"{cfg.controller.name!r} to set; use controller.name=none")
        if t.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if t.compile:
            # in place, so that state_dict keys stay those of the plain model
            for net in (model.stage2,) if cfg.stage1.run else (model.encoder, model.decoder):
                net.compile()
        opt, aux_opt = self._optimisers(model, objective)
        step_module = _TrainStep(model, objective)
        if aux_opt is not None:
            self.step_module, opt, aux_opt = fabric.setup(step_module, opt, aux_opt)
        else:
            self.step_module, opt = fabric.setup(step_module, opt)
        self.model, self.objective, self.controller, self.opt, self.aux_opt = model, objective, controller, opt, aux_opt

        from untwine.train.batches import batch_kind, build_sampler
        self.batch_kind = batch_kind(objective)
        self.sampler = build_sampler(cfg, data, objective, data_seed(t.seed, fabric.global_rank), fabric.device)
        self.start = 0
        self.csv_log = runlog.CSVLog(self.run_dir / "logs" / runlog.CSV_NAME)
        if ckpt is not None:
            self.start = self._restore(ckpt)
            if self.is_main:
                self.csv_log.truncate_after(self.start)
                runlog.truncate_jsonl_after(self.run_dir / runlog.METRICS_JSONL, self.start)
        else:
            torch.manual_seed(data_seed(t.seed, fabric.global_rank) if fabric.world_size > 1 else t.seed + 1)
        if not _no_metrics(t.eval_preset) and getattr(data, "factor_space", None) is not None:
            from untwine.metrics import resolve_metrics
            resolve_metrics(t.eval_preset)  # a wrong preset fails now, not after training
        self.tb = self._tensorboard() if self.is_main else None

    def _prepare_stage1(self, ckpt: Checkpoint | None) -> dict | None:
        """Read and check the stage-1 run before any work; resolve data.name=stage1. On resume,
        stage 1's weights come from this run's own checkpoint (the stage-1 run may have moved)."""
        from untwine.multistage.build import check_stage1, resolve_data_section, stage1_config
        cfg = self.cfg
        self.stage1_cfg = stage1_config(cfg, self.run_dir if self.resume else None)
        check_stage1(cfg, self.stage1_cfg)
        resolve_data_section(cfg, self.stage1_cfg)
        if not self.resume:
            cfg.stage1.run = str(Path(cfg.stage1.run).resolve())
        if ckpt is None:
            return None
        return {k[len("stage1."):]: v for k, v in ckpt.model.items() if k.startswith("stage1.")}

    def _optimisers(self, model: nn.Module, objective: nn.Module):
        """Adam over the trainable parameters; a second Adam over the auxiliary ones (FactorVAE's or
        the GAN's discriminator), which the main optimiser never sees."""
        cfg = self.cfg
        aux_params = list(objective.auxiliary_parameters())
        if hasattr(model, "auxiliary_parameters"):
            aux_params += list(model.auxiliary_parameters())
        aux_ids = {id(p) for p in aux_params}
        main = [p for p in model.parameters() if p.requires_grad and id(p) not in aux_ids]
        opt = torch.optim.Adam(main, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas))
        aux_opt = (torch.optim.Adam(aux_params, lr=cfg.optim.aux_lr, betas=tuple(cfg.optim.aux_betas))
                   if aux_params else None)
        return opt, aux_opt

    # ---- the loop -----------------------------------------------------------------
    def _loop(self) -> None:
        t, fabric = self.cfg.trainer, self.fabric
        self.progress = Progress(t.progress and self.is_main, t.steps, self.start)
        self.warm = min(_WARMUP_STEPS, (t.steps - self.start) // 5)
        self.images_per_step = self.cfg.optim.batch_size * fabric.world_size
        self.last_terms: dict[str, float] = {}
        self.clock = _Clock()
        self.wall0 = time.perf_counter()
        # floats each step where the controller needs the KL (and on the CPU, where it is free);
        # on a GPU otherwise only at log, checkpoint and progress steps, to keep the device busy
        self.every_step = self.controller is not None or fabric.device.type == "cpu"
        self.live_every = max(1, min(t.log_every, 10))
        self.end = t.steps
        try:
            for step in range(self.start, t.steps):
                if t.max_seconds is not None and self._out_of_time(step):
                    self.end = step  # out of time: finish as if trainer.steps were `step`
                    if step > self.start:
                        self._checkpoint(step)
                    break
                if step == self.start + self.warm:
                    self._sync()
                    self.clock.start()
                out, beta = self._step(step)
                self._periodic(step + 1, out, beta)
            self._sync()
            self.clock.pause()
        finally:
            self.progress.close()
            self.csv_log.close()
            if self.tb is not None:
                self.tb.close()

    def _step(self, step: int):
        """One optimisation step. Both losses go back in ONE backward: they reach disjoint parameter
        sets (the objective's contract), and under DDP every gradient bucket is then all-reduced
        before either optimiser steps (two backwards would let the main step run on unreduced
        gradients: the ranks drifted apart by 1e-3 in ten FactorVAE steps)."""
        from untwine.train.batches import to_device_layout
        batch = next(self.sampler)
        if self.batch_kind == "single" and not isinstance(batch, torch.Tensor):
            batch = batch.x  # single-image objectives take the images alone
        batch = to_device_layout(batch, self.cfg.trainer.channels_last)
        beta = self.controller.beta if self.controller is not None else None
        out = self.step_module(batch, beta, step)
        self.opt.zero_grad(set_to_none=True)
        if out.aux_loss is None:
            self.fabric.backward(out.loss)
            self.opt.step()
        else:
            self.aux_opt.zero_grad(set_to_none=True)
            self.fabric.backward(out.loss + out.aux_loss)
            self.opt.step()
            self.aux_opt.step()
        return out, beta

    def _observe(self, step: int, out) -> None:
        """The step's terms as floats (ranks averaged), the NaN guard and the controller update."""
        terms = {"loss": out.loss, **out.terms}
        if out.aux_loss is not None:
            terms["aux_loss"] = out.aux_loss
        self.last_terms = _scalars(terms, self.fabric)
        if not all(math.isfinite(v) for v in self.last_terms.values()):
            self._diverged(step, f"non-finite loss at step {step} ({_fmt(self.last_terms)})")
        if self.controller is not None:
            self.controller.update(kl=self.last_terms["kl"], step=step)

    def _periodic(self, done: int, out, beta) -> None:
        t = self.cfg.trainer
        at_log = done % t.log_every == 0
        at_ckpt = done % t.ckpt_every == 0 or done == t.steps
        at_eval = t.eval_every > 0 and done % t.eval_every == 0 and done != t.steps
        at_live = done % self.live_every == 0 or done == t.steps
        if self.every_step or at_log or at_ckpt or at_live:
            self._observe(done - 1, out)
        if at_log or at_ckpt or at_eval:
            self._sync()
            self.clock.pause()  # logging, checkpoints and evaluation are not training throughput
        if at_log and self.is_main:
            row = {"step": done, **self.last_terms, "beta": self._beta(beta), "set_point": self._set_point(),
                   "lr": self.opt.param_groups[0]["lr"]}
            self.csv_log.write(row)
            if self.tb is not None:
                for k, v in row.items():
                    if k != "step" and v is not None:
                        self.tb.add_scalar(f"train/{k}", v, done)
        if at_live:
            ips = self.clock.rate((done - self.start - self.warm) * self.images_per_step)
            lt = self.last_terms
            self.progress.update(done, {"loss": lt.get("loss"), "recon": lt.get("recon"), "kl": lt.get("kl"),
                                        "beta": self._beta(beta), "C": self._set_point(), "img/s": ips})
        if at_ckpt:
            self._checkpoint(done)
        if at_eval:
            if self.is_main:
                self._evaluate(done, final=False)
            self.fabric.barrier()
        if at_log or at_ckpt or at_eval:
            self.clock.resume()

    # ---- the end ------------------------------------------------------------------
    def _finish(self) -> dict:
        t = self.cfg.trainer
        ips = self.clock.rate((self.end - self.start - self.warm) * self.images_per_step)
        wall = time.perf_counter() - self.wall0
        metrics, pictures, report = None, [], None
        if self.is_main:
            metrics = self._evaluate(self.end, final=True)
            if t.pictures:
                pictures = self._pictures(self.csv_log.path)
        self.fabric.barrier()
        summary = {"run_dir": str(self.run_dir), "steps": self.end, "start_step": self.start,
                   "final_terms": self.last_terms, "metrics": metrics, "images_per_second": ips,
                   "wall_seconds": wall, "checkpoint": str(self.run_dir / "checkpoints" / "last"),
                   "pictures": [str(p) for p in pictures], "world_size": self.fabric.world_size,
                   "device": str(self.fabric.device), "precision": resolve_precision(t.precision, t.accelerator),
                   "cpu_threads": torch.get_num_threads()}  # what trainer.threads gave (auto: the free cores)
        if self.is_main:
            runlog.write_json(self.run_dir / "summary.json", summary)
            if t.report:
                from untwine.report import write_report
                report = write_report([self.run_dir])
                summary["report"] = str(report)
                runlog.write_json(self.run_dir / "summary.json", summary)
        return summary

    # ---- helpers ------------------------------------------------------------------
    def _out_of_time(self, step: int) -> bool:
        t = self.cfg.trainer
        if self.fabric.world_size == 1:
            return time.perf_counter() - self.wall0 > t.max_seconds
        if step % t.log_every:  # ranks decide together, at log steps only
            return False
        return bool(self.fabric.broadcast(time.perf_counter() - self.wall0 > t.max_seconds, src=0))

    def _sync(self) -> None:
        if self.fabric.device.type == "cuda":
            torch.cuda.synchronize(self.fabric.device)

    def _beta(self, beta: float | None) -> float | None:
        if beta is not None:
            return float(beta)
        own = getattr(self.objective, "beta", None)
        if own is None and hasattr(self.model, "stage2"):
            own = getattr(self.model.stage2, "beta", None)
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

    def _kept(self) -> str:
        last = self.run_dir / "checkpoints" / "last"
        try:
            return f"the last good checkpoint (step {load_checkpoint(self.run_dir).step}) is kept in {last}"
        except CheckpointError:
            return "no checkpoint had been written yet"

    def _diverged(self, step: int, what: str) -> None:
        raise NonFiniteLossError(
            f"{what}; training stopped and {self._kept()}. Lower optim.lr, check the data range ([0, 1] for a "
            f"Bernoulli likelihood) or the objective's parameters, then resume with "
            f"`untwine train --resume {self.run_dir}`")

    def _nonfinite_tensors(self) -> list[str]:
        """Names of weights (model and objective) holding NaN or infinity; one device sync."""
        named = [(f"model.{k}", v) for k, v in self.model.state_dict().items()]
        named += [(f"objective.{k}", v) for k, v in self.objective.state_dict().items()]
        named = [(k, v) for k, v in named if v.is_floating_point()]
        if not named:
            return []
        finite = torch.stack([torch.isfinite(v).all() for _, v in named]).tolist()
        return [k for (k, _), ok in zip(named, finite) if not ok]

    def _checkpoint(self, done: int) -> None:
        # a finite loss with a non-finite gradient leaves NaN weights after the step: never save them
        bad = self._nonfinite_tensors()
        if bad:
            self._diverged(done, f"non-finite weights after step {done} ({', '.join(bad[:3])}"
                                 f"{', ...' if len(bad) > 3 else ''}; the loss before the update was finite, so a "
                                 f"gradient was not), not saved")
        if self.is_main:
            optimizers = {"main": self.opt.state_dict()}
            if self.aux_opt is not None:
                optimizers["aux"] = self.aux_opt.state_dict()
            save_checkpoint(self.run_dir, Checkpoint(
                step=done, model=self.model.state_dict(), optimizers=optimizers,
                aux=self.objective.state_dict(),
                controller=self.controller.state_dict() if self.controller is not None else None,
                sampler=self.sampler.state_dict(), rng=capture_torch_rng(),
                extra={"world_size": self.fabric.world_size}))
        self.fabric.barrier()

    def _restore(self, ckpt: Checkpoint) -> int:
        if ckpt.step > self.cfg.trainer.steps:
            raise ConfigError(f"the checkpoint is at step {ckpt.step}, beyond trainer.steps={self.cfg.trainer.steps}; "
                              f"pass trainer.steps=N with N >= {ckpt.step} to continue")
        opt, aux_opt = self.opt, self.aux_opt
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
        state = dict(ckpt.sampler or {}, seed=self.sampler.seed, step=ckpt.step)
        self.sampler.load_state_dict(state)
        if self.fabric.world_size == 1:
            restore_torch_rng(ckpt.rng)
        else:  # other ranks' generators were not saved: a fresh, distinct stream per rank
            torch.manual_seed(data_seed(self.cfg.trainer.seed + ckpt.step, self.fabric.global_rank))
        return ckpt.step

    def _evaluation_batch(self, n: int = 16) -> torch.Tensor:
        """The pictures' images: from the grid's evaluation split (never trained on) where it has one."""
        from untwine.data.split import evaluation_split
        space = getattr(self.data, "factor_space", None)
        pool = evaluation_split(space).eval_indices if space is not None else np.empty(0, np.int64)
        if len(pool) == 0:  # a grid too small to hold images out (tests' toy grids)
            pool = np.arange(len(self.data))
        rng = np.random.default_rng(self.cfg.trainer.seed)
        idx = pool[rng.choice(len(pool), size=min(n, len(pool)), replace=False)]
        return self.data.batch(np.sort(idx), device=self.fabric.device)

    def _forked_rng(self):
        device = self.fabric.device
        return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])

    def _evaluate(self, step: int, final: bool) -> dict | None:
        t = self.cfg.trainer
        if getattr(self.data, "factor_space", None) is None:
            return None
        stages = bool(self.cfg.stage1.run) and t.multistage_eval != "none"
        # A frozen stage 1's disentanglement scores cannot move during stage 2: score them once, at the
        # end; what moves, and is measured at every evaluation, is stage 2's reconstruction.
        scores = not _no_metrics(t.eval_preset) and (final or not self.cfg.stage1.run)
        if not scores and not stages:
            return None
        from untwine.metrics import evaluate
        model, device = self.model, self.fabric.device
        was_training = model.training
        model.eval()
        try:
            with self._forked_rng(), torch.no_grad():
                # the posterior (mean, logvar): the mean is the code; the log-variance serves mig_sampling.
                # A multi-stage model's encode is stage 1's, so its scores are stage 1's exactly.
                result = evaluate(model.encode, self.data, metrics=t.eval_preset, seed=t.seed,
                                  batch_size=self._eval_batch_size(), device=device) if scores else {}
                if stages:
                    result["multistage"] = self._evaluate_stages(model, full=final)
        finally:
            model.train(was_training)
        record = {"step": step, **result}
        if final:
            runlog.write_json(self.run_dir / "metrics.json", record)
        else:
            runlog.append_jsonl(self.run_dir / runlog.METRICS_JSONL, record)
        return result

    def _eval_batch_size(self) -> int:
        from untwine.metrics.protocol import default_encode_batch_size
        return self.cfg.trainer.eval_batch_size or default_encode_batch_size(self.fabric.device)

    def _evaluate_stages(self, model, full: bool) -> dict:
        """Stage 1 against the combined model on the same held-out images; `full` adds samples,
        fidelity and w-invariance where trainer.multistage_eval asks for them (the final evaluation)."""
        from untwine.multistage import evaluation as ev
        t, batch_size = self.cfg.trainer, self._eval_batch_size()
        if full and t.multistage_eval == "full":
            return ev.evaluate_multistage(model, self.data, seed=t.seed, batch_size=batch_size)
        recon = ev.evaluate_reconstruction(model, self.data, seed=t.seed, batch_size=batch_size)
        return {**recon, "summary": ev.reconstruction_ratios(recon)}

    def _pictures(self, csv_path: Path) -> list[Path]:
        from untwine import viz
        out_dir = self.run_dir / "pictures"
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        images = len(getattr(self.data, "image_shape", ())) == 3
        was_training = self.model.training
        self.model.eval()
        try:
            with self._forked_rng():
                if images:
                    x = self._evaluation_batch()
                    if self.cfg.stage1.run:
                        from untwine.viz import multistage as msviz
                        msviz.save_side_by_side(self.model, x, out_dir / "side_by_side.png")
                        msviz.save_multistage_traversals(self.model, x[:4], out_dir / "traversals.png",
                                                         out_dir / "traversals.gif")
                        msviz.save_samples(self.model, out_dir / "samples.png", n=16, seed=self.cfg.trainer.seed)
                        written += [out_dir / n for n in ("side_by_side.png", "traversals.png", "traversals.gif",
                                                          "samples.png")]
                    else:
                        viz.save_reconstructions(self.model, x, out_dir / "reconstructions.png")
                        viz.save_traversals(self.model, x, out_dir / "traversals.png", out_dir / "traversals.gif")
                        written += [out_dir / "reconstructions.png", out_dir / "traversals.png",
                                    out_dir / "traversals.gif"]
                if csv_path.is_file():
                    viz.plot_training_curves(csv_path, out_dir / "curves.png")
                    written.append(out_dir / "curves.png")
                    if self.controller is not None and self.controller.set_point() is not None:
                        viz.plot_beta_kl(csv_path, out_dir / "beta_kl.png")
                        written.append(out_dir / "beta_kl.png")
        finally:
            self.model.train(was_training)
        return written
