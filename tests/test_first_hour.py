"""What a user sees in the first hour (issue 25): the long phases after training speak, and a new
run into a directory an aborted run left starts clean."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

from untwine.cli import main

from test_run_state import SMALL


def _train(run: Path, *extra: str, steps: int = 4) -> None:
    assert main(["train", "dsprites-betavae", f"trainer.steps={steps}", *SMALL, *extra, "--run-dir", str(run)]) == 0


def _steps_logged(run: Path) -> list[int]:
    with open(run / "logs" / "train.csv") as f:
        return [int(r["step"]) for r in csv.DictReader(f)]


# -- 15: a run aborted before its first checkpoint leaves nothing to resume; a new run starts clean --
def test_a_new_run_into_an_aborted_runs_directory_keeps_none_of_its_logs(tmp_path):
    run = tmp_path / "run"
    _train(run, "trainer.log_every=1", steps=6)
    # what a run killed before its first checkpoint leaves: config, logs, TensorBoard events
    shutil.rmtree(run / "checkpoints")
    old_events = sorted((run / "logs" / "tensorboard").rglob("events.*"))
    assert old_events and _steps_logged(run)[-1] == 6
    (run / "notes.txt").write_text("mine")
    _train(run, "trainer.log_every=1", steps=3)
    assert _steps_logged(run) == [1, 2, 3]                       # not 1..6, then 1..3
    events = sorted((run / "logs" / "tensorboard").rglob("events.*"))
    assert len(events) == 1 and events[0] not in old_events
    assert (run / "notes.txt").read_text() == "mine"            # not a run's file: kept


def test_a_directory_without_a_runs_config_is_never_cleared(tmp_path):
    from untwine.train.session import clear_stale_outputs
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "mine.txt").write_text("x")
    assert clear_stale_outputs(tmp_path) == []
    assert (tmp_path / "logs" / "mine.txt").is_file()


# -- 3: the end-of-run evaluation and `untwine evaluate` show their phases ------------------------
def test_the_final_evaluation_and_untwine_evaluate_name_each_phase(tmp_path, capsys):
    run = tmp_path / "run"
    shown = [o for o in SMALL if not o.startswith(("trainer.eval_preset", "trainer.progress"))]
    assert main(["train", "dsprites-betavae", "trainer.steps=2", *shown, "trainer.eval_preset=fast",
                 "trainer.progress=true", "--run-dir", str(run)]) == 0
    out = capsys.readouterr().out
    assert "evaluate: encode: images 0.." in out               # encoding counts images
    for metric in ("mig", "dci", "sap"):
        assert f"evaluate: {metric} (" in out                    # as each metric begins
    assert f"pictures: {run / 'pictures'}" not in out            # trainer.pictures=false
    assert main(["evaluate", str(run), "--metrics", "fast"]) == 0
    out = capsys.readouterr().out
    assert "evaluate: mig (" in out and "so far)" in out
    # quiet where asked: a run with trainer.progress=false prints no phase
    _train(tmp_path / "quiet", "trainer.eval_preset=fast", steps=2)
    assert "evaluate:" not in capsys.readouterr().out


# -- 5: few samples: one clear error before any metric runs, no scikit-learn warnings --------------
def test_evaluate_on_forty_rows_gives_one_clear_error_and_no_warnings(tmp_path, capfd):
    import numpy as np
    rng = np.random.default_rng(0)
    factors = np.c_[rng.integers(0, 10, size=40), rng.integers(0, 30, size=40)]
    codes = np.c_[factors + 0.1 * rng.normal(size=(40, 2)), rng.normal(size=(40, 3))]
    np.savez(tmp_path / "codes.npz", codes=codes, factors=factors)
    assert main(["evaluate", str(tmp_path / "codes.npz")]) == 2
    captured = capfd.readouterr()
    assert "Warning" not in captured.err and "Warning" not in captured.out
    assert "test classes never seen in training" in captured.err and "--metrics" in captured.err
    # without the metric that needs every class in training, the same rows are scored, quietly
    assert main(["evaluate", str(tmp_path / "codes.npz"), "--metrics", "mig,dci,sap"]) == 0
    captured = capfd.readouterr()
    assert "Warning" not in captured.err and "mig" in captured.out


# -- the report shows a resumed run's changes beside its starting config (issue 23) -----------------
def test_the_report_shows_what_a_resume_changed(tmp_path):
    run = tmp_path / "run"
    _train(run, steps=2)
    assert main(["train", "--resume", str(run), "trainer.steps=4", "objective.beta=2"]) == 0
    assert main(["report", str(run)]) == 0
    html = (run / "report.html").read_text()
    assert "config.history.yaml" in html
    history = html.split("config.history.yaml", 1)[1]
    assert "objective.beta: 2" in history and "step: 2" in history
