"""Where a study's runs execute: a local pool of worker processes (the default, no service to
start) or a Ray cluster (`ray.init(address=...)`, one task per run with its CPU/GPU request).

Both call `untwine.study.runs.execute_run` for each run and report each result as it comes; a
stage-2 run starts only once the stage-1 runs it names have finished (it fails, recorded, when one
of them failed). An executor never stops the study for one run's failure.

    LocalPool(workers=None).run(study_dir, plans, on_result)   # workers: from the machine's cores
    RayExecutor(address="ray://head:10001").run(study_dir, plans, on_result)
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Sequence

from untwine.errors import ConfigError
from untwine.study.runs import record_failure
from untwine.study.spec import RunPlan

EXECUTORS = ("local", "ray")
BUSY_EXIT = 75  # the worker found the run locked by another process (EX_TEMPFAIL)

OnResult = Callable[[dict], None]


def _dependency_failed(plan: RunPlan, results: dict[str, dict]) -> str | None:
    bad = [n for n in plan.needs if n in results and results[n]["status"] != "done"]
    if not bad:
        return None
    return f"its stage-1 run {bad[0]!r} did not finish ({results[bad[0]].get('error') or results[bad[0]]['status']})"


def gpu_count() -> int:
    try:
        import torch
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - no usable CUDA: no GPU slots
        return 0


class LocalPool:
    """Runs on this machine, each in its own process (`python -m untwine.study.worker`): a crash or
    an out-of-memory kill takes one run, not the study. `workers` defaults to the machine's cores
    divided by the runs' CPU request (and, for GPU runs, one run per GPU)."""

    name = "local"

    def __init__(self, workers: int | None = None):
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise ConfigError(f"--workers must be a positive integer; got {workers!r}")
        self.workers = workers
        self.procs: dict[str, subprocess.Popen] = {}
        self.lock = threading.Lock()

    def size_for(self, plans: Sequence[RunPlan]) -> int:
        if self.workers is not None:
            return self.workers
        cpus = max((p.cpus for p in plans), default=1.0)
        size = max(1, int((os.cpu_count() or 1) // max(cpus, 1.0)))
        if any(p.gpus > 0 for p in plans):
            size = min(size, max(1, gpu_count()))
        return size

    def run(self, study_dir: Path, plans: Sequence[RunPlan], on_result: OnResult) -> None:
        study_dir = Path(study_dir).resolve()
        size = self.size_for(plans)
        free_gpus = list(range(gpu_count())) if any(p.gpus > 0 for p in plans) else []
        pending = list(plans)
        ours = {p.name for p in plans}
        results: dict[str, dict] = {}
        running: dict[Future, tuple[RunPlan, list[int]]] = {}
        with ThreadPoolExecutor(max_workers=size, thread_name_prefix="untwine-study") as pool:
            try:
                while pending or running:
                    for plan in list(pending):
                        if len(running) >= size:
                            break
                        if any(n in ours and n not in results for n in plan.needs):
                            continue  # its stage 1 is still to come
                        pending.remove(plan)
                        why = _dependency_failed(plan, results)
                        if why:
                            record_failure(study_dir, plan.name, why, kind="dependency")
                            results[plan.name] = {"name": plan.name, "status": "failed", "trained": False,
                                                  "seconds": 0.0, "error": why}
                            on_result(results[plan.name])
                            continue
                        gpus = [free_gpus.pop(0)] if plan.gpus > 0 and free_gpus else []
                        running[pool.submit(self._one, study_dir, plan, gpus)] = (plan, gpus)
                    if not running:
                        continue
                    done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                    for fut in done:
                        plan, gpus = running.pop(fut)
                        free_gpus.extend(gpus)
                        results[plan.name] = fut.result()
                        on_result(results[plan.name])
            except BaseException:
                self.stop()
                raise

    def stop(self) -> None:
        """SIGTERM to every running worker: the engine checkpoints the step reached and exits."""
        with self.lock:
            procs = list(self.procs.values())
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=120)
            except subprocess.TimeoutExpired:
                p.kill()

    def _one(self, study_dir: Path, plan: RunPlan, gpus: list[int]) -> dict:
        log = study_dir / "logs" / f"{plan.name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpus))
        fd, out = tempfile.mkstemp(prefix=f".{plan.name}.", suffix=".json", dir=study_dir / "logs")
        os.close(fd)
        try:
            with open(log, "ab") as fh:
                fh.write(f"\n== untwine study worker for {plan.name} on {socket.gethostname()}\n".encode())
                fh.flush()
                proc = subprocess.Popen([sys.executable, "-m", "untwine.study.worker", str(study_dir), plan.name, out],
                                        stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
                with self.lock:
                    self.procs[plan.name] = proc
                code = proc.wait()
                with self.lock:
                    self.procs.pop(plan.name, None)
            try:
                result = json.loads(Path(out).read_text())
            except (OSError, ValueError):
                result = None
        finally:
            Path(out).unlink(missing_ok=True)
        if result is None or code < 0:
            what = (f"the run's process was killed by signal {-code} ({signal.Signals(-code).name})" if code < 0
                    else f"the run's process exited with code {code} without a result")
            record_failure(study_dir, plan.name, f"{what}; its log: {log}", kind="killed")
            result = {"name": plan.name, "status": "failed", "trained": False, "seconds": 0.0, "error": what}
        return result


def _ray_task(study_dir: str, plan: dict, *stage1_results) -> dict:
    """One run in a Ray worker; the stage-1 results are the stage-1 tasks' return values, passed so
    that Ray starts this task only after them."""
    from untwine.study.runs import execute_run
    return execute_run(study_dir, plan)


def _reachable(address: str, timeout: float = 5.0) -> str | None:
    """None when host:port of a Ray address accepts a connection, else why not."""
    target = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        return None  # not host:port ("auto", "local"): leave it to ray.init
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return None
    except OSError as e:
        return f"{type(e).__name__}: {e}"


class RayExecutor:
    """One Ray task per run, with the run's CPU and GPU request (`resources:` in the spec). The study
    directory must be on a filesystem every node sees (it holds the runs). address None: a running
    local cluster if there is one (RAY_ADDRESS), else a new local instance; "ray://host:10001" or
    "host:6379": that cluster. Ray retries a task whose worker died once; the retry resumes the run
    from its checkpoint."""

    name = "ray"

    def __init__(self, address: str | None = None, max_retries: int = 1):
        self.address, self.max_retries = address, max_retries
        self.started = False   # whether this executor connected (then it disconnects when done)

    def connect(self):
        try:
            import ray
        except ImportError:
            raise ConfigError("--executor ray needs Ray: pip install 'untwine[ray]' (or pip install ray)") from None
        if ray.is_initialized():
            return ray
        if self.address:
            why = _reachable(self.address)
            if why:
                raise ConfigError(f"cannot reach the Ray cluster at {self.address!r} ({why}); start one with "
                                  f"`ray start --head` there, or check the address (ray://HOST:10001 for a Ray "
                                  f"client, HOST:6379 on a node of the cluster)")
        try:
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ConfigError(f"cannot connect to Ray at {self.address or 'a local instance'!r}: {e}") from None
        self.started = True
        return ray

    def run(self, study_dir: Path, plans: Sequence[RunPlan], on_result: OnResult) -> None:
        ray = self.connect()
        study_dir = str(Path(study_dir).resolve())  # workers do not share the driver's working directory
        task = ray.remote(_ray_task)
        refs, names = {}, {}
        for plan in plans:  # a stage-2 method comes after its stage-1 method in the spec
            deps = [refs[n] for n in plan.needs if n in refs]
            ref = task.options(num_cpus=plan.cpus, num_gpus=plan.gpus, max_retries=self.max_retries,
                               name=f"untwine-study:{plan.name}").remote(study_dir, asdict(plan), *deps)
            refs[plan.name], names[ref] = ref, plan.name
        pending = list(refs.values())
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    name = names[ref]
                    try:
                        result = ray.get(ref)
                    except Exception as e:  # noqa: BLE001 - a worker that died twice, a lost node
                        message = f"Ray task failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                        record_failure(study_dir, name, message, kind="ray")
                        result = {"name": name, "status": "failed", "trained": False, "seconds": 0.0,
                                  "error": message}
                    on_result(result)
        except BaseException:
            for ref in pending:
                ray.cancel(ref)
            raise
        finally:
            if self.started:
                ray.shutdown()
                self.started = False


def make_executor(kind: str = "local", address: str | None = None, workers: int | None = None):
    if kind == "local":
        if address:
            raise ConfigError("--address is for --executor ray; the local pool needs none")
        return LocalPool(workers)
    if kind == "ray":
        if workers is not None:
            raise ConfigError("--workers sizes the local pool; with Ray each run asks for its resources: "
                              "set resources: {cpus: N, gpus: M} in the spec")
        return RayExecutor(address)
    raise ConfigError(f"unknown executor {kind!r}; choose one of {list(EXECUTORS)}")


__all__ = ["EXECUTORS", "LocalPool", "RayExecutor", "make_executor"]
