"""`run_study`: read and check a spec, claim the study directory, send the runs that are not done
to an executor, and record what happened.

    DIR/study.yaml       the spec as given          DIR/study.json   the expanded runs and fingerprint
    DIR/runs/<run>/      one engine run each         DIR/logs/<run>.log   a local worker's output
    DIR/locks/<run>.lock the run's lock              DIR/invocations.jsonl   one line per `study run`
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping

import yaml

from untwine.errors import ConfigError
from untwine.io import atomic_write_bytes
from untwine.study.executors import make_executor
from untwine.study.runs import run_state
from untwine.study.spec import Study, load_study, read_spec

STUDY_JSON = "study.json"
STUDY_YAML = "study.yaml"
INVOCATIONS = "invocations.jsonl"


def read_study(study_dir: str | os.PathLike) -> Study:
    path = Path(study_dir) / STUDY_JSON
    if not path.is_file():
        raise ConfigError(f"{str(study_dir)!r} is not a study directory (no {STUDY_JSON}); create one with "
                          f"`untwine study run SPEC --out {study_dir}`")
    try:
        return Study.from_dict(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{str(path)!r} is damaged ({type(e).__name__}: {e}); run the spec again with --force") from e


def claim(study: Study, study_dir: Path, force: bool = False) -> None:
    """Write the study's spec and runs into DIR, refusing a directory of another spec unless force."""
    path = study_dir / STUDY_JSON
    if path.is_file() and not force:
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = {}
        if old.get("fingerprint") != study.fingerprint:
            ours, theirs = {r.name for r in study.runs}, {r["name"] for r in old.get("runs", [])}
            diff = (f"{len(ours - theirs)} run(s) new, {len(theirs - ours)} gone" if ours != theirs
                    else "the same run names with other settings")
            raise ConfigError(f"{str(study_dir)!r} holds study {old.get('name')!r} written by a different spec "
                              f"({diff}); use another --out, or --force to adopt this spec (its runs keep their "
                              f"directories: unchanged ones are skipped or resumed, a run whose model or data "
                              f"settings changed fails with the reason)")
    study_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(study.to_dict(), indent=1) + "\n").encode())
    atomic_write_bytes(study_dir / STUDY_YAML, yaml.safe_dump(study.spec, sort_keys=False).encode())


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (a scheduler, `kill`) stops the study as Ctrl-C does: the executor passes it on to
    the running workers, which checkpoint the step reached, instead of leaving them orphaned."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Reporter:
    """A line per finished run; in a terminal also a rich bar of the runs done (untwine.progress),
    the lines printed above it. Plain lines only in a pipe or a log file."""

    def __init__(self, total: int, done_already: int, stream):
        from untwine.progress import Progress
        self.total, self.n, self.failed, self.stream = total, done_already, 0, stream
        self.bar = Progress(stream.isatty(), total, start=done_already, stream=stream, label="study", unit="run") \
            if stream.isatty() else None

    def __call__(self, result: dict) -> None:
        self.n += 1
        self.failed += result["status"] == "failed"
        what = {"done": "trained" if result.get("trained") else "done", "failed": "FAILED",
                "busy": "skipped (running elsewhere)"}.get(result["status"], result["status"])
        extra = f": {result['error']}" if result.get("error") and result["status"] != "done" else ""
        line = f"[{self.n}/{self.total}] {result['name']} {what} ({result.get('seconds', 0):.0f} s){extra}"
        if self.bar is not None:
            self.bar.progress.console.print(line, markup=False, highlight=False)
            self.bar.update(self.n, {"failed": self.failed})
        else:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_study(spec: "str | os.PathLike | Mapping", out: str | os.PathLike, executor: str = "local",
              address: str | None = None, workers: int | None = None, force: bool = False,
              quiet: bool = False) -> dict:
    """Train every run of a study that is not done (finished runs are skipped, unfinished ones
    resume from their checkpoint, failed ones are tried again); returns {"study", "results",
    "skipped", "wall_seconds", "counts"}. The spec is checked whole before any run starts."""
    study = load_study(read_spec(spec))
    runner = make_executor(executor, address, workers)  # a bad executor argument fails before DIR is touched
    study_dir = Path(out)
    claim(study, study_dir, force)
    states = {p.name: run_state(study_dir, p) for p in study.runs}
    todo = [p for p in study.runs if states[p.name] not in ("done", "running")]
    skipped = [n for n, s in states.items() if s in ("done", "running")]
    stream = open(os.devnull, "w") if quiet else sys.stdout
    results: list[dict] = []
    on_print = _Reporter(len(study.runs), len(skipped), stream)

    def on_result(result: dict) -> None:
        results.append(result)
        on_print(result)

    if not quiet:
        busy = [n for n, s in states.items() if s == "running"]
        size = f" ({runner.size_for(todo)} workers)" if hasattr(runner, "size_for") and todo else ""
        print(f"study {study.name}: {len(study.runs)} runs, {len(skipped) - len(busy)} done, "
              f"{len(busy)} running elsewhere, {len(todo)} to run on {runner.name}{size} -> {study_dir}",
              file=stream, flush=True)
    t0 = time.perf_counter()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    try:
        if todo:
            with _sigterm_as_interrupt():
                runner.run(study_dir, todo, on_result)
    finally:
        on_print.close()
    wall = time.perf_counter() - t0
    counts = {s: sum(r["status"] == s for r in results) for s in ("done", "failed", "busy")}
    counts["trained"] = sum(bool(r.get("trained")) for r in results)
    record = {"started": started, "wall_seconds": round(wall, 3), "executor": runner.name,
              "workers": runner.size_for(todo) if hasattr(runner, "size_for") and todo else None,
              "address": address, "skipped": len(skipped), **counts,
              "run_seconds": {r["name"]: round(r.get("seconds", 0.0), 3) for r in results}}
    with open(study_dir / INVOCATIONS, "a") as fh:
        fh.write(json.dumps(record) + "\n")
    if quiet:
        stream.close()
    return {"study": study, "study_dir": study_dir, "results": results, "skipped": skipped,
            "wall_seconds": wall, "counts": counts}


__all__ = ["claim", "read_study", "run_study"]
