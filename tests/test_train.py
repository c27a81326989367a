"""The training engine: resume equals uninterrupted, loss goes down, NaN stops safely, no pickle."""
from __future__ import annotations

import csv
import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from untwine.data.arrays import ArrayGroundTruthData
from untwine.data.factors import FactorSpace
from untwine.errors import CheckpointError, ConfigError
from untwine.train import NonFiniteLossError, load_checkpoint, load_config, load_run, train


@pytest.fixture(scope="module")
def tiny_data():
    """16 images of 8x8: a 2x2 block at one of 4x4 positions (factors x, y)."""
    space = FactorSpace.from_values({"x": np.arange(4.0), "y": np.arange(4.0)})
    classes = space.classes_of(np.arange(16))
    images = np.zeros((16, 8, 8, 1), np.uint8)
    for i, (a, b) in enumerate(classes):
        images[i, 2 * a:2 * a + 2, 2 * b:2 * b + 2] = 255
    return ArrayGroundTruthData("tiny", space, images)


def tiny_config(steps=40, objective=None, controller=None, **trainer):
    return load_config({
        "model": {"arch": "mlp", "latent_dim": 3, "hidden": [16]},
        "objective": objective or {"name": "betavae", "beta": 4},
        "controller": controller or {"name": "none"},
        "optim": {"batch_size": 8, "lr": 1e-3},
        "trainer": {"steps": steps, "log_every": 5, "ckpt_every": 10, "eval_preset": "none",
                    "pictures": False, "progress": False, **trainer},
    })


def weights(run_dir) -> dict[str, torch.Tensor]:
    return load_file(str(Path(run_dir) / "checkpoints" / "last" / "model.safetensors"))


def csv_rows(run_dir) -> list[dict]:
    with open(Path(run_dir) / "logs" / "train.csv", newline="") as fh:
        return list(csv.DictReader(fh))


CASES = {
    "betavae": ({"name": "betavae", "beta": 4}, None),
    "dynamicvae": ({"name": "betavae", "beta": 1},
                   {"name": "dynamicvae", "beta0": 50, "time_scale": 0.002}),
    "factorvae": ({"name": "factorvae", "gamma": 10, "width": 16, "layers": 2}, None),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_resume_equals_uninterrupted(tmp_path, tiny_data, case):
    objective, controller = CASES[case]
    full = train(tiny_config(40, objective, controller), run_dir=tmp_path / "full", data=tiny_data)
    half = train(tiny_config(20, objective, controller), run_dir=tmp_path / "half", data=tiny_data)
    assert half["steps"] == 20 and load_checkpoint(tmp_path / "half").step == 20
    resumed = train(tiny_config(40, objective, controller), run_dir=tmp_path / "half", resume=True, data=tiny_data)
    assert resumed["start_step"] == 20 and load_checkpoint(tmp_path / "half").step == 40

    a, b = weights(tmp_path / "full"), weights(tmp_path / "half")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ca, cb = load_checkpoint(tmp_path / "full"), load_checkpoint(tmp_path / "half")
    assert ca.controller == cb.controller
    for k in ca.aux:
        assert torch.equal(ca.aux[k], cb.aux[k]), k
    # the log of the resumed run is the log of the uninterrupted one, row for row
    assert csv_rows(tmp_path / "full") == csv_rows(tmp_path / "half")
    assert full["final_terms"] == resumed["final_terms"]


def test_resume_drops_log_rows_after_the_checkpoint(tmp_path, tiny_data):
    # a run that logged past its last checkpoint (crash between ckpt_every steps) resumes cleanly
    cfg = tiny_config(25)  # checkpoints at 10, 20, 25; log every 5
    train(cfg, run_dir=tmp_path / "r", data=tiny_data)
    with open(tmp_path / "r" / "logs" / "train.csv", "a") as fh:  # rows a crashed run wrote past step 25
        fh.write("30,1,1,1,4,,0.001\n")
    train(tiny_config(35), run_dir=tmp_path / "r", resume=True, data=tiny_data)
    steps = [int(r["step"]) for r in csv_rows(tmp_path / "r")]
    assert steps == [5, 10, 15, 20, 25, 30, 35]


def test_summary_config_and_logs(tmp_path, tiny_data):
    s = train(tiny_config(30, controller={"name": "dynamicvae", "time_scale": 0.002}), run_dir=tmp_path,
              data=tiny_data)
    assert s["steps"] == 30 and s["start_step"] == 0
    assert s["images_per_second"] > 0
    assert set(s["final_terms"]) >= {"loss", "recon", "kl"}
    saved = load_config(tmp_path / "config.yaml")
    assert saved.controller.name == "dynamicvae" and saved.controller.params["time_scale"] == 0.002
    rows = csv_rows(tmp_path)
    assert [int(r["step"]) for r in rows] == [5, 10, 15, 20, 25, 30]
    assert {"loss", "recon", "kl", "beta", "set_point"} <= set(rows[0])
    # C(t) of DynamicVAE at time_scale 0.002: period 12 steps, ramps of 2 steps
    assert float(rows[0]["set_point"]) == pytest.approx(0.5)
    assert float(rows[-1]["set_point"]) == pytest.approx(0.5 + 2 * 0.15)  # C(29): ramps at 12-14 and 24-26 done
    assert float(rows[0]["beta"]) < 50  # beta starts at 50 and the KL is under C: it falls
    assert list((tmp_path / "logs" / "tensorboard").glob("events.out.tfevents.*"))
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 30


def test_refuses_to_overwrite_a_run(tmp_path, tiny_data):
    train(tiny_config(10), run_dir=tmp_path, data=tiny_data)
    with pytest.raises(ConfigError, match="already holds a run"):
        train(tiny_config(10), run_dir=tmp_path, data=tiny_data)


def test_resume_needs_a_checkpoint(tmp_path, tiny_data):
    with pytest.raises(CheckpointError, match="config.yaml"):
        train(None, run_dir=tmp_path / "nothing", resume=True, data=tiny_data)
    train(tiny_config(20), run_dir=tmp_path / "r", data=tiny_data)
    with pytest.raises(ConfigError, match="trainer.steps"):
        train(tiny_config(10), run_dir=tmp_path / "r", resume=True, data=tiny_data)


class _NaNAfter(torch.nn.Module):
    """beta-VAE whose loss turns NaN from step `nan_step` on."""

    has_kl_weight = True

    def __init__(self, nan_step: int = 25, dataset_size=None, latent_dim=None):
        super().__init__()
        from untwine.objectives import BetaVAE
        self.inner = BetaVAE(beta=1.0)
        self.nan_step = nan_step

    def forward(self, model, x, beta=None, step=0):
        out = self.inner(model, x, beta=beta, step=step)
        if step >= self.nan_step:
            out.loss = out.loss * float("nan")
            out.terms["recon"] = out.terms["recon"] * float("nan")
        return out

    def auxiliary_parameters(self):
        return []


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, tiny_data, monkeypatch):
    import untwine.objectives as objectives
    monkeypatch.setattr(objectives, "build_objective",
                        lambda name, dataset_size=None, latent_dim=None, **p: _NaNAfter(**p))
    cfg = tiny_config(40, objective={"name": "nan-after", "nan_step": 25})
    with pytest.raises(NonFiniteLossError) as info:
        train(cfg, run_dir=tmp_path, data=tiny_data)
    msg = str(info.value)
    assert "step 25" in msg and "recon=nan" in msg and "step 20" in msg and "--resume" in msg
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.step == 20
    assert all(torch.isfinite(v).all() for v in ckpt.model.values())
    assert max(int(r["step"]) for r in csv_rows(tmp_path)) == 25  # logged up to the bad step, not beyond


def test_checkpoint_files_hold_no_pickle(tmp_path, tiny_data, monkeypatch):
    train(tiny_config(20, objective=CASES["factorvae"][0]), run_dir=tmp_path, data=tiny_data)
    files = sorted(p for p in (tmp_path / "checkpoints").rglob("*") if p.is_file())
    names = {p.name for p in files}
    assert names == {"model.safetensors", "aux.safetensors", "optimizer.safetensors", "optimizer.json",
                     "rng.safetensors", "state.json"}
    for p in files:
        head = p.read_bytes()[:2]
        assert head[:1] != b"\x80", f"{p} starts like a pickle"
        if p.suffix == ".json":
            json.loads(p.read_text())
        else:
            load_file(str(p))
    # resuming never unpickles
    def no_pickle(*a, **k):
        raise AssertionError("torch.load called")
    monkeypatch.setattr(torch, "load", no_pickle)
    train(tiny_config(30, objective=CASES["factorvae"][0]), run_dir=tmp_path, resume=True, data=tiny_data)


def test_load_run_gives_the_trained_model(tmp_path, tiny_data):
    train(tiny_config(20), run_dir=tmp_path, data=tiny_data)
    run = load_run(tmp_path, data=tiny_data)
    assert run.step == 20 and not run.model.training
    for k, v in weights(tmp_path).items():
        assert torch.equal(run.model.state_dict()[k], v)
    x = tiny_data.batch(np.arange(16))
    assert run.model.representation(x).shape == (16, 3)


def test_a_few_hundred_steps_reduce_the_loss_on_dsprites(tmp_path):
    from untwine.data.dsprites import DSprites
    cfg = load_config({
        "model": {"arch": "mlp", "latent_dim": 6, "hidden": [64]},
        "objective": {"name": "betavae", "beta": 1},
        "optim": {"batch_size": 16, "lr": 1e-3},
        "trainer": {"steps": 300, "log_every": 10, "ckpt_every": 300, "eval_preset": "none",
                    "pictures": False, "progress": False},
    })
    train(cfg, run_dir=tmp_path, data=DSprites())
    loss = np.array([float(r["loss"]) for r in csv_rows(tmp_path)])
    # an untrained Bernoulli decoder costs 4096 * log 2 = 2839 nats; a trained one a few hundred
    assert loss[:3].mean() > 1.5 * loss[-5:].mean()
    assert loss[-5:].mean() < 400


def test_time_budget_stops_early_with_a_checkpoint(tmp_path, tiny_data):
    s = train(tiny_config(100_000, max_seconds=0.5), run_dir=tmp_path, data=tiny_data)
    assert 0 < s["steps"] < 100_000
    assert load_checkpoint(tmp_path).step == s["steps"]
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == s["steps"]


def test_cli_train_then_resume_on_dsprites(tmp_path, capsys):
    from untwine.cli import main
    run = tmp_path / "run"
    small = ["model.arch=mlp", "model.hidden=[16]", "optim.batch_size=4", "trainer.log_every=2",
             "trainer.ckpt_every=2", "trainer.eval_preset=none", "trainer.pictures=false", "trainer.progress=false"]
    assert main(["train", "dsprites-dynamicvae", "trainer.steps=4", *small, "--run-dir", str(run)]) == 0
    out = capsys.readouterr().out
    assert str(run) in out and "--resume" in out
    assert load_checkpoint(run).step == 4
    assert main(["train", "--resume", str(run), "trainer.steps=6"]) == 0
    assert load_checkpoint(run).step == 6
    # config.yaml is the run's start; the resume's change is history beside it
    assert load_config(run / "config.yaml").trainer.steps == 4
    from untwine.train.resume import read_history, run_config
    assert read_history(run)[0]["step"] == 4 and read_history(run)[0]["changed"] == {"trainer.steps": 6}
    assert run_config(run).trainer.steps == 6
    assert [int(r["step"]) for r in csv_rows(run)] == [2, 4, 6]
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    assert "not a run directory" in capsys.readouterr().err


DDP_SCRIPT = '''
import json, sys
import numpy as np
from untwine.data.arrays import ArrayGroundTruthData
from untwine.data.factors import FactorSpace
from untwine.train import load_config, train
space = FactorSpace.from_values({"x": np.arange(4.0), "y": np.arange(4.0)})
images = np.zeros((16, 8, 8, 1), np.uint8)
for i, (a, b) in enumerate(space.classes_of(np.arange(16))):
    images[i, 2 * a:2 * a + 2, 2 * b:2 * b + 2] = 255
cfg = load_config({"model": {"arch": "mlp", "latent_dim": 3, "hidden": [16]},
                   "controller": {"name": "dynamicvae", "time_scale": 0.002}, "optim": {"batch_size": 8},
                   "trainer": {"steps": int(sys.argv[2]), "accelerator": "cpu", "devices": 2, "strategy": "ddp",
                               "log_every": 5, "ckpt_every": 10, "eval_preset": "none", "pictures": False,
                               "progress": False}})
s = train(cfg, run_dir=sys.argv[1], resume=len(sys.argv) > 3, data=ArrayGroundTruthData("tiny", space, images))
print("SUMMARY", json.dumps([s["world_size"], s["start_step"], s["steps"], s["final_terms"]["kl"]]))
'''


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_through_fabrics_launcher(tmp_path):
    import subprocess
    import sys
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT)

    def run(*args):
        out = subprocess.run([sys.executable, str(script), str(tmp_path / "run"), *args], capture_output=True,
                             text=True, timeout=300, cwd=tmp_path)
        assert out.returncode == 0, out.stderr[-2000:]
        return [json.loads(line[len("SUMMARY "):]) for line in out.stdout.splitlines() if line.startswith("SUMMARY")]

    first = run("20")
    assert len(first) == 2 and all(s[:3] == [2, 0, 20] for s in first)
    assert first[0][3] == first[1][3]  # the KL the controllers see is averaged over ranks
    resumed = run("30", "resume")
    assert all(s[:3] == [2, 20, 30] for s in resumed)
    assert load_checkpoint(tmp_path / "run").step == 30
    # each rank's random state is saved, so the resumed run is the uninterrupted one, bit for bit
    saved = load_checkpoint(tmp_path / "run").rng
    assert not torch.equal(saved["torch_cpu@rank0"], saved["torch_cpu@rank1"])
    whole = subprocess.run([sys.executable, str(script), str(tmp_path / "whole"), "30"], capture_output=True,
                           text=True, timeout=300, cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr[-2000:]
    for k, v in load_checkpoint(tmp_path / "whole").model.items():
        assert torch.equal(load_checkpoint(tmp_path / "run").model[k], v), k


def test_periodic_and_final_evaluation_and_pictures(tmp_path, tiny_data):
    metrics = {"mig": {"num_train": 64}}
    s = train(tiny_config(20, eval_every=10, eval_preset=metrics, pictures=True), run_dir=tmp_path, data=tiny_data)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [rec["step"] for rec in lines] == [10]
    final = json.loads((tmp_path / "metrics.json").read_text())
    assert final["step"] == 20 and 0.0 <= final["mig"]["mig"] <= 1.0
    assert s["metrics"]["mig"] == final["mig"]
    names = {p.name for p in (tmp_path / "pictures").iterdir()}
    assert {"reconstructions.png", "traversals.png", "traversals.gif", "curves.png"} <= names
    # evaluation and pictures draw no numbers from the training stream: same weights as without them
    train(tiny_config(20), run_dir=tmp_path / "plain", data=tiny_data)
    for k, v in weights(tmp_path / "plain").items():
        assert torch.equal(weights(tmp_path)[k], v)


def test_bad_eval_preset_fails_before_training(tmp_path, tiny_data):
    with pytest.raises(ConfigError, match="unknown metric"):
        train(tiny_config(20, eval_preset="no-such-metric"), run_dir=tmp_path, data=tiny_data)
    assert not (tmp_path / "checkpoints").exists()


def test_conv64_with_channels_last_and_bf16_autocast_on_the_cpu(tmp_path):
    space = FactorSpace.from_values({"x": np.arange(4.0)})
    images = np.zeros((4, 64, 64, 1), np.uint8)
    for i in range(4):
        images[i, 8 * i:8 * i + 16, 20:36] = 255
    data = ArrayGroundTruthData("blocks64", space, images)
    cfg = load_config({"model": {"arch": "conv64", "latent_dim": 2}, "optim": {"batch_size": 4},
                       "trainer": {"steps": 3, "precision": "bf16-mixed", "channels_last": True, "log_every": 1,
                                   "eval_preset": "none", "pictures": False, "progress": False}})
    s = train(cfg, run_dir=tmp_path, data=data)
    assert s["steps"] == 3 and np.isfinite(s["final_terms"]["loss"])
    assert all(w.dtype == torch.float32 for w in weights(tmp_path).values())  # weights stay float32


def test_demo_command_trains_both_stages_and_writes_one_report(tmp_path, capsys):
    from untwine.cli import main
    first, second = load_config("demo-stage1"), load_config("demo-stage2")
    assert first.objective.name == "betatcvae" and first.data.name == "dsprites"
    assert second.stage2.name == "vae" and second.data.name == "stage1"
    assert first.trainer.max_seconds is None and second.trainer.max_seconds is None  # a fixed step count
    run = tmp_path / "demo"
    assert main(["demo", "trainer.steps=2", "optim.batch_size=4", "trainer.eval_preset=none",
                 "trainer.progress=false", "--run-dir", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"run directory: {run / 'stage1'}" in out and f"run directory: {run / 'stage2'}" in out
    assert (run / "report.html").is_file() and str(run / "report.html") in out
    staged = load_config(run / "stage2" / "config.yaml")
    assert staged.stage1.run == str((run / "stage1").resolve()) and staged.data.name == "dsprites"
    assert (run / "stage2" / "pictures" / "side_by_side.png").is_file()


def test_auto_threads_stay_within_the_cores(monkeypatch):
    import os

    from untwine.train import hardware as engine
    from untwine.train.hardware import cpu_threads
    assert cpu_threads(None) is None and cpu_threads(3) == 3
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    for busy, threads in ((3.2, 1), (0.4, 4), (1.6, 2), (9.0, 1)):
        monkeypatch.setattr(engine, "_other_busy_cores", lambda busy=busy: busy)
        assert cpu_threads("auto") == threads
    # without /proc/stat: the load average
    monkeypatch.setattr(engine, "_other_busy_cores", lambda: None)
    monkeypatch.setattr(os, "getloadavg", lambda: (3.2, 0.0, 0.0))
    assert cpu_threads("auto") == 1
    monkeypatch.setattr(os, "getloadavg", lambda: (0.4, 0.0, 0.0))
    assert cpu_threads("auto") == 4


def test_auto_threads_do_not_count_this_process(monkeypatch):
    """The busy cores over the window less this process's own: a process that just ran on both of
    two cores (a lagging load average of 2) still gets both when nothing else runs."""
    import os

    from untwine.train import hardware as engine
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(engine.time, "sleep", lambda s: None)
    # 0.5 s of wall: 100 ticks over two cores, 80 busy (1.6 cores), 0.3 CPU-s of them ours (0.6 cores)
    samples = iter([(1000, 5000, 10.0, 100.0), (1080, 5100, 10.3, 100.5)])
    monkeypatch.setattr(engine, "_cpu_sample", lambda: next(samples))
    assert engine._other_busy_cores() == pytest.approx(1.0)
    samples = iter([(1000, 5000, 10.0, 100.0), (1080, 5100, 10.8, 100.5)])  # all of it ours
    assert engine._other_busy_cores() == pytest.approx(0.0)
    monkeypatch.setattr(engine, "_cpu_sample", lambda: (_ for _ in ()).throw(OSError("no /proc")))
    assert engine._other_busy_cores() is None


def test_multistage_preset_without_stage1_says_so_and_writes_nothing(tmp_path, monkeypatch, capsys):
    from untwine.cli import main
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"needs its frozen stage 1: add stage1=RUN_DIR"):
        train(load_config("ms-vae", ["trainer.steps=2"]))
    assert main(["train", "ms-gan", "trainer.steps=2", "--run-dir", str(tmp_path / "ms")]) != 0
    err = capsys.readouterr().err
    assert "stage1=RUN_DIR" in err and "unknown dataset" not in err
    assert list(tmp_path.iterdir()) == []          # no run directory, no runs/


@pytest.mark.parametrize("preset", ["mig", "none"])
def test_multistage_periodic_evaluation_measures_stage2_not_the_frozen_scores(tmp_path, monkeypatch, preset):
    # the frozen stage 1's scores are identical at every evaluation: the -full presets recomputed them
    # each time and measured stage 2 only at the end; with eval_preset=none stage 2 was not measured at all
    from untwine.multistage import evaluation as ev
    monkeypatch.setattr(ev, "evaluate_reconstruction", functools.partial(ev.evaluate_reconstruction, n=16))
    quiet = ["trainer.pictures=false", "trainer.progress=false", "trainer.report=false", "optim.batch_size=4",
             "trainer.precision=32-true", "trainer.channels_last=false", f"trainer.eval_preset={preset}"]
    s1 = tmp_path / "s1"
    train(load_config("dsprites-betatcvae", ["trainer.steps=2", *quiet]), run_dir=s1)
    ms = tmp_path / "ms"
    train(load_config("ms-vae", [f"stage1={s1}", "trainer.steps=4", "trainer.eval_every=2", "stage2.width=8",
                                 "stage2.w_dim=4", "trainer.multistage_eval=reconstruction", *quiet]), run_dir=ms)
    periodic = [json.loads(line) for line in (ms / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in periodic] == [2]
    assert "mig" not in periodic[0]                                    # not recomputed mid-run
    assert {"stage1", "combined"} <= set(periodic[0]["multistage"])    # stage 2 measured mid-run
    final = json.loads((ms / "metrics.json").read_text())
    assert {"stage1", "combined"} <= set(final["multistage"])
    if preset == "mig":
        assert final["mig"] == json.loads((s1 / "metrics.json").read_text())["mig"]  # once, at the end


def test_a_short_run_logs_its_last_step_and_its_checkpoint_is_readable_by_others(tmp_path, tiny_data):
    import os
    import stat
    run = tmp_path / "short"
    cfg = load_config("dsprites-betavae", ["model.arch=mlp", "model.hidden=[16]", "optim.batch_size=4",
                                           "trainer.steps=5", "trainer.log_every=100", "trainer.eval_preset=none",
                                           "trainer.pictures=false", "trainer.progress=false", "trainer.report=false"])
    train(cfg, run_dir=run, data=tiny_data)
    assert [int(r["step"]) for r in csv_rows(run)] == [5]     # log_every=100 wrote nothing before
    umask = os.umask(0)
    os.umask(umask)
    last = run / "checkpoints" / "last"
    assert stat.S_IMODE(last.stat().st_mode) == 0o777 & ~umask  # was 0700 (mkdtemp)
    for f in last.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask, f
