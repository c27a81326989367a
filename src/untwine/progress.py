"""Live progress on rank 0 and the clock of training steps (no torch, no training loop: the
tabular stage-2 loop uses it too)."""
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
    of the run, since a bar's redraws become garbage there."""

    def __init__(self, enabled: bool, total: int, start: int, stream=None):
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
