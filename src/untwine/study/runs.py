"""One run of a study on disk: its state, its lock, and `execute_run`, what every executor calls.

A run's state is read from its directory, never from a record the study keeps elsewhere, so that a
killed worker, a second invocation or a copy of the directory all see the truth:

    done        RUN/summary.json holds the run's final steps (the engine writes it last)
    unfinished  a checkpoint, no summary: continued from the checkpoint (exact resume)
    failed      RUN/error.json: the error of its last attempt (retried on the next `study run`)
    pending     nothing yet
    running     its lock (DIR/locks/<run>.lock) is held by a live process

The lock is an flock, released by the kernel when its holder dies: a killed worker never leaves a
run locked, and two invocations on one study directory never train one run at once.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

from untwine.io import atomic_write_bytes
from untwine.study.spec import RunPlan, run_dir

ERROR_FILE = "error.json"
SUMMARY_FILE = "summary.json"
STATES = ("done", "unfinished", "failed", "pending", "running")


class RunLock:
    """An exclusive, non-blocking flock on DIR/locks/<run>.lock (POSIX; on a cluster the study
    directory's filesystem must support flock, as NFSv4 and Lustre do)."""

    def __init__(self, study_dir: str | os.PathLike, name: str):
        self.path = Path(study_dir) / "locks" / f"{name}.lock"
        self.fd: int | None = None

    def acquire(self) -> bool:
        import fcntl
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return False
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{socket.gethostname()} {os.getpid()}\n".encode())
        self.fd = fd
        return True

    def held_elsewhere(self) -> bool:
        """Whether another process holds the lock now (a quick try, released at once)."""
        if not self.path.exists():
            return False
        if self.acquire():
            self.release()
            return False
        return True

    def release(self) -> None:
        if self.fd is not None:
            import fcntl
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def summary_of(study_dir, name: str) -> dict | None:
    return _read_json(run_dir(study_dir, name) / SUMMARY_FILE)


def error_of(study_dir, name: str) -> dict | None:
    return _read_json(run_dir(study_dir, name) / ERROR_FILE)


def is_finished(summary: dict | None, target_steps: int, time_budget: bool) -> bool:
    """A summary at the run's target steps (a run with trainer.max_seconds is finished by its summary)."""
    return summary is not None and (time_budget or int(summary.get("steps", -1)) >= target_steps)


def _has_checkpoint(path: Path) -> bool:
    return any((path / "checkpoints" / d / "state.json").is_file() for d in ("last", "last.prev"))


def run_state(study_dir, plan: RunPlan, check_lock: bool = True) -> str:
    """One of STATES for a run of the study, read from its directory (and its lock)."""
    path = run_dir(study_dir, plan.name)
    if check_lock and RunLock(study_dir, plan.name).held_elsewhere():
        return "running"
    if _finished(study_dir, plan):
        return "done"
    if (path / ERROR_FILE).is_file():
        return "failed"
    return "unfinished" if _has_checkpoint(path) else "pending"


def _finished(study_dir, plan: RunPlan) -> bool:
    summary = summary_of(study_dir, plan.name)
    if summary is None:
        return False
    steps, budget = _target(study_dir, plan)
    return is_finished(summary, steps, budget)


def _target(study_dir, plan: RunPlan) -> tuple[int, bool]:
    """(trainer.steps, has a time budget) of the run as the spec asks for it."""
    from untwine.train.config import load_config
    cfg = load_config(plan.preset, plan.overrides)
    return cfg.trainer.steps, cfg.trainer.max_seconds is not None


def record_failure(study_dir, name: str, message: str, kind: str = "error", trace: str | None = None) -> None:
    record = {"run": name, "kind": kind, "error": message,
              "time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "host": socket.gethostname(),
              "pid": os.getpid()}
    if trace:
        record["traceback"] = trace
    path = run_dir(study_dir, name)
    path.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path / ERROR_FILE, (json.dumps(record, indent=1) + "\n").encode())


def execute_run(study_dir: str | os.PathLike, plan: RunPlan | dict) -> dict:
    """Train one run of a study, or continue it from its checkpoint, or skip it when it is done.

    Never raises for the run's own failure: the error goes to RUN/error.json and the result says
    "failed", so that the study goes on. Returns {"name", "status": done|failed|busy, "trained": bool,
    "seconds", "error"}."""
    plan = RunPlan(**plan) if isinstance(plan, dict) else plan
    t0 = time.perf_counter()
    result = {"name": plan.name, "status": "failed", "trained": False, "seconds": 0.0, "error": None}
    lock = RunLock(study_dir, plan.name)
    if not lock.acquire():
        result.update(status="busy", error="another process holds the run's lock (it is being trained)")
        return result
    try:
        if _finished(study_dir, plan):
            result["status"] = "done"
            return result
        for first in plan.needs:
            if not _finished(study_dir, _stage1_plan(study_dir, first, plan)):
                message = f"its stage-1 run {first!r} has not finished ({(error_of(study_dir, first) or {}).get('error') or 'no summary.json'})"
                record_failure(study_dir, plan.name, message, kind="dependency")
                result["error"] = message
                return result
        _train(study_dir, plan)
        (run_dir(study_dir, plan.name) / ERROR_FILE).unlink(missing_ok=True)
        result.update(status="done", trained=True)
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # noqa: BLE001 - any failure of one run is recorded; the study goes on
        from untwine.train.session import TrainingInterrupted
        kind = "interrupted" if isinstance(e, TrainingInterrupted) else "error"
        message = f"{type(e).__name__}: {e}"
        record_failure(study_dir, plan.name, message, kind=kind, trace=traceback.format_exc())
        result["error"] = message
        if isinstance(e, SystemExit):
            raise
    finally:
        lock.release()
        result["seconds"] = time.perf_counter() - t0
    return result


def _stage1_plan(study_dir, name: str, plan: RunPlan) -> RunPlan:
    from untwine.study.spec import Study
    return Study.from_dict(json.loads((Path(study_dir) / "study.json").read_text())).run(name)


def _train(study_dir, plan: RunPlan) -> None:
    from untwine.train.session import train
    path = run_dir(study_dir, plan.name)
    cfg = plan.config(study_dir)
    resume = _has_checkpoint(path)
    if not resume and path.exists():
        shutil.rmtree(path)  # killed before its first checkpoint: nothing to continue, start clean
    # resume from the checkpoint with the spec's config: unchanged settings record nothing, an
    # extended trainer.steps (after --force) goes to the run's config.history.yaml
    train(cfg, run_dir=path, resume=resume)


__all__ = ["RunLock", "STATES", "error_of", "execute_run", "record_failure", "run_state", "summary_of"]
