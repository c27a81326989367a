"""Run directories and checkpoints: safetensors for tensors, JSON for everything else, never pickle.

    RUN/config.yaml                  resolved config
    RUN/checkpoints/last/            the newest complete checkpoint
        model.safetensors            VAE weights
        aux.safetensors              objective state (FactorVAE discriminator), when it has any
        optimizer.safetensors        optimiser tensors, flattened ("main.state.<param>.<key>", "aux....")
        optimizer.json               optimiser param groups and non-tensor state
        rng.safetensors              torch CPU RNG state (uint8) and CUDA RNG states
        state.json                   step, controller state, sampler state (numpy), format version
    RUN/checkpoints/last.prev/       the previous one, present only while a new one is being swapped in
    RUN/metrics.jsonl, metrics.json, logs/, pictures/

A checkpoint is written into a temporary directory (each file fsynced), then swapped in by two
renames (last -> last.prev, tmp -> last) and last.prev removed; a crash at any point leaves a complete
checkpoint under last or last.prev, and the loader takes whichever is complete.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from untwine.errors import CheckpointError

FORMAT_VERSION = 1
LAST = "last"
PREVIOUS = "last.prev"
REQUIRED_FILES = ("model.safetensors", "optimizer.safetensors", "optimizer.json", "rng.safetensors", "state.json")


@dataclass
class Checkpoint:
    """Everything needed to continue a run, as plain tensors and JSON values."""

    step: int
    model: dict[str, torch.Tensor]
    optimizers: dict[str, dict]                  # name -> torch optimizer state_dict
    aux: dict[str, torch.Tensor] = field(default_factory=dict)
    controller: dict | None = None
    sampler: dict | None = None
    rng: dict[str, torch.Tensor] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)    # JSON: e.g. images seen, wall time


# -- optimizer state <-> (tensors, JSON) -----------------------------------------------
def flatten_optimizer_state(name: str, state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split a torch optimizer state_dict into flat tensors and a JSON-ready remainder."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for pid, pstate in state_dict["state"].items():
        for key, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{name}.state.{pid}.{key}"] = value.detach().cpu().contiguous().clone()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    meta = {"param_groups": state_dict["param_groups"], "scalars": scalars,
            "tensor_keys": sorted(tensors)}
    return tensors, meta


def unflatten_optimizer_state(name: str, tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    prefix = f"{name}.state."
    for key in meta["tensor_keys"]:
        if key not in tensors:
            raise CheckpointError(f"optimizer tensor {key!r} listed in optimizer.json is missing from "
                                  f"optimizer.safetensors; the checkpoint is incomplete")
        pid, _, sub = key[len(prefix):].partition(".")
        state.setdefault(int(pid), {})[sub] = tensors[key]
    for pid, values in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


# -- file helpers -------------------------------------------------------------------------
def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1, allow_nan=True))
    _fsync_file(path)


def _write_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    _fsync_file(path)


def save_checkpoint(run_dir: str | os.PathLike, ckpt: Checkpoint) -> Path:
    """Write `ckpt` as RUN/checkpoints/last, atomically; returns its path."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    # mkdtemp makes the directory 0700: give it the mode of every other file of the run (the
    # umask's), so colleagues on a shared cluster can read checkpoints as they read the logs
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)
    try:
        _write_tensors(tmp / "model.safetensors", ckpt.model, {"step": str(ckpt.step)})
        if ckpt.aux:
            _write_tensors(tmp / "aux.safetensors", ckpt.aux)
        opt_tensors: dict[str, torch.Tensor] = {}
        opt_meta: dict[str, dict] = {}
        for name, sd in ckpt.optimizers.items():
            t, m = flatten_optimizer_state(name, sd)
            opt_tensors.update(t)
            opt_meta[name] = m
        _write_tensors(tmp / "optimizer.safetensors", opt_tensors)
        _write_json(tmp / "optimizer.json", opt_meta)
        _write_tensors(tmp / "rng.safetensors", ckpt.rng)
        # state.json last: its presence marks the temp directory complete
        _write_json(tmp / "state.json", {"format": FORMAT_VERSION, "step": ckpt.step, "controller": ckpt.controller,
                                         "sampler": ckpt.sampler, "extra": ckpt.extra})
        for f in tmp.iterdir():  # safetensors writes its files 0600
            f.chmod(0o666 & ~umask)
        _fsync_dir(tmp)
        last, prev = root / LAST, root / PREVIOUS
        if prev.exists():
            # a previous swap was interrupted; `last` is complete only if it exists
            if last.exists():
                shutil.rmtree(prev)
            else:
                prev.rename(last)
        if last.exists():
            last.rename(prev)
        tmp.rename(last)
        _fsync_dir(root)
        if prev.exists():
            shutil.rmtree(prev)
    except BaseException:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root / LAST


def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    """The complete checkpoint of a run: checkpoints/last, or last.prev after an interrupted swap."""
    root = Path(run_dir) / "checkpoints"
    for name in (LAST, PREVIOUS):
        if (root / name / "state.json").is_file():
            return root / name
    if not Path(run_dir).is_dir():
        raise CheckpointError(f"run directory {str(run_dir)!r} does not exist; give the directory a training run wrote")
    raise CheckpointError(f"no checkpoint in {str(root)!r}: expected {root / LAST / 'state.json'}; the run has not "
                          f"saved one yet (it saves every trainer.ckpt_every steps and at the end)")


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {str(path)!r} is missing; the checkpoint is incomplete: "
                              f"restore it or start the run again")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint file {str(path)!r} is corrupt or truncated ({e}); restore it or "
                              f"start the run again") from e


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {str(path)!r} is missing; the checkpoint is incomplete: "
                              f"restore it or start the run again")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint file {str(path)!r} is not valid JSON ({e}); restore it or "
                              f"start the run again") from e


def load_model_weights(run_dir: str | os.PathLike) -> tuple[dict[str, torch.Tensor], int]:
    """Only the VAE weights and the step (for evaluation and pictures)."""
    d = checkpoint_dir(run_dir)
    state = _read_json(d / "state.json")
    return _read_tensors(d / "model.safetensors"), int(state["step"])


def load_checkpoint(run_dir: str | os.PathLike) -> Checkpoint:
    d = checkpoint_dir(run_dir)
    state = _read_json(d / "state.json")
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"checkpoint file {str(d / 'state.json')!r} has no 'step'; it is not an untwine checkpoint")
    if state.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {str(d)!r} has format {state.get('format')!r}; this untwine reads format "
                              f"{FORMAT_VERSION}")
    opt_tensors = _read_tensors(d / "optimizer.safetensors")
    opt_meta = _read_json(d / "optimizer.json")
    try:
        optimizers = {name: unflatten_optimizer_state(name, opt_tensors, meta) for name, meta in opt_meta.items()}
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"checkpoint file {str(d / 'optimizer.json')!r} is malformed ({e!r}); restore it or "
                              f"start the run again") from e
    aux_path = d / "aux.safetensors"
    return Checkpoint(
        step=int(state["step"]),
        model=_read_tensors(d / "model.safetensors"),
        optimizers=optimizers,
        aux=_read_tensors(aux_path) if aux_path.exists() else {},
        controller=state.get("controller"),
        sampler=state.get("sampler"),
        rng=_read_tensors(d / "rng.safetensors"),
        extra=state.get("extra") or {},
    )


# -- RNG -------------------------------------------------------------------------------------
def capture_torch_rng() -> dict[str, torch.Tensor]:
    """torch's CPU generator state (uint8) and, where present, each CUDA device's."""
    out = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"torch_cuda_{i}"] = s
    return out


def restore_torch_rng(states: dict[str, torch.Tensor]) -> None:
    if "torch_cpu" not in states:
        raise CheckpointError("rng.safetensors has no 'torch_cpu' state; the checkpoint is incomplete")
    torch.set_rng_state(states["torch_cpu"].to(torch.uint8))
    cuda = sorted((k for k in states if k.startswith("torch_cuda_")), key=lambda k: int(k.rsplit("_", 1)[1]))
    if cuda and torch.cuda.is_available():
        n = torch.cuda.device_count()
        torch.cuda.set_rng_state_all([states[k].to(torch.uint8) for k in cuda][:n])
