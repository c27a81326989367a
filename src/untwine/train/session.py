"""`train()`: a run from a config, or the continuation of one, on Lightning Fabric.

    summary = train(load_config("dsprites-dynamicvae", ["trainer.steps=3000"]))
    summary = train(None, run_dir="runs/x", resume=True)        # continue a run from its checkpoint

Order: read and validate everything (config, checkpoint, the task's state, the resume's changes),
then write (config.yaml of a new run, the history entry of a resume), then train, then the final
evaluation, pictures, summary and report. Fabric takes accelerator, devices, num_nodes, strategy
and precision from the config; several GPUs or nodes go through Fabric's own launcher
(`fabric.launch()`), each rank drawing its own data seed. On the CPU a resumed run reaches the same
weights as an uninterrupted one, bit for bit; evaluation and pictures never move the training stream.
"""
from __future__ import annotations

import os
import shutil
import signal
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping

import torch

from untwine.errors import ConfigError, UntwineError
from untwine.train import callbacks as cb
from untwine.train import logging as runlog
from untwine.train import resume as resuming
from untwine.train.checkpoint import checkpoint_dir, load_checkpoint
from untwine.train.config import Config, check_trainable, load_config, save_config
from untwine.train.factory import build_data, task_kind
from untwine.train.hardware import Threads, make_fabric, prepare_networks, resolve_precision
from untwine.train.loop import Loop, check_disjoint
from untwine.train.state import NonFiniteLossError, TrainState, data_seed
from untwine.train.tasks.base import RunContext

RUN_DIR_ENV = "UNTWINE_RUN_DIR"  # hands the run directory to ranks started by Fabric's launcher


class TrainingInterrupted(UntwineError):
    """SIGINT or SIGTERM stopped training; the step reached was checkpointed (after the usual checks)."""

    def __init__(self, message: str, exit_code: int = 130):
        super().__init__(message)
        self.exit_code = exit_code


def default_run_dir(cfg: Config) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.run.name or cfg.objective.name}-{stamp}"


def train(config: "Config | str | Mapping | None" = None, run_dir: str | os.PathLike | None = None,
          resume: bool = False, data=None) -> dict:
    """Train (or, with resume=True, continue) a run; returns a summary dict.

    config: a Config, preset name, YAML path or dict; with resume=True it may be None (the run's own
    config). run_dir: where the run lives (default config.run.dir, else runs/<name>-<time>).
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
            config = resuming.run_config(run_dir)
        checkpoint_dir(run_dir)  # fail early, before any work, when there is nothing to resume
    elif config is None:
        raise ConfigError("train() needs a config: a Config, a preset name (see `untwine presets`) or a YAML path")
    cfg = config if isinstance(config, Config) else load_config(config)
    check_trainable(cfg)  # before anything is written
    if run_dir is None:
        run_dir = Path(cfg.run.dir) if cfg.run.dir else default_run_dir(cfg)
    kind = task_kind(cfg)
    if resume:
        ckpt = load_checkpoint(run_dir)
        cfg = kind.resolve_config(cfg, run_dir, True)
        changed = resuming.check_resume(run_dir, cfg, ckpt.step)
    else:
        if (run_dir / "checkpoints").exists() and any((run_dir / "checkpoints").iterdir()):
            raise ConfigError(f"run directory {str(run_dir)!r} already holds a run; continue it with "
                              f"`untwine train --resume {run_dir}` or choose another --run-dir")
        cfg = kind.resolve_config(cfg, run_dir, False)
        ckpt, changed = None, {}
    previous = os.environ.get(RUN_DIR_ENV)
    os.environ[RUN_DIR_ENV] = str(run_dir.resolve())  # inherited by the ranks fabric.launch() starts
    try:
        with Threads(cfg.trainer.threads):
            return _Session(cfg, kind, run_dir, ckpt, changed, data).run()
    finally:
        if previous is None:
            os.environ.pop(RUN_DIR_ENV, None)
        else:
            os.environ[RUN_DIR_ENV] = previous


# A run that stops without finishing says why in RUN/failure.json (what `untwine runs` and a study
# show): interrupted (SIGINT/SIGTERM, resumable), diverged (the NaN guard) or error; a later attempt
# that finishes removes it.
FAILURE = "failure.json"


def record_failure(run_dir: Path, error: BaseException, checkpoint: str | None, resume: str) -> None:
    kind = ("interrupted" if isinstance(error, (TrainingInterrupted, KeyboardInterrupt)) else
            "diverged" if isinstance(error, NonFiniteLossError) else "error")
    try:
        runlog.write_json(run_dir / FAILURE, {
            "kind": kind, "error": type(error).__name__, "message": str(error)[:2000],
            "kept": checkpoint or None, "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "resume": resume if checkpoint else None})
    except OSError:
        pass  # the disk that failed the run may refuse this too; the error itself still propagates


# What a run writes into its directory. A new run into a directory that an aborted one left (no
# checkpoint, so nothing to resume) removes them first: an old train.csv or TensorBoard stream would
# otherwise run on into the new run's curves. Anything else in the directory is the user's: kept.
RUN_OUTPUTS = ("logs", "pictures", "checkpoints", "metrics.json", runlog.METRICS_JSONL, "summary.json",
               "report.html", "config.yaml", resuming.HISTORY, FAILURE)


def clear_stale_outputs(run_dir: Path) -> list[str]:
    """Remove a previous, never-checkpointed run's outputs from `run_dir`; returns what was removed.
    Only a directory that holds a run's config.yaml is touched (a user's own `logs` folder is not
    a run's)."""
    removed = []
    if not (run_dir / "config.yaml").is_file():
        return removed
    for name in RUN_OUTPUTS:
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(name)
    return removed


class _Session:
    def __init__(self, cfg: Config, kind, run_dir: Path, ckpt, changed: dict, data):
        self.cfg, self.kind, self.run_dir, self.ckpt, self.changed, self.data = cfg, kind, run_dir, ckpt, changed, data

    def run(self) -> dict:
        cfg, t, ckpt, run_dir = self.cfg, self.cfg.trainer, self.ckpt, self.run_dir
        fabric = self.fabric = make_fabric(t)
        fabric.launch()
        is_main = fabric.global_rank == 0
        data = self.data if self.data is not None else build_data(cfg)
        torch.manual_seed(t.seed)  # same initial weights on every rank
        task = self.kind.build_task(cfg, data, run_dir if ckpt is not None else None,
                                    ckpt.model if ckpt is not None else None)
        task.model = prepare_networks(task.model, task.compiled_networks(), t)
        groups = task.parameter_groups()
        check_disjoint(groups)
        optimizers = [g.make_optimizer() for g in groups.values()]
        if optimizers:
            module, *optimizers = fabric.setup(task.module, *optimizers)
        else:
            module = fabric.setup(task.module)
        sampler = task.build_sampler(cfg, data, data_seed(t.seed, fabric.global_rank), fabric.device)
        state = TrainState(cfg, task, dict(zip(groups, optimizers)), groups, sampler, fabric)
        start = 0
        if ckpt is not None:
            start = state.restore(ckpt, run_dir)
        else:
            torch.manual_seed(data_seed(t.seed, fabric.global_rank) if fabric.world_size > 1 else t.seed + 1)
        if getattr(data, "factor_space", None) is not None and t.eval_preset not in ("none", "", None, {}):
            from untwine.metrics import resolve_metrics
            resolve_metrics(t.eval_preset)  # a wrong preset fails now, not after training
        # -- everything validated: write ---------------------------------------------------------
        if is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            if ckpt is None:
                clear_stale_outputs(run_dir)
                save_config(cfg, run_dir / "config.yaml")
                task.write_run_files(run_dir)
            else:
                resuming.record(run_dir, start, self.changed)
                runlog.CSVLog(run_dir / "logs" / runlog.CSV_NAME).truncate_after(start)
                runlog.truncate_jsonl_after(run_dir / runlog.METRICS_JSONL, start)
        fabric.barrier()
        ctx = RunContext(cfg, data, run_dir, fabric.device)
        csv_log = runlog.CSVLog(run_dir / "logs" / runlog.CSV_NAME)
        callbacks = [cb.Logs(csv_log, run_dir, t.log_every, is_main), cb.ProgressBar(t.progress and is_main, t.log_every),
                     cb.Checkpoints(run_dir, t.ckpt_every), cb.Evaluation(ctx, t.eval_every), cb.Signals(t.log_every)]
        if t.max_seconds is not None:
            callbacks.append(cb.TimeBudget(t.max_seconds, t.log_every))
        loop = Loop(fabric, task, module, state, callbacks, cfg, run_dir)
        try:
            end = loop.run(start, t.steps)
            if loop.stop_reason and loop.stop_reason.startswith("interrupted"):
                self._interrupted(loop, end)
            return self._finish(loop, task, ctx, start, end)
        except BaseException as e:
            if is_main:
                record_failure(run_dir, e, loop.kept(), self.kind.resume_command(run_dir))
            raise

    def _interrupted(self, loop: Loop, end: int) -> None:
        kept = loop.kept()
        where = (f"{kept}; continue with `{self.kind.resume_command(self.run_dir)}`" if kept else
                 "no checkpoint had been written yet: start the run again")
        sigterm = "SIGTERM" in (loop.stop_reason or "")
        raise TrainingInterrupted(f"training {loop.stop_reason} at step {end}: {where}",
                                  exit_code=128 + (signal.SIGTERM if sigterm else signal.SIGINT))

    def _finish(self, loop: Loop, task, ctx: RunContext, start: int, end: int) -> dict:
        t, fabric, run_dir = self.cfg.trainer, self.fabric, self.run_dir
        ips = loop.images_per_second(end)
        wall = time.perf_counter() - loop.wall0
        metrics, pictures, report = None, [], None
        if fabric.global_rank == 0:
            metrics = task.evaluate(ctx, end, final=True)
            if t.pictures:
                if t.progress:
                    print(f"pictures: {run_dir / 'pictures'}", flush=True)
                pictures = task.pictures(ctx, run_dir / "logs" / runlog.CSV_NAME)
        fabric.barrier()
        summary = {"run_dir": str(run_dir), "steps": end, "start_step": start, "final_terms": loop.scalars,
                   "metrics": metrics, "images_per_second": ips, "wall_seconds": wall,
                   "checkpoint": str(run_dir / "checkpoints" / "last"), "pictures": [str(p) for p in pictures],
                   "world_size": fabric.world_size, "device": str(fabric.device),
                   "precision": resolve_precision(t.precision, t.accelerator),
                   "cpu_threads": torch.get_num_threads()}  # what trainer.threads gave (auto: the free cores)
        if fabric.global_rank == 0:
            (run_dir / FAILURE).unlink(missing_ok=True)  # an earlier attempt's failure: this one finished
            runlog.write_json(run_dir / "summary.json", summary)
            if t.report:
                from untwine.report import write_report
                report = write_report([run_dir])
                summary["report"] = str(report)
                runlog.write_json(run_dir / "summary.json", summary)
        return summary


__all__ = ["RUN_DIR_ENV", "TrainingInterrupted", "default_run_dir", "train"]
