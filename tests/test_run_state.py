"""Run state as a user meets it (issue 23), mostly through the CLI: a resume validates before it
writes and keeps config.yaml, records its changes as history, re-applies the optimiser settings,
refuses a changed world size, says when a run is finished; the NaN guard keeps only a checkpoint a
run can resume from and advises --resume only when there is one; SIGINT/SIGTERM checkpoint and exit
without a traceback; a multi-stage run measures stage 2 with no metrics preset."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
import yaml

from untwine.errors import CheckpointError, ConfigError
from untwine.train import NonFiniteLossError, load_checkpoint, load_config, load_run, train

from test_train import _NaNAfter, csv_rows, tiny_config, tiny_data  # noqa: F401  (fixture)

SMALL = ["model.arch=mlp", "model.hidden=[16]", "optim.batch_size=4", "trainer.log_every=2", "trainer.ckpt_every=2",
         "trainer.eval_preset=none", "trainer.pictures=false", "trainer.progress=false", "trainer.report=false",
         "trainer.precision=32-true"]


def cli_run(run: Path, *extra: str, steps: int = 4) -> Path:
    from untwine.cli import main
    assert main(["train", "dsprites-betavae", f"trainer.steps={steps}", *SMALL, *extra, "--run-dir", str(run)]) == 0
    return run


def snapshot(run: Path) -> dict[str, bytes]:
    """Every file of a run, by relative path (TensorBoard's event files aside: a new writer adds one)."""
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*"))
            if p.is_file() and "tensorboard" not in p.parts}


# -- 9: validate first, write after; overrides as history ------------------------------------------
def test_a_refused_resume_leaves_the_run_as_it_was_and_changes_become_history(tmp_path, capsys):
    from untwine.cli import main
    run = cli_run(tmp_path / "run")
    before = snapshot(run)
    assert main(["train", "--resume", str(run), "model.latent_dim=5"]) == 2
    assert "model.latent_dim" in capsys.readouterr().err
    assert snapshot(run) == before
    assert main(["train", "--resume", str(run), "trainer.steps=2"]) == 2   # fewer steps than the checkpoint's
    assert "beyond trainer.steps=2" in capsys.readouterr().err
    assert snapshot(run) == before
    # a resume that changes a loss weight and the steps: config.yaml stays the run's start
    assert main(["train", "--resume", str(run), "trainer.steps=6", "objective.beta=2"]) == 0
    recorded = load_config(run / "config.yaml")
    assert recorded.trainer.steps == 4 and recorded.objective.params["beta"] == 4
    history = yaml.safe_load((run / "config.history.yaml").read_text())
    assert [(h["step"], h["changed"]) for h in history] == [(4, {"trainer.steps": 6, "objective.beta": 2})]
    assert load_run(run).config.objective.params["beta"] == 2          # the run's config now
    assert main(["train", "--resume", str(run), "trainer.steps=8"]) == 0  # later plain resumes still work
    assert load_checkpoint(run).step == 8
    assert [h["step"] for h in yaml.safe_load((run / "config.history.yaml").read_text())] == [4, 6]


# -- 10: a finished run ----------------------------------------------------------------------------
def test_resuming_a_finished_run_says_so_and_rewrites_nothing(tmp_path, capsys):
    from untwine.cli import main
    run = cli_run(tmp_path / "run")
    before = snapshot(run)
    assert main(["train", "--resume", str(run)]) != 0
    err = capsys.readouterr().err
    assert "already at step 4" in err and f"untwine train --resume {run} trainer.steps=N" in err
    assert snapshot(run) == before


# -- 3: hyper-parameters re-applied, world size ----------------------------------------------------
def test_a_resume_trains_at_the_learning_rate_it_was_given(tmp_path):
    from untwine.cli import main
    run = cli_run(tmp_path / "run")
    with pytest.warns(UserWarning, match=r"optim.lr: 0.0001 in the checkpoint, 1e-05 now"):
        assert main(["train", "--resume", str(run), "trainer.steps=6", "optim.lr=1e-5"]) == 0
    assert load_checkpoint(run).optimizers["main"]["param_groups"][0]["lr"] == 1e-5
    assert [float(r["lr"]) for r in csv_rows(run)] == [1e-4, 1e-4, 1e-5]


def test_a_resume_on_another_number_of_processes_is_refused(tmp_path, tiny_data):
    run = tmp_path / "run"
    train(tiny_config(10), run_dir=run, data=tiny_data)
    state_path = run / "checkpoints" / "last" / "state.json"
    state = json.loads(state_path.read_text())
    state["extra"]["world_size"] = 2   # as if trained on two processes
    state_path.write_text(json.dumps(state))
    before = snapshot(run)
    with pytest.raises(ConfigError, match=r"trained on 2 process\(es\) and this resume has 1"):
        train(tiny_config(20), run_dir=run, resume=True, data=tiny_data)
    assert snapshot(run) == before


# -- 1: the NaN guard's checkpoint resumes ---------------------------------------------------------
def test_the_nan_guards_last_checkpoint_can_take_its_next_step(tmp_path, tiny_data):
    run = tmp_path / "run"
    wild = load_config(tiny_config(30, ckpt_every=1), ["optim.lr=1e6"])
    with pytest.raises(NonFiniteLossError) as info:
        train(wild, run_dir=run, data=tiny_data)
    try:
        step = load_checkpoint(run).step
    except CheckpointError:
        assert "--resume" not in str(info.value)
        return
    assert f"step {step})" in str(info.value) and "--resume" in str(info.value)
    # the advice: resume with a lower learning rate. The step after the checkpoint must be finite.
    calm = load_config(tiny_config(step + 2, ckpt_every=1), ["optim.lr=1e-3"])
    with pytest.warns(UserWarning, match="optim.lr"):
        s = train(calm, run_dir=run, resume=True, data=tiny_data)
    assert s["start_step"] == step and s["steps"] == step + 2


def test_the_nan_guard_keeps_the_last_checkpoint_whose_next_step_is_finite(tmp_path, tiny_data, monkeypatch):
    import untwine.objectives as objectives
    monkeypatch.setattr(objectives, "build_objective",
                        lambda name, dataset_size=None, latent_dim=None, **p: _NaNAfter(**p))
    # the loss turns NaN at step index 25: the checkpoint of step 25 is the one whose next step is NaN
    with pytest.raises(NonFiniteLossError) as info:
        train(tiny_config(40, objective={"name": "nan-after", "nan_step": 25}, ckpt_every=1), run_dir=tmp_path,
              data=tiny_data)
    assert load_checkpoint(tmp_path).step == 24 and "(step 24)" in str(info.value)


# -- 11: signals, and no --resume advice without a checkpoint --------------------------------------
class _SignalAt(torch.nn.Module):
    """beta-VAE that sends its own process a signal during step `at`."""

    has_kl_weight = True

    def __init__(self, at: int = 5, sig: str = "SIGINT", dataset_size=None, latent_dim=None):
        super().__init__()
        from untwine.objectives import BetaVAE
        self.inner, self.at, self.sig = BetaVAE(beta=1.0), at, sig

    def forward(self, model, x, beta=None, step=0):
        if step == self.at:
            os.kill(os.getpid(), getattr(signal, self.sig))
        return self.inner(model, x, beta=beta, step=step)

    def auxiliary_parameters(self):
        return []


class _Escaped(Exception):
    pass


@pytest.mark.parametrize("sig,code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_checkpoints_prints_the_resume_command_and_exits_nonzero(tmp_path, capsys, monkeypatch, sig, code):
    from untwine.cli import main
    import untwine.objectives as objectives
    monkeypatch.setattr(objectives, "build_objective",
                        lambda name, dataset_size=None, latent_dim=None, **p: _SignalAt(**p))

    def escaped(signum, frame):  # what reaches the test when training does not handle the signal
        raise _Escaped(signum)
    previous = {s: signal.signal(s, escaped) for s in (signal.SIGINT, signal.SIGTERM)}
    run = tmp_path / "run"
    try:
        rc = main(["train", "dsprites-betavae", "objective.name=signal-at", "objective.at=6", f"objective.sig={sig}",
                   "trainer.steps=20", "trainer.ckpt_every=100", *SMALL[:4], *SMALL[5:], "--run-dir", str(run)])
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    captured = capsys.readouterr()
    assert rc == code
    assert f"untwine train --resume {run}" in captured.err and "Traceback" not in captured.err + captured.out
    assert load_checkpoint(run).step == 7   # the step reached, not the last ckpt_every step (none yet)
    failure = json.loads((run / "failure.json").read_text())   # what `untwine runs` and a study show
    assert failure["kind"] == "interrupted" and failure["resume"] == f"untwine train --resume {run}"
    from untwine.report.rundir import read_run
    from untwine.report.runs import run_state
    assert run_state(read_run(run)).status == "interrupted (resumable)"
    assert main(["train", "--resume", str(run)]) == 0
    assert load_checkpoint(run).step == 20
    assert not (run / "failure.json").exists()                  # this attempt finished
    assert run_state(read_run(run)).status == "finished"


def test_the_nan_guard_advises_resume_only_with_a_checkpoint(tmp_path, capsys, monkeypatch):
    from untwine.cli import main
    import untwine.objectives as objectives
    monkeypatch.setattr(objectives, "build_objective",
                        lambda name, dataset_size=None, latent_dim=None, **p: _NaNAfter(**p))
    args = ["train", "dsprites-betavae", "objective.name=nan-after", "objective.nan_step=3", "trainer.steps=20",
            *SMALL[:4], *SMALL[5:]]
    assert main([*args, "trainer.ckpt_every=10", "--run-dir", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "non-finite loss at step 3" in err and "no checkpoint" in err and "--resume" not in err
    assert main([*args, "trainer.ckpt_every=2", "--run-dir", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "(step 2)" in err and f"untwine train --resume {tmp_path / 'b'}" in err
    failures = [json.loads((tmp_path / r / "failure.json").read_text()) for r in "ab"]
    assert [(f["kind"], f["error"], f["resume"] is None) for f in failures] == \
        [("diverged", "NonFiniteLossError", True), ("diverged", "NonFiniteLossError", False)]


# -- 6: stage 2 measured with eval_preset=none: tests/test_train.py's periodic-evaluation test (both presets)


# -- 5: trainer.compile compiles what a multi-stage step runs --------------------------------------
def test_compile_reaches_what_a_multistage_step_runs(tmp_path, monkeypatch):
    quiet = ["trainer.pictures=false", "trainer.progress=false", "trainer.report=false", "optim.batch_size=4",
             "trainer.precision=32-true", "trainer.channels_last=false", "trainer.eval_preset=none",
             "trainer.multistage_eval=none", "model.arch=mlp", "model.hidden=[16]"]
    s1 = tmp_path / "s1"
    train(load_config("dsprites-betatcvae", ["trainer.steps=2", *quiet]), run_dir=s1)
    ran = []

    def recording_compile(fn, *args, **kwargs):  # stands in for torch.compile: records what runs compiled
        def compiled(*a, **k):
            ran.append(getattr(fn, "__name__", type(fn).__name__))
            return fn(*a, **k)
        return compiled
    monkeypatch.setattr(torch, "compile", recording_compile)
    s = train(load_config("ms-vae", [f"stage1={s1}", "trainer.steps=3", "stage2.width=8", "stage2.w_dim=4",
                                     "trainer.compile=true", *quiet[:-2]]), run_dir=tmp_path / "ms")
    assert s["steps"] == 3 and ran.count("stage2_loss") >= 3
