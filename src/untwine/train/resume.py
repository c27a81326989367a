"""Resuming a run: validate first, write after.

RUN/config.yaml is the config the run started with and is never rewritten. A resume that changes
settings (`untwine train --resume RUN trainer.steps=20000 optim.lr=1e-5`) is recorded, once it has
been validated against the checkpoint, as an entry of RUN/config.history.yaml: the step it starts
at and the settings it changed. The run's config is config.yaml with the history's changes applied
in order (`run_config`). Settings that define the model, its data or its random streams cannot
change on resume; a finished run says so and how to extend it.
"""
from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from untwine.errors import CheckpointError, ConfigError
from untwine.io import atomic_write_bytes

HISTORY = "config.history.yaml"
# what the weights, the checkpointed state or the batch stream are made of
FROZEN = ("data.", "model.", "batch.", "stage1.", "stage2.", "objective.name", "controller.", "optim.batch_size",
          "trainer.seed")
IGNORED = ("run.",)   # where the run lives and its display name: not what it trains


class RunFinished(ConfigError):
    """Resuming a run that already reached its trainer.steps: nothing to train, nothing rewritten."""


def flat(cfg) -> dict[str, Any]:
    """{"trainer.steps": 40, "objective.beta": 4, ...} of a Config."""
    from untwine.train.config import config_to_dict
    return {f"{section}.{key}": value for section, values in config_to_dict(cfg).items()
            for key, value in values.items()}


def read_history(run_dir: str | os.PathLike) -> list[dict]:
    path = Path(run_dir) / HISTORY
    if not path.is_file():
        return []
    try:
        entries = yaml.safe_load(path.read_text()) or []
    except yaml.YAMLError as e:
        raise CheckpointError(f"{str(path)!r} is not valid YAML ({e}); restore it from a backup") from e
    if not isinstance(entries, list) or not all(isinstance(e, dict) and isinstance(e.get("changed"), dict)
                                                for e in entries):
        raise CheckpointError(f"{str(path)!r} must be a list of {{step, changed}} entries")
    return entries


def _overrides(changed: dict[str, Any]) -> list[str]:
    return [f"{key}={json.dumps(value)}" for key, value in changed.items()]


def run_config(run_dir: str | os.PathLike):
    """The config a run trains with now: its config.yaml and the changes of its resumes."""
    from untwine.train.config import load_config
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise CheckpointError(f"{str(path)!r} is missing: {str(run_dir)!r} is not a run directory "
                              f"(a run writes config.yaml and checkpoints/ there)")
    overrides = [o for entry in read_history(run_dir) for o in _overrides(entry["changed"])]
    return load_config(path, overrides)


def check_resume(run_dir: Path, cfg, step: int) -> dict[str, Any]:
    """The settings that `cfg` changes against the run's config; raises, before anything is written,
    for a change the checkpoint cannot take or a run that has nothing left to train."""
    recorded, wanted = flat(run_config(run_dir)), flat(cfg)
    changed = {k: v for k, v in wanted.items()
               if not k.startswith(IGNORED) and (k not in recorded or recorded[k] != v)}
    frozen = {k: v for k, v in changed.items() if k.startswith(FROZEN)}
    if frozen:
        shown = ", ".join(f"{k}: {recorded.get(k)!r} -> {v!r}" for k, v in frozen.items())
        raise ConfigError(f"cannot resume {run_dir} with a changed {shown}: the checkpoint's weights, optimiser "
                          f"state and batch stream belong to the run's own settings. Resume without "
                          f"{'these overrides' if len(frozen) > 1 else 'this override'}, or start a new run")
    steps = cfg.trainer.steps
    if step > steps:
        raise ConfigError(f"the checkpoint is at step {step}, beyond trainer.steps={steps}; pass trainer.steps=N "
                          f"with N >= {step} to continue")
    # at its last step without summary.json, a run was stopped during its final evaluation: the
    # resume trains no step and finishes it (evaluation, pictures, summary, report)
    if step == steps and (Path(run_dir) / "summary.json").is_file():
        raise RunFinished(f"{run_dir} is already at step {step} (trainer.steps={steps}): nothing to train, nothing "
                          f"rewritten. To train further: `untwine train --resume {run_dir} trainer.steps=N` "
                          f"with N > {step}")
    return changed


def record(run_dir: Path, step: int, changed: dict[str, Any]) -> None:
    """Append a resume's changes (and the step they start at) to RUN/config.history.yaml."""
    if not changed:
        return
    entries = read_history(run_dir)
    entries.append({"step": int(step), "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "changed": dict(changed)})
    text = ("# resumes of this run: from `step` on, the settings in `changed` replace config.yaml's\n"
            + yaml.safe_dump(entries, sort_keys=False))
    atomic_write_bytes(Path(run_dir) / HISTORY, text.encode())
