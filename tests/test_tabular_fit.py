"""A table fit through the engine (issue 23 item 7), its budget and early stopping (issue 24 item 1),
and a table too small to fit (issue 25 item 5), as a user meets them: `untwine tabular fit`
interrupted by SIGINT in stage 1 or stage 2, resumed with --resume, gives the weights of a fit that
was never interrupted, bit for bit."""
from __future__ import annotations

import json
import os
import shlex
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from untwine import cli
from untwine.tabular import budget
from untwine.tabular.demo import demo_table
from untwine.tabular.model import TabularMultiStage

FIT = ["--steps", "60", "--stage2-steps", "40", "--latent-dim", "2", "--batch-size", "32", "--target", "member"]


# ---- the budget rule and early stopping (values) ---------------------------------------------------
def test_the_budget_follows_rows_and_width():
    # a few hundred rows: the floor, 200 steps (TVAE takes 300 there), or 4 a feature for a wide table
    assert budget.stage1_steps(320, 40, 256) == 200
    assert budget.stage1_steps(320, 150, 256) == 600
    # Adult's size, 27,400 training rows of over 110 features: 110 epochs of 256-row batches
    assert budget.stage1_steps(27_400, 140, 256) == 11_774
    # a narrower table: one epoch per feature (fair's 54: 54 epochs), at least 30
    assert budget.stage1_steps(27_400, 54, 256) == 5_780 and budget.stage1_steps(27_400, 10, 256) == 3_211
    # past Adult's size the cap: TVAE's 300 epochs keep growing, ours stop at 12,000 steps
    assert budget.stage1_steps(300_000, 100, 256) == 12_000
    assert budget.stage1_steps(5_000, 40, 256) == 782          # 40 epochs of 19.5 batches
    assert budget.stage1_steps(50, 20, 256) == 200             # one batch of the whole table a step
    assert [budget.stage2_steps(s) for s in (200, 4_000, 12_000, 20_000)] == [100, 500, 1_500, 1_500]
    assert [budget.evaluation_every(s) for s in (60, 300, 12_000)] == [50, 50, 600]
    assert [budget.validation_rows(n) for n in (40, 320, 3_000, 100_000)] == [0, 64, 300, 5_000]
    assert budget.validation_rows(400, 0.25) == 100 and budget.validation_rows(400, 30) == 30


def test_early_stopping_stops_after_patience_checks_without_improvement():
    stop = budget.EarlyStopping(patience=3)
    for step, loss in [(50, 5.0), (100, 4.0), (150, 3.5), (200, 3.4999), (250, 3.6)]:
        stop.record(step, loss)
        assert not stop.should_stop()
    assert stop.best_step == 150   # 3.4999 is not better by more than 1e-3 of 3.5
    stop.record(300, 3.7)
    assert stop.should_stop() and stop.best == (150, 3.5)
    # a check that improves resets the count; a non-finite loss never is the best
    again = budget.EarlyStopping(patience=2, evaluations=[(1, 2.0), (2, float("nan")), (3, 1.0), (4, 1.5)])
    assert again.best_step == 3 and not again.should_stop()


def test_a_fit_stops_when_validation_stops_improving_and_keeps_the_best_weights(tmp_path, monkeypatch):
    """Validation losses 5, 4, 3, then 3.5, 3.6, 3.7: stage 1 stops after the third check past the
    best (step 150 of a 600-step budget checked every 50), with the weights of step 150."""
    losses = iter([5.0, 4.0, 3.0, 3.5, 3.6, 3.7] + [9.0] * 20)
    monkeypatch.setattr(TabularMultiStage, "_stage1_validation", lambda self, weights, rows: next(losses))
    m = TabularMultiStage(latent_dim=2, hidden=(16,), steps=600, stage2_steps=50, batch_size=32, components=2,
                          rank=1, progress=False, code_prior="normal")
    m.fit(demo_table(200, seed=1), work_dir=tmp_path)
    s1 = m.info["stage1"]
    assert (s1["budget"], s1["trained"], s1["best_step"], s1["stopped_early"]) == (600, 300, 150, True)
    best = load_file(str(tmp_path / "stage1_run" / "best.safetensors"))
    last = load_file(str(tmp_path / "stage1_run" / "checkpoints" / "last" / "model.safetensors"))
    assert all(torch.equal(m.vae.state_dict()[k], best[k]) for k in best)
    assert not all(torch.equal(best[k], last[k]) for k in best)   # the last checkpoint (step 300) is not kept
    record = json.loads((tmp_path / "stage1_run" / "early_stopping.json").read_text())
    assert [s for s, _ in record["evaluations"]] == [50, 100, 150, 200, 250, 300]
    assert m.info["validation_rows"] == 32 and m.info["training_rows"] == 128   # 200 - 40 held out - 32


# ---- resume through the CLI --------------------------------------------------------------------------
def _csv(tmp_path: Path) -> str:
    path = tmp_path / "table.csv"
    if not path.is_file():
        demo_table(150, seed=3).to_csv(path, index=False)
    return str(path)


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    out = {}
    for name in ("stage1", "stage2", "prior"):
        out.update({f"{name}.{k}": v for k, v in load_file(str(model_dir / f"{name}.safetensors")).items()})
    return out


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted fit."""
    tmp = tmp_path_factory.mktemp("straight")
    out = tmp / "model"
    assert cli.main(["tabular", "fit", _csv(tmp), "--out", str(out), *FIT]) == 0
    return _weights(out)


def _interrupt_at(monkeypatch, task: str, at: int) -> None:
    """The task's step `at` sends this process SIGINT (once), as Ctrl-C would."""
    from untwine.train.tasks import table
    cls = getattr(table, task)
    step = cls.step
    sent = []

    def interrupted(self, module, batch, i):
        if i == at and not sent:
            sent.append(i)
            os.kill(os.getpid(), signal.SIGINT)
        return step(self, module, batch, i)
    monkeypatch.setattr(cls, "step", interrupted)


@pytest.mark.parametrize("task,at", [("TableStage1Task", 30), ("TableStage2Task", 20)])
def test_an_interrupted_fit_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path, capsys, monkeypatch,
                                                                            straight, task, at):
    data, out = _csv(tmp_path), tmp_path / "model"
    _interrupt_at(monkeypatch, task, at)
    assert cli.main(["tabular", "fit", data, "--out", str(out), *FIT]) == 130
    err = capsys.readouterr().err
    assert "interrupted (SIGINT)" in err and "untwine train --resume" not in err
    command = err.split("`")[1]   # the command the message gives, run below as a user would paste it
    assert command.startswith(f"untwine tabular fit {data} --out {out} ") and command.endswith(" --resume")
    assert "Traceback" not in err and not (out / "model.json").exists()
    run = out / ("stage1_run" if task == "TableStage1Task" else "stage2_run")
    assert json.loads((run / "checkpoints" / "last" / "state.json").read_text())["step"] == at + 1
    # the stage run's own record of the stop names the fit's resume, not the engine's
    failure = json.loads((run / "failure.json").read_text())
    assert failure["kind"] == "interrupted" and failure["resume"].startswith(f"untwine tabular fit DATA.csv --out {out}")
    # running the fit again is refused with the command that continues it; the engine's resume explains
    assert cli.main(["tabular", "fit", data, "--out", str(out), *FIT]) == 2
    assert command in capsys.readouterr().err
    assert cli.main(["train", "--resume", str(out / "stage1_run")]) == 2
    assert "untwine tabular fit DATA.csv --out MODEL_DIR --resume" in capsys.readouterr().err
    # resuming with other settings is refused before anything changes
    assert cli.main(["tabular", "fit", data, "--out", str(out), *FIT[:-2], "--resume"]) == 2
    assert "target: 'member' -> None" in capsys.readouterr().err
    assert cli.main(shlex.split(command)[1:]) == 0
    resumed = _weights(out)
    assert resumed.keys() == straight.keys()
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)
    assert cli.main(["tabular", "fit", data, "--out", str(out), *FIT, "--resume"]) == 2
    assert "finished fit: nothing to resume" in capsys.readouterr().err


def test_a_two_row_table_is_refused_and_leaves_no_model_directory(tmp_path, capsys):
    path = tmp_path / "two.csv"
    demo_table(2, seed=0).to_csv(path, index=False)
    out = tmp_path / "model"
    assert cli.main(["tabular", "fit", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "the table has 2 rows; a fit needs at least 10" in err and "Traceback" not in err
    assert not out.exists()
