"""Engine corrections: DDP with two optimisers, the NaN guard on weights, plain progress, precision."""
from __future__ import annotations

import io
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from untwine.errors import ConfigError
from untwine.train import NonFiniteLossError, load_checkpoint, load_config, train

from test_train import tiny_config, tiny_data  # noqa: F401  (fixture)


class _NaNGradientAt(torch.nn.Module):
    """beta-VAE whose loss stays finite while its gradient turns NaN at one step:
    0 * sqrt(t) at t = 0 is 0 forwards and 0 * inf = NaN backwards."""

    has_kl_weight = True

    def __init__(self, bad_step: int = 19, dataset_size=None, latent_dim=None):
        super().__init__()
        from untwine.objectives import BetaVAE
        self.inner = BetaVAE(beta=1.0)
        self.bad_step = bad_step

    def forward(self, model, x, beta=None, step=0):
        out = self.inner(model, x, beta=beta, step=step)
        if step == self.bad_step:
            p = next(model.parameters())
            zero = (p - p.detach()).sum()  # value 0, gradient 1 into a weight
            out.loss = out.loss + 0.0 * torch.sqrt(zero)
        return out

    def auxiliary_parameters(self):
        return []


class _HugeGradientAt(_NaNGradientAt):
    """A finite gradient of 1e22 into one weight at one step: Adam's exp_avg_sq = 1e44 overflows to
    inf while the weights and the loss stay finite (the weight simply stops moving)."""

    def forward(self, model, x, beta=None, step=0):
        out = self.inner(model, x, beta=beta, step=step)
        if step == self.bad_step:
            p = next(model.parameters())
            out.loss = out.loss + 1e22 * (p - p.detach()).sum()
        return out


def test_a_finite_loss_with_a_nan_gradient_never_reaches_a_checkpoint(tmp_path, tiny_data, monkeypatch):
    import untwine.objectives as objectives
    monkeypatch.setattr(objectives, "build_objective",
                        lambda name, dataset_size=None, latent_dim=None, **p: _NaNGradientAt(**p))
    # step index 19 is the 20th step, a checkpoint step (ckpt_every=10): the old guard saved NaN weights there
    cfg = tiny_config(40, objective={"name": "nan-grad", "bad_step": 19})
    with pytest.raises(NonFiniteLossError) as info:
        train(cfg, run_dir=tmp_path, data=tiny_data)
    msg = str(info.value)
    assert "non-finite gradient at step 19" in msg and "step 10" in msg and "--resume" in msg
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.step == 10
    assert all(torch.isfinite(v).all() for v in ckpt.model.values())


def test_an_overflowing_optimiser_state_never_reaches_a_checkpoint(tmp_path, tiny_data, monkeypatch):
    """A finite 1e22 gradient saved exp_avg_sq = inf and the run finished "fine" (issue 23, item 2)."""
    import untwine.objectives as objectives
    monkeypatch.setattr(objectives, "build_objective",
                        lambda name, dataset_size=None, latent_dim=None, **p: _HugeGradientAt(**p))
    cfg = tiny_config(40, objective={"name": "huge-grad", "bad_step": 14})
    with pytest.raises(NonFiniteLossError, match=r"non-finite optimiser state after step 20 \(main.state.0.exp_avg_sq"):
        train(cfg, run_dir=tmp_path, data=tiny_data)
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.step == 10
    assert all(torch.isfinite(v).all() for sd in ckpt.optimizers.values() for s in sd["state"].values()
               for v in s.values() if isinstance(v, torch.Tensor))


def test_the_time_budget_exit_checks_the_weights_too(tmp_path, tiny_data, monkeypatch):
    import untwine.objectives as objectives
    monkeypatch.setattr(objectives, "build_objective",
                        lambda name, dataset_size=None, latent_dim=None, **p: _NaNGradientAt(**p))
    from untwine.train.callbacks import TimeBudget
    monkeypatch.setattr(objectives, "build_objective",
                        lambda name, dataset_size=None, latent_dim=None, **p: _HugeGradientAt(**p))
    cfg = tiny_config(100, objective={"name": "huge-grad", "bad_step": 12}, max_seconds=3600)
    # out of time right after the bad step: the exit's checkpoint must not be written
    monkeypatch.setattr(TimeBudget, "should_stop", lambda self, loop, step: "out of time" if step == 13 else None)
    with pytest.raises(NonFiniteLossError, match="non-finite optimiser state after step 13"):
        train(cfg, run_dir=tmp_path, data=tiny_data)
    assert load_checkpoint(tmp_path).step == 10


def test_plain_progress_lines_without_a_terminal():
    out = io.StringIO()  # not a TTY, like `make demo | tee log` or CI
    from untwine.train.progress import Progress
    p = Progress(True, total=100, start=0, stream=out)
    for step in range(10, 101, 10):
        p.update(step, {"loss": 1.5, "kl": None, "img/s": 300.0})
    p.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "train: steps 0..100"
    assert len(lines) == 11 and lines[-1].startswith("train: step 100/100 (100%")
    assert "loss 1.5" in lines[1] and "img/s 300" in lines[1] and "kl" not in lines[1]
    assert "━" not in out.getvalue() and "\x1b" not in out.getvalue()


def test_precision_auto_is_bf16_only_where_the_cpu_has_it(monkeypatch):
    from untwine.train import hardware
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: True)
    assert hardware.resolve_precision("auto", "cpu") == "bf16-mixed"
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: False)
    assert hardware.resolve_precision("auto", "cpu") == "32-true"
    assert hardware.resolve_precision("32-true", "cpu") == "32-true"


def test_cpu_presets_and_the_demo_use_the_fast_settings_and_fixed_steps():
    from untwine.train.config import list_presets
    for name in list_presets():
        cfg = load_config(name)
        if cfg.trainer.accelerator == "cpu" and cfg.model.arch == "conv64":
            assert cfg.trainer.precision == "auto" and cfg.trainer.channels_last, name
    for name in ("demo", "demo-stage1", "demo-stage2"):
        if name in list_presets():
            assert load_config(name).trainer.max_seconds is None, name  # reproducible: a step count


DDP_TWO_OPTIMISERS = '''
import sys
import numpy as np
from safetensors.torch import save_file
from untwine.data.arrays import ArrayGroundTruthData
from untwine.data.factors import FactorSpace
from untwine.train import load_config, session, train
space = FactorSpace.from_values({"x": np.arange(4.0), "y": np.arange(4.0)})
images = np.zeros((16, 8, 8, 1), np.uint8)
for i, (a, b) in enumerate(space.classes_of(np.arange(16))):
    images[i, 2 * a:2 * a + 2, 2 * b:2 * b + 2] = 255
finish = session._Session._finish
def keep_each_rank(self, loop, task, *args):  # every rank writes its own weights, to compare
    sd = {k: v.detach().contiguous() for k, v in task.model.state_dict().items()}
    sd.update({"disc." + k: v.detach().contiguous() for k, v in task.objective.state_dict().items()})
    save_file(sd, f"{sys.argv[1]}/rank{self.fabric.global_rank}.safetensors")
    return finish(self, loop, task, *args)
session._Session._finish = keep_each_rank
cfg = load_config({"model": {"arch": "mlp", "latent_dim": 3, "hidden": [16]},
                   "objective": {"name": "factorvae", "gamma": 10, "width": 16, "layers": 2},
                   "optim": {"batch_size": 8, "lr": 1e-2, "aux_lr": 1e-2},
                   "trainer": {"steps": 10, "accelerator": "cpu", "devices": 2, "strategy": "ddp",
                               "log_every": 5, "ckpt_every": 10, "eval_preset": "none", "pictures": False,
                               "progress": False, "report": False}})
train(cfg, run_dir=sys.argv[1], data=ArrayGroundTruthData("tiny", space, images))
'''


def test_ddp_ranks_stay_identical_with_two_optimisers(tmp_path):
    """FactorVAE on 2 CPU processes: the VAE step must use gradients averaged over ranks (the old
    two-backward loop let it step on each rank's own gradients: 1e-3 apart after 10 steps)."""
    script = tmp_path / "ddp_two_optimisers.py"
    script.write_text(DDP_TWO_OPTIMISERS)
    run = tmp_path / "run"
    run.mkdir()
    out = subprocess.run([sys.executable, str(script), str(run)], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    a, b = load_file(str(run / "rank0.safetensors")), load_file(str(run / "rank1.safetensors"))
    assert a.keys() == b.keys() and any(k.startswith("disc.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs between ranks by {(a[k] - b[k]).abs().max():.3g}"


def test_group_batches_leave_the_held_out_content_combinations_out_of_training():
    from untwine.data.registry import get_dataset
    from untwine.metrics.content_style import split_content_combinations
    from untwine.objectives import build_objective
    from untwine.train.batches import build_sampler
    data = get_dataset("dsprites")
    cfg = load_config("dsprites-mlvae", ["batch.holdout_fraction=0.25", "batch.holdout_seed=3",
                                         "optim.batch_size=64"])
    objective = build_objective(cfg.objective.name, latent_dim=cfg.model.latent_dim, **cfg.objective.params)
    sampler = build_sampler(cfg, data, objective, seed=0, device=None)
    split = split_content_combinations(data.factor_space, cfg.batch.shared_factors, 0.25, 3)
    factors = split.factors
    held = {tuple(c) for c in split.test}
    seen = set()
    for t in range(20):
        classes = sampler.classes_at(t)
        assert classes.shape == (64 // cfg.batch.group_size, cfg.batch.group_size, 5)
        seen |= {tuple(c) for c in classes[:, 0, factors]}
    assert seen and not (seen & held)
    assert seen <= {tuple(c) for c in split.train}
    with pytest.raises(Exception, match="holdout_fraction"):
        load_config("dsprites-mlvae", ["batch.holdout_fraction=1.5"])


def test_mixed_likelihood_needs_the_table_data_that_supply_it():
    from untwine.train.factory import build_vae_model
    cfg = load_config({"data": {"name": "dsprites"}, "model": {"likelihood": "mixed"}})
    with pytest.raises(ConfigError, match="likelihood=mixed is a table's likelihood"):
        build_vae_model(cfg, (1, 64, 64))


def _fp16_on_the_cpu(trainer_cfg):
    """Fabric with fp16 autocast and a GradScaler on the CPU (what a GPU without bf16 gets); a short
    growth interval, so that the scale both grows and backs off within a few steps."""
    from lightning.fabric import Fabric
    from lightning.fabric.plugins.precision import MixedPrecision
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16, growth_interval=4)
    return Fabric(accelerator="cpu", devices=1, loggers=[], plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])


def test_fp16_with_two_optimisers_updates_the_scaler_once_a_step_and_resumes_exactly(tmp_path, tiny_data,
                                                                                     monkeypatch):
    """Issue 23, item 4: Fabric's plugin updated the GradScaler after each optimiser step (twice a
    step for FactorVAE, so after an overflow the discriminator unscaled by a changed scale), and the
    scaler's state was not checkpointed (fp16 resume not exact)."""
    from test_train import CASES, weights
    from untwine.train import session
    monkeypatch.setattr(session, "make_fabric", _fp16_on_the_cpu)
    scales = []
    update = torch.amp.GradScaler.update

    def recorded(self, *args, **kwargs):
        out = update(self, *args, **kwargs)
        scales.append(self.get_scale())
        return out
    monkeypatch.setattr(torch.amp.GradScaler, "update", recorded)
    factorvae = CASES["factorvae"][0]
    train(tiny_config(30, objective=factorvae), run_dir=tmp_path / "full", data=tiny_data)
    assert len(scales) == 30 and len(set(scales)) > 1          # one update a step; overflows happened
    assert load_checkpoint(tmp_path / "full").extra["grad_scaler"]["scale"] == scales[-1]
    train(tiny_config(20, objective=factorvae), run_dir=tmp_path / "half", data=tiny_data)
    train(tiny_config(30, objective=factorvae), run_dir=tmp_path / "half", resume=True, data=tiny_data)
    a, b = weights(tmp_path / "full"), weights(tmp_path / "half")
    assert all(torch.equal(a[k], b[k]) for k in a)
