"""Hardware choices in one place: precision, CPU threads, the Fabric of a config, channels-last and
compilation of a task's networks, device synchronisation.

Precision "auto" is bf16 autocast where the device has native bf16 (measured 2.6x a float32 step
with channels-last on such a CPU), else float32 on a CPU and fp16 autocast on a GPU. Threads "auto"
are the cores that other processes leave free now, measured over a short window.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from untwine.errors import ConfigError


def cpu_has_native_bf16() -> bool:
    """True when the CPU executes bf16 matrix products natively (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:  # not Linux: do not guess
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, accelerator: str) -> str:
    """trainer.precision=auto: bf16 autocast where the device has native bf16, else float32 on a
    CPU and fp16 autocast on a GPU."""
    if precision != "auto":
        return precision
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    if accelerator in ("cpu", "auto"):
        return "bf16-mixed" if cpu_has_native_bf16() else "32-true"
    return "32-true"


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


def make_fabric(trainer_cfg):
    """Lightning Fabric for cfg.trainer (accelerator, devices, nodes, strategy, precision)."""
    from lightning.fabric import Fabric
    t = trainer_cfg
    precision = resolve_precision(t.precision, t.accelerator)
    try:
        return Fabric(accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy,
                      precision=precision, loggers=[])
    except (ValueError, RuntimeError, TypeError) as e:  # Lightning's own message says what is unavailable
        raise ConfigError(f"cannot set up trainer.accelerator={t.accelerator!r}, devices={t.devices!r}, "
                          f"strategy={t.strategy!r}, precision={precision!r}: {e}") from e


def prepare_networks(model: torch.nn.Module, compiled: list, trainer_cfg) -> torch.nn.Module:
    """channels-last memory format for the model; compile, in place (state_dict keys stay those of
    the plain model), what the task names as running each step: a module (its forward) or an
    (object, method name) pair (a multi-stage model's stage2_loss: its stage 2 has no forward)."""
    if trainer_cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if trainer_cfg.compile:
        for item in compiled:
            if isinstance(item, torch.nn.Module):
                item.compile()
            else:
                owner, name = item
                setattr(owner, name, torch.compile(getattr(owner, name)))
    return model


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Threads:
    """Context: torch threads as trainer.threads says, restored afterwards."""

    def __init__(self, setting):
        self.setting = setting

    def __enter__(self):
        self.before = torch.get_num_threads()
        threads = cpu_threads(self.setting)
        if threads is not None:
            torch.set_num_threads(threads)
        return self

    def __exit__(self, *exc):
        torch.set_num_threads(self.before)
        return False
