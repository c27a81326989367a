"""Live progress and the clock of training steps. No torch and no training loop, so that every
floor can show progress: the training loop, the tabular stage 2, the metrics' encoding and scoring,
the factor classifier."""
from __future__ import annotations

import sys
import time
from typing import Mapping


class Clock:
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


class Progress:
    """A rich bar in a terminal; without one (a pipe, a log file, CI) plain lines about every 5%
    of the work, since a bar's redraws become garbage there. `label` names the work ("train",
    "encode"), `unit` what is counted ("step", "image")."""

    def __init__(self, enabled: bool, total: int, start: int = 0, stream=None, label: str = "train",
                 unit: str = "step"):
        self.enabled, self.total, self.start = enabled, total, start
        self.label, self.unit = label, unit
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
            self.progress = Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[live]}"))
            self.task = self.progress.add_task(label, total=total, completed=start, live="")
            self.progress.start()
        else:
            print(f"{label}: {unit}s {start}..{total}", file=self.stream, flush=True)

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
            print(f"{self.label}: {self.unit} {step}/{self.total} ({100 * step / max(self.total, 1):.0f}%, "
                  f"{elapsed:.0f} s)  "
                  f"{self._live(live or {})}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.enabled and self.bar:
            self.progress.stop()


class Phases:
    """Named phases of a job that has no steps to count (the metrics of an evaluation, one after
    another): a line as each begins, with how far along the job is and the seconds so far, so that
    a several-minute evaluation is never silent. In a terminal the line is a rich status spinner."""

    def __init__(self, enabled: bool, label: str, names, stream=None):
        self.enabled, self.label, self.names = enabled, label, list(names)
        self.stream = stream if stream is not None else sys.stdout
        self.t0, self.done, self.status = time.perf_counter(), 0, None
        if enabled and self.stream.isatty():
            from rich.console import Console
            self.status = Console(file=self.stream).status(f"{label}: starting")
            self.status.start()

    def begin(self, name: str) -> None:
        if not self.enabled:
            return
        self.done = self.names.index(name) if name in self.names else self.done
        text = (f"{self.label}: {name} ({self.done + 1}/{len(self.names)}, "
                f"{time.perf_counter() - self.t0:.0f} s so far)")
        if self.status is not None:
            self.status.update(text)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None
