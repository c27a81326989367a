"""What happens around the steps: logs (CSV, TensorBoard), progress, checkpoints, periodic
evaluation, the time budget and SIGINT/SIGTERM. Each callback sees the loop (`loop.scalars`, the
last terms read; `loop.task`, `loop.state`, `loop.fabric`) and is asked, at each step:
`wants_terms` (read the terms after this step), `busy` (pause the throughput clock), `on_step_end`,
and before each step `should_stop` (a reason stops the loop; then every callback's `on_stop`).

A checkpoint is written only after the same checks wherever it comes from (every ckpt_every
steps, the end, the time budget, a signal): finite weights, finite optimiser state, a finite loss
at the next step (so that a resumed run can take that step), and DDP ranks that agree.
"""
from __future__ import annotations

import signal
import threading
import time

from untwine.train import logging as runlog
from untwine.train.checkpoint import save_checkpoint
from untwine.train.loop import fmt
from untwine.train.progress import Progress


class Callback:
    def on_train_start(self, loop) -> None: ...
    def wants_terms(self, loop, done: int) -> bool: return False
    def busy(self, loop, done: int) -> bool: return False
    def on_step_end(self, loop, done: int) -> None: ...
    def should_stop(self, loop, step: int) -> str | None: return None
    def on_stop(self, loop, step: int) -> None: ...
    def on_train_end(self, loop) -> None: ...


def _every(done: int, every: int) -> bool:
    return every > 0 and done % every == 0


class Logs(Callback):
    """RUN/logs/train.csv and TensorBoard (rank 0): step, the terms, the task's extras, the first lr."""

    def __init__(self, csv_log: runlog.CSVLog, run_dir, every: int, enabled: bool):
        self.csv_log, self.every, self.enabled, self.tb = csv_log, every, enabled, None
        self.run_dir = run_dir

    def on_train_start(self, loop) -> None:
        if self.enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(log_dir=str(self.run_dir / "logs" / "tensorboard"))
            except ImportError:  # tensorboard is a dependency; tolerate its absence in stripped installs
                self.tb = None

    def wants_terms(self, loop, done):
        # the last step too: a run shorter than log_every still has its final row (and curves)
        return _every(done, self.every) or done == loop.end

    busy = wants_terms

    def on_step_end(self, loop, done):
        if not self.enabled or not self.wants_terms(loop, done):
            return
        lr = loop.optimizers[0].param_groups[0]["lr"] if loop.optimizers else None
        row = {"step": done, **loop.scalars, **loop.task.log_extras(), "lr": lr}
        self.csv_log.write(row)
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and v is not None:
                    self.tb.add_scalar(f"train/{k}", v, done)

    def on_train_end(self, loop):
        self.csv_log.close()
        if self.tb is not None:
            self.tb.close()


class ProgressBar(Callback):
    def __init__(self, enabled: bool, log_every: int):
        self.enabled, self.every = enabled, max(1, min(log_every, 10))
        self.bar = None

    def on_train_start(self, loop):
        self.bar = Progress(self.enabled, loop.end, loop.start)

    def wants_terms(self, loop, done):
        return done % self.every == 0 or done == loop.end

    def on_step_end(self, loop, done):
        if self.wants_terms(loop, done):
            s, extras = loop.scalars, loop.task.log_extras()
            self.bar.update(done, {"loss": s.get("loss"), "recon": s.get("recon"), "kl": s.get("kl"),
                                   "beta": extras.get("beta"), "C": extras.get("set_point"),
                                   "img/s": loop.images_per_second(done)})

    def on_train_end(self, loop):
        if self.bar is not None:
            self.bar.close()


class Checkpoints(Callback):
    def __init__(self, run_dir, every: int):
        self.run_dir, self.every = run_dir, every
        self.saved: int | None = None

    def _due(self, loop, done):
        return _every(done, self.every) or done == loop.end

    wants_terms = _due
    busy = _due

    def on_step_end(self, loop, done):
        if self._due(loop, done):
            self.save(loop, done)

    def on_stop(self, loop, step):
        if step > loop.start:
            self.save(loop, step)

    def save(self, loop, step: int) -> None:
        state = loop.state
        bad = state.nonfinite_weights()
        if bad:
            loop.diverged(f"non-finite weights after step {step} ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}; "
                          f"the loss before the update was finite, so a gradient was not), not saved")
        bad = state.nonfinite_optimizer_state()
        if bad:
            loop.diverged(f"non-finite optimiser state after step {step} ({', '.join(bad[:3])}"
                          f"{', ...' if len(bad) > 3 else ''}: a gradient too large for its float type), not saved")
        ahead = loop.probe(step)
        if not all(v == v and abs(v) != float("inf") for v in ahead.values()):
            loop.diverged(f"the weights after step {step} give a non-finite loss at the next step ({fmt(ahead)}), "
                          f"so they were not saved")
        state.check_ranks_agree(step)
        ckpt = state.capture(step)  # on every rank: it gathers each rank's random state
        if loop.is_main:
            save_checkpoint(self.run_dir, ckpt)
        loop.fabric.barrier()
        self.saved = step


class Evaluation(Callback):
    """trainer.eval_every: the task's evaluation on rank 0 (the final one is the session's)."""

    def __init__(self, ctx, every: int):
        self.ctx, self.every = ctx, every

    def busy(self, loop, done):
        return _every(done, self.every) and done != loop.end

    def on_step_end(self, loop, done):
        if self.busy(loop, done):
            if loop.is_main:
                loop.task.evaluate(self.ctx, done, final=False)
            loop.fabric.barrier()


class TimeBudget(Callback):
    """trainer.max_seconds: stop before the step that would run past it (ranks decide together, at
    log steps)."""

    def __init__(self, max_seconds: float, log_every: int):
        self.max_seconds, self.log_every = max_seconds, log_every

    def should_stop(self, loop, step):
        over = time.perf_counter() - loop.wall0 > self.max_seconds
        if loop.fabric.world_size > 1:
            if step % self.log_every:
                return None
            over = bool(loop.fabric.broadcast(over, src=0))
        return "out of time" if over else None


class Signals(Callback):
    """SIGINT and SIGTERM stop the loop before the next step (a second one stops at once); the
    checkpoint callback then saves the step reached."""

    SIGNALS = ("SIGINT", "SIGTERM")

    def __init__(self, log_every: int):
        self.log_every, self.received, self.previous = log_every, None, {}

    def on_train_start(self, loop):
        if threading.current_thread() is not threading.main_thread():
            return
        for name in self.SIGNALS:
            sig = getattr(signal, name)
            self.previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.received is not None:  # a second signal: stop now
            self.on_train_end(None)
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def should_stop(self, loop, step):
        if loop.fabric.world_size > 1:
            if step % self.log_every:
                return None
            import torch
            flag = torch.tensor(1.0 if self.received else 0.0, device=loop.fabric.device)
            if float(loop.fabric.all_reduce(flag, reduce_op="sum")) == 0:
                return None
            self.received = self.received or "a signal on another rank"
        return f"interrupted ({self.received})" if self.received else None

    def on_train_end(self, loop):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}
