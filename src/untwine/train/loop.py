"""The training loop: a batch, the task's step, ONE backward of the summed losses, a finite check,
every optimiser steps, the callbacks.

One backward of the sum, not one per optimiser: the losses reach disjoint parameter groups (checked
before the first step), and under DDP every gradient bucket is then all-reduced before any
optimiser steps (two backwards let the first step run on unreduced gradients: FactorVAE's ranks
drifted 1e-3 apart in ten steps). Any number of groups: the loop never names one.

The terms are read as floats (one device sync, averaged over ranks) every step on a CPU or where
the task's controller needs them, else only where a callback asks for them; the NaN guard checks
the losses and the gradients there. Callbacks (logs, progress, checkpoints, evaluation, the time
budget, signals) see the loop and act after each step; one may stop it before a step.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Mapping

import torch

from untwine.errors import CheckpointError, ConfigError
from untwine.train.hardware import synchronize
from untwine.train.progress import Clock
from untwine.train.state import NonFiniteLossError, TrainState, gradients_finite

WARMUP_STEPS = 10   # steps excluded from images/s (allocation, compilation, caches)


def scalars(terms: Mapping[str, torch.Tensor], fabric=None) -> dict[str, float]:
    """All terms as floats, with one device sync; averaged over ranks under DDP, so that every
    rank's controller sees the same KL and sets the same beta."""
    if not terms:
        return {}
    keys = list(terms)
    values = torch.stack([torch.as_tensor(terms[k]).detach().float().reshape(()) for k in keys])
    if fabric is not None and fabric.world_size > 1:
        values = fabric.all_reduce(values, reduce_op="mean")
    return dict(zip(keys, values.tolist()))


def fmt(terms: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in terms.items())


def check_disjoint(groups: Mapping) -> None:
    """The parameter groups must not share a parameter: one backward of the summed losses would
    otherwise hand a shared parameter the gradient of every loss."""
    seen: dict[int, str] = {}
    for name, group in groups.items():
        for p in group.params:
            if id(p) in seen and seen[id(p)] != name:
                raise ConfigError(f"parameter groups {seen[id(p)]!r} and {name!r} share a parameter of shape "
                                  f"{tuple(p.shape)}; a task's groups must be disjoint")
            seen[id(p)] = name


class Loop:
    def __init__(self, fabric, task, module, state: TrainState, callbacks: list, cfg, run_dir: Path):
        self.fabric, self.task, self.module, self.state = fabric, task, module, state
        self.callbacks, self.cfg, self.run_dir = callbacks, cfg, Path(run_dir)
        self.optimizers = list(state.optimizers.values())
        self.scaler = state.scaler   # fp16: one GradScaler update a step, whatever the number of optimisers
        self.params = [p for g in state.groups.values() for p in g.params]
        self.every_step = task.observe_every_step or fabric.device.type == "cpu"
        self.is_main = fabric.global_rank == 0
        self.scalars: dict[str, float] = {}
        self.clock = Clock()
        self.grad_ok: torch.Tensor | None = None
        self.stop_reason: str | None = None

    def run(self, start: int, end: int) -> int:
        """Steps start..end-1; returns the step reached (earlier when a callback stopped the loop)."""
        check_disjoint(self.state.groups)
        self.start, self.end = start, end
        self.warm = min(WARMUP_STEPS, (end - start) // 5)
        self.wall0 = time.perf_counter()
        for cb in self.callbacks:
            cb.on_train_start(self)
        try:
            for step in range(start, end):
                reason = next((r for r in (cb.should_stop(self, step) for cb in self.callbacks) if r), None)
                if reason:
                    self.stop_reason, self.end = reason, step
                    for cb in self.callbacks:
                        cb.on_stop(self, step)
                    break
                if step == start + self.warm:
                    synchronize(self.fabric.device)
                    self.clock.start()
                out = self.train_step(step)
                done = step + 1
                if self.every_step or any(cb.wants_terms(self, done) for cb in self.callbacks):
                    self.observe(step, out)
                busy = any(cb.busy(self, done) for cb in self.callbacks)
                if busy:
                    synchronize(self.fabric.device)
                    self.clock.pause()  # logging, checkpoints and evaluation are not training throughput
                for cb in self.callbacks:
                    cb.on_step_end(self, done)
                if busy:
                    self.clock.resume()
            synchronize(self.fabric.device)
            self.clock.pause()
        finally:
            for cb in self.callbacks:
                cb.on_train_end(self)
        return self.end

    def train_step(self, step: int):
        batch = self.task.prepare_batch(next(self.state.sampler), self.cfg.trainer.channels_last)
        out = self.task.step(self.module, batch, step)
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        self.fabric.backward(sum(out.losses.values()))
        if self.scaler is None:
            ok = gradients_finite(self.params)
            self.grad_ok = ok if self.grad_ok is None else self.grad_ok & ok
            for opt in self.optimizers:
                opt.step()
        else:
            # every optimiser unscales with the step's one scale (and skips the step on an overflow,
            # which a scaler expects: no gradient check here), then ONE update: Fabric's plugin updated
            # after each optimiser, so the second one unscaled by a changed scale (2x after an overflow)
            for opt in self.optimizers:
                self.scaler.step(getattr(opt, "optimizer", opt))
            self.scaler.update()
        return out

    def observe(self, step: int, out) -> None:
        """The step's terms as floats (ranks averaged), the NaN guard and the task's after-step."""
        self.scalars = scalars(out.terms, self.fabric)
        if not all(math.isfinite(v) for v in self.scalars.values()):
            self.diverged(f"non-finite loss at step {step} ({fmt(self.scalars)})")
        if self.grad_ok is not None:
            ok = self.grad_ok
            if self.fabric.world_size > 1:
                ok = self.fabric.all_reduce(ok.float(), reduce_op="mean") == 1.0
            if not bool(ok):
                self.diverged(f"non-finite gradient at step {step} (the loss was finite: {fmt(self.scalars)})")
            self.grad_ok = None
        self.task.after_step(self.scalars, step)

    @torch.no_grad()
    def probe(self, step: int) -> dict[str, float]:
        """The terms that step index `step` would compute with the weights as they are: the next batch,
        the RNG as it stands, forked, so that nothing of the training stream moves."""
        sampler, device = self.state.sampler, self.fabric.device
        saved = sampler.state_dict()
        try:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), self.fabric.autocast():
                batch = self.task.prepare_batch(next(sampler), self.cfg.trainer.channels_last)
                out = self.task.step(self.task.module, batch, step)
        finally:
            sampler.load_state_dict(saved)
        return scalars(out.terms, self.fabric)

    def images_per_second(self, done: int) -> float | None:
        return self.clock.rate((done - self.start - self.warm) * self.cfg.optim.batch_size * self.fabric.world_size)

    def kept(self) -> str | None:
        from untwine.train.checkpoint import load_checkpoint
        try:
            return f"the last good checkpoint (step {load_checkpoint(self.run_dir).step}) is kept in " \
                   f"{self.run_dir / 'checkpoints' / 'last'}"
        except CheckpointError:
            return None

    def diverged(self, what: str) -> None:
        kept = self.kept()
        advice = "Lower optim.lr, check the data range ([0, 1] for a Bernoulli likelihood) or the objective's parameters"
        if kept is None:
            raise NonFiniteLossError(f"{what}; training stopped and no checkpoint had been written yet. {advice}, "
                                     f"then start the run again (in a new --run-dir, or after removing {self.run_dir})")
        raise NonFiniteLossError(f"{what}; training stopped and {kept}. {advice}, then resume with "
                                 f"`untwine train --resume {self.run_dir}`")
