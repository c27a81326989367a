"""How long a table fit trains: a budget from the table's rows and width, and early stopping on a
validation split of the training rows.

    steps = stage1_steps(rows=27_400, features=140, batch_size=256)     # 11,774 (Adult's size)
    stop = EarlyStopping(patience=3)
    stop.record(500, 1.92); ...; stop.should_stop()

The fixed budget it replaces (12,000 stage-1 steps whatever the table) took 451 CPU seconds on a
340-row table against TVAE's 13 (issue 24). TVAE trains 300 epochs, so its time grows with the rows;
this budget trains a pass over the training rows per transformed feature (30 to 110 passes: a
narrow table learns in fewer), at least a floor that grows with the width
(a wide table has more spans to learn than a few hundred steps teach) and at most MAX_STEPS (Adult's
measured budget: beyond Adult's size more steps buy little, and TVAE's 300 epochs keep growing).
Early stopping then ends a fit once the validation loss stops improving (small tables memorise
before their budget is spent) and keeps the best weights.
"""
from __future__ import annotations

import math

# passes over the training rows: one per transformed feature, 30 to 110. Adult (over 110 features):
# 110, its 27,500 training rows -> 11,800 steps of 256, near its measured 12,000. A narrow table learns
# in fewer passes: fair (54 features) stopped early at its best after 39 passes of its 110, and
# randhie's 110 passes took 1.24x TVAE's CPU time (BENCHMARKS.md, issue 24)
EPOCHS_PER_FEATURE, MIN_EPOCHS, MAX_EPOCHS = 1, 30, 110
MIN_STEPS = 200       # below TVAE's 300 epochs of one batch on a table of <= 500 rows (its CPU time there)
STEPS_PER_FEATURE = 4  # the floor grows with the transformed width: 100 features -> at least 400 steps
MAX_STEPS = 12_000    # Adult's budget (BENCHMARKS.md, "Adult: more steps and a finer code prior")
STAGE2_SHARE = 8      # stage 2 takes 1/8 of stage 1's steps (Adult: 1,500 of 12,000) ...
STAGE2_MIN, STAGE2_MAX = 100, 1_500   # ... within these
EVALUATIONS = 20      # validation checks over a budget (every 5% of it)
MIN_EVERY = 50        # steps between two checks at least
VALIDATION_MIN_ROWS = 50   # fewer training rows: no validation split, no early stopping
VALIDATION_MAX_ROWS = 5_000


def stage1_steps(rows: int, features: int, batch_size: int) -> int:
    """Stage-1 steps for `rows` training rows of `features` transformed columns: one pass over the rows
    (in batches of min(batch_size, rows)) per feature, MIN_EPOCHS to MAX_EPOCHS passes; at least
    max(MIN_STEPS, STEPS_PER_FEATURE * features) steps, at most MAX_STEPS."""
    per_epoch = rows / max(1, min(batch_size, rows))
    epochs = min(MAX_EPOCHS, max(MIN_EPOCHS, EPOCHS_PER_FEATURE * int(features)))
    floor = max(MIN_STEPS, STEPS_PER_FEATURE * int(features))
    return int(min(MAX_STEPS, max(floor, math.ceil(epochs * per_epoch))))


def stage2_steps(stage1: int) -> int:
    """Stage-2 steps for a stage 1 of `stage1` steps."""
    return int(min(STAGE2_MAX, max(STAGE2_MIN, round(stage1 / STAGE2_SHARE))))


def evaluation_every(steps: int) -> int:
    """Steps between two validation checks of a budget of `steps`."""
    return int(min(steps, max(MIN_EVERY, math.ceil(steps / EVALUATIONS))))


def validation_rows(rows: int, validation=None) -> int:
    """Training rows set aside for early stopping: `validation` rows (an int) or share (a float), or by
    default 10% of the rows, at least min(100, 20%), at most VALIDATION_MAX_ROWS; none under
    VALIDATION_MIN_ROWS rows. Never the rows a fit holds out for its privacy check (those are gone
    before this split is drawn)."""
    if validation is None:
        if rows < VALIDATION_MIN_ROWS:
            return 0
        return int(min(VALIDATION_MAX_ROWS, max(round(0.1 * rows), min(100, rows // 5))))
    return int(round(validation * rows)) if isinstance(validation, float) else int(validation)


class EarlyStopping:
    """Validation losses at steps, the best one, and whether to stop: after `patience` checks in a row
    that did not improve on the best by more than `min_delta` (relative to max(1, |best|))."""

    def __init__(self, patience: int = 3, min_delta: float = 1e-3, evaluations=()):
        self.patience, self.min_delta = int(patience), float(min_delta)
        self.evaluations: list[tuple[int, float]] = []
        for step, loss in evaluations:
            self.record(step, loss)

    def record(self, step: int, loss: float) -> bool:
        """Add a check; True when it is the new best."""
        best = self.best_loss
        self.evaluations.append((int(step), float(loss)))
        return best is None or self._better(loss, best)

    def _better(self, loss: float, best: float) -> bool:
        return math.isfinite(loss) and loss < best - self.min_delta * max(1.0, abs(best))

    @property
    def best(self) -> tuple[int, float] | None:
        best = None
        for step, loss in self.evaluations:
            if best is None or self._better(loss, best[1]):
                best = (step, loss)
        return best

    @property
    def best_loss(self) -> float | None:
        return None if self.best is None else self.best[1]

    @property
    def best_step(self) -> int | None:
        return None if self.best is None else self.best[0]

    def should_stop(self) -> bool:
        best = self.best
        if best is None:
            return False
        since = sum(1 for step, _ in self.evaluations if step > best[0])
        return since >= self.patience

    def state(self) -> dict:
        return {"patience": self.patience, "min_delta": self.min_delta,
                "evaluations": [[s, v] for s, v in self.evaluations]}
