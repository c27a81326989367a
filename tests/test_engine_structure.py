"""The engine's shape (issue 23): a task with a third optimiser trains, checkpoints and resumes
exactly with no change to the loop; parameter groups must be disjoint; the engine's modules stay
small; multistage/ and tabular/ import no training-loop module; DDP ranks that disagree stop the run."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import untwine
from untwine.errors import ConfigError
from untwine.train import load_checkpoint, load_config, train
from untwine.train.tasks import ParamGroup, StepOutput, Task

from test_train import tiny_data, weights  # noqa: F401  (fixture)


class _Three(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(64, 4), nn.Linear(64, 4), nn.Linear(64, 4)

    def forward(self, x):
        x = x.flatten(1)
        noise = torch.randn(len(x), 4)  # the RNG stream must resume exactly too
        return {name: (getattr(self, name)(x) - noise).pow(2).mean() for name in ("a", "b", "c")}


class ThreeOptimisers(Task):
    """Three parameter groups, three losses, three Adams with their own learning rates."""

    def __init__(self, cfg, data, overlap: bool = False):
        self.cfg, self.model = cfg, _Three()
        self.module = self.model
        self.overlap = overlap

    def parameter_groups(self):
        lr = self.cfg.optim.lr
        m = self.model
        c = list(m.c.parameters()) + (list(m.a.parameters()) if self.overlap else [])
        return {"a": ParamGroup(list(m.a.parameters()), lr), "b": ParamGroup(list(m.b.parameters()), lr / 10),
                "c": ParamGroup(c, lr / 100)}

    def build_sampler(self, cfg, data, seed, device):
        from untwine.data.samplers import ObservationSampler
        return ObservationSampler(data, cfg.optim.batch_size, seed=seed, device=device)

    def prepare_batch(self, batch, channels_last):
        return batch if isinstance(batch, torch.Tensor) else batch.x

    def step(self, module, batch, step):
        losses = module(batch)
        return StepOutput(losses, {"loss": sum(losses.values()), **losses})


def _three_config(steps, **trainer):
    return load_config({"objective": {"name": "three-optimisers"}, "optim": {"batch_size": 8, "lr": 1e-2},
                        "trainer": {"steps": steps, "log_every": 5, "ckpt_every": 10, "eval_preset": "none",
                                    "pictures": False, "progress": False, "report": False, **trainer}})


@pytest.fixture
def three(monkeypatch):
    from untwine.train import factory
    monkeypatch.setattr(factory, "_KINDS", list(factory._KINDS))
    factory.register_task("three", lambda cfg: cfg.objective.name == "three-optimisers",
                          lambda cfg, data, run_dir, weights: ThreeOptimisers(cfg, data))
    return factory


def test_a_task_with_a_third_optimiser_trains_and_resumes_exactly(tmp_path, tiny_data, three):
    torch.manual_seed(0)  # the run's seed: the weights it starts from
    untouched = _Three().state_dict()
    train(_three_config(30), run_dir=tmp_path / "full", data=tiny_data)
    train(_three_config(20), run_dir=tmp_path / "half", data=tiny_data)
    train(_three_config(30), run_dir=tmp_path / "half", resume=True, data=tiny_data)
    ckpt = load_checkpoint(tmp_path / "full")
    assert sorted(ckpt.optimizers) == ["a", "b", "c"]
    assert [ckpt.optimizers[n]["param_groups"][0]["lr"] for n in "abc"] == [1e-2, 1e-3, 1e-4]
    a, b = weights(tmp_path / "full"), weights(tmp_path / "half")
    assert a.keys() == untouched.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(not torch.equal(a[k], untouched[k]) for k in a)  # every group stepped


def test_parameter_groups_must_be_disjoint(tmp_path, tiny_data, three):
    three.register_task("three", lambda cfg: cfg.objective.name == "three-optimisers",
                        lambda cfg, data, run_dir, weights: ThreeOptimisers(cfg, data, overlap=True))
    with pytest.raises(ConfigError, match="groups 'a' and 'c' share a parameter"):
        train(_three_config(5), run_dir=tmp_path, data=tiny_data)


ROOT = Path(untwine.__file__).parent
ENGINE = ["session", "factory", "loop", "callbacks", "state", "resume", "hardware", "progress", "engine",
          "checkpoint", "run", "batches", "logging", "commands", "tasks/base", "tasks/vae", "tasks/multistage"]
LOOP_MODULES = {"untwine.train.engine", "untwine.train.session", "untwine.train.loop", "untwine.train.callbacks",
                "untwine.train.state", "untwine.train.factory", "untwine.train.hardware", "untwine.train.tasks"}


def test_no_engine_module_is_over_300_lines():
    sizes = {name: len((ROOT / "train" / f"{name}.py").read_text().splitlines()) for name in ENGINE}
    assert max(sizes.values()) <= 300, sizes


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_multistage_and_tabular_import_no_training_loop_module():
    for package in ("multistage", "tabular"):
        for path in (ROOT / package).glob("*.py"):
            bad = {n for n in _imports(path) if any(n == m or n.startswith(m + ".") for m in LOOP_MODULES)}
            assert not bad, f"{path.name} imports {bad}"
    # multistage builds models only: nothing of untwine.train at all
    for path in (ROOT / "multistage").glob("*.py"):
        assert not {n for n in _imports(path) if n.startswith("untwine.train")}, path.name
    # importing them loads no training-loop module either
    code = ("import sys, importlib, pkgutil, untwine.multistage, untwine.tabular\n"
            "for p in ('untwine.multistage', 'untwine.tabular'):\n"
            "    for m in pkgutil.iter_modules(importlib.import_module(p).__path__): importlib.import_module(p + '.' + m.name)\n"
            "print(sorted(m for m in sys.modules if m.startswith('untwine.train')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = set(eval(out.stdout.strip().splitlines()[-1]))
    assert not loaded & LOOP_MODULES, loaded


DDP_DRIFT = '''
import sys
import numpy as np
import torch
from untwine.data.arrays import ArrayGroundTruthData
from untwine.data.factors import FactorSpace
from untwine.train import load_config, train
import untwine.objectives as objectives
space = FactorSpace.from_values({"x": np.arange(4.0), "y": np.arange(4.0)})
images = np.zeros((16, 8, 8, 1), np.uint8)
for i, (a, b) in enumerate(space.classes_of(np.arange(16))):
    images[i, 2 * a:2 * a + 2, 2 * b:2 * b + 2] = 255
class Drift(objectives.BetaVAE):  # rank 1's weights move on their own once, as a bug would make them
    def forward(self, model, x, beta=None, step=0):
        if step == 6 and torch.distributed.get_rank() == 1:
            with torch.no_grad():
                next(model.parameters()).add_(1e-3)
        return super().forward(model, x, beta=beta, step=step)
objectives.build_objective = lambda name, dataset_size=None, latent_dim=None, **p: Drift(**p)
cfg = load_config({"model": {"arch": "mlp", "latent_dim": 3, "hidden": [16]}, "optim": {"batch_size": 8},
                   "trainer": {"steps": 10, "accelerator": "cpu", "devices": 2, "strategy": "ddp",
                               "log_every": 5, "ckpt_every": 5, "eval_preset": "none", "pictures": False,
                               "progress": False, "report": False}})
train(cfg, run_dir=sys.argv[1], data=ArrayGroundTruthData("tiny", space, images))
'''


def test_ddp_ranks_that_disagree_stop_the_run_at_the_checkpoint(tmp_path):
    script = tmp_path / "ddp_drift.py"
    script.write_text(DDP_DRIFT)
    run = tmp_path / "run"
    out = subprocess.run([sys.executable, str(script), str(run)], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path)
    assert out.returncode != 0
    assert "DDP ranks disagree at step 10: rank(s) [1]" in out.stderr
    assert load_checkpoint(run).step == 5
