"""Issue 25, item 12: `untwine runs [DIR]` and `untwine runs compare A B ...` as a user meets them:
real runs trained through the CLI, the table read back (plain text, since pytest's output is no tty)."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from untwine.cli import main
from untwine.report.console import number

TINY = ["optim.batch_size=4", "trainer.log_every=1", "trainer.ckpt_every=3", "trainer.pictures=false",
        "trainer.progress=false", "trainer.report=false", "trainer.precision=32-true", "trainer.channels_last=false"]
MLP = ["model.arch=mlp", "model.hidden=[16]"]
# a small real evaluation: MIG and factor R2 on a few hundred images (a fraction of a second)
SMALL_EVAL = "trainer.eval_preset={mig: {num_train: 300}, factor_r2: {num_train: 300, num_test: 100}}"
# the multi-stage section as the engine writes it (trainer.multistage_eval=reconstruction on an ms-vae
# run of this size, recorded): measuring it here takes minutes on a loaded 2-core machine
STAGES = {"stage1": {"reconstruction": {"bce": 2837.7, "bce_floor": 0.0, "bce_excess": 2837.7, "mse": 0.2498,
                                        "psnr": 6.024, "ssim": 0.005654, "elbo_sampled": -2836.8,
                                        "iwae": -2836.8, "iwae_samples": 10}},
          "combined": {"reconstruction": {"bce": 2829.6, "bce_floor": 0.0, "bce_excess": 2829.6, "mse": 0.2488,
                                          "psnr": 6.041, "ssim": 0.00565, "elbo_sampled": -2828.7,
                                          "iwae": -2828.6, "iwae_samples": 10, "reconstruction_applicable": True}},
          "summary": {"bce_ratio": 0.9971, "bce_excess_ratio": 0.9971, "reconstruction_applicable": True},
          "n": 512, "seed": 0}
LONG_AGO = 3 * 3600


def _age(run: Path, seconds: float) -> None:
    """Every file of the run last written `seconds` ago."""
    when = time.time() - seconds
    for p in [run, *run.rglob("*")]:
        os.utime(p, (when, when))


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    tcvae, msvae = root / "a" / "tcvae", root / "a" / "msvae"
    assert main(["train", "dsprites-betatcvae", "trainer.steps=3", *TINY, SMALL_EVAL, "--run-dir", str(tcvae)]) == 0
    assert main(["train", "ms-vae", f"stage1={tcvae}", "stage2.width=8", "stage2.w_dim=4", "trainer.steps=3", *TINY,
                 SMALL_EVAL, "trainer.multistage_eval=none", "--run-dir", str(msvae)]) == 0
    metrics = json.loads((msvae / "metrics.json").read_text())
    (msvae / "metrics.json").write_text(json.dumps({**metrics, "multistage": STAGES}))
    # out of time: trainer.max_seconds stops a long run early and still writes its summary
    assert main(["train", "dsprites-betavae", "trainer.steps=100000", "trainer.max_seconds=1", *TINY, *MLP,
                 "--no-eval", "--run-dir", str(root / "b" / "budget")]) == 0
    # trained to the end, but the summary never came: killed in its final evaluation
    for name, age in (("killed", LONG_AGO), ("ending", 0)):
        run = root / "b" / name
        assert main(["train", "dsprites-betavae", "trainer.steps=3", *TINY, *MLP, "--no-eval",
                     "--run-dir", str(run)]) == 0
        (run / "summary.json").unlink()
        _age(run, age)
    # a run that never started training (config.yaml only), long ago and just now
    for name, age in (("broken", LONG_AGO), ("new", 0)):
        (root / "c" / name).mkdir(parents=True)
        (root / "c" / name / "config.yaml").write_text((tcvae / "config.yaml").read_text())
        _age(root / "c" / name, age)
    (root / "c" / "notes").mkdir()  # a folder that holds no run
    return root


def _row(out: str, run: str) -> str:
    return next(line for line in out.splitlines() if line.startswith(run + " "))


def _values(out: str, label: str) -> list[str]:
    """The cells after a row's label (the label may hold spaces)."""
    return _row(out, label)[len(label):].split()


def test_runs_lists_every_run_with_its_state_and_scores(root, capsys):
    assert main(["runs", str(root)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == f"runs under {root}"
    header = lines[1].split()
    assert header[:6] == ["run", "preset", "method", "steps", "status", "updated"]
    assert "mig" in header and "factor_r2" in header and "held-out" in header
    listed = [line.split()[0] for line in lines[2:] if line[:2] in ("a/", "b/", "c/")]
    # every run, sorted; a multi-stage run's copy of its stage 1's config is not a run
    assert listed == ["a/msvae", "a/tcvae", "b/budget", "b/ending", "b/killed", "c/broken", "c/new"]

    scores = json.loads((root / "a" / "tcvae" / "metrics.json").read_text())
    tcvae = _row(out, "a/tcvae")
    assert "dsprites-betatcvae" in tcvae and " 3/3 " in tcvae and "finished" in tcvae
    assert f" {number(scores['mig']['mig'])} " in tcvae and f" {number(scores['factor_r2']['factor_r2'])} " in tcvae
    msvae = _row(out, "a/msvae")
    # a stage 2: named so, its scores are stage 1's (the same code), its held-out BCE stage 1 -> combined
    assert "stage 2 (vae, w_dim 4) on tcvae" in msvae and "finished" in msvae
    assert f" {number(scores['mig']['mig'])} " in msvae and "2837.7 -> 2829.6" in msvae

    summary = json.loads((root / "b" / "budget" / "summary.json").read_text())
    assert 0 < summary["steps"] < 100_000
    assert f" {summary['steps']}/100000 " in _row(out, "b/budget") and "stopped (time budget)" in _row(out, "b/budget")
    assert "unfinished (no summary)" in _row(out, "b/killed") and "3 h ago" in _row(out, "b/killed")
    assert "evaluating" in _row(out, "b/ending")
    assert "failed (config only)" in _row(out, "c/broken") and "starting" in _row(out, "c/new")
    assert "a stage-2 run's scores are its stage 1's" in out


def test_runs_of_an_empty_or_missing_folder(tmp_path, capsys):
    assert main(["runs", str(tmp_path)]) == 0
    assert f"no runs under {tmp_path}" in capsys.readouterr().out
    assert main(["runs", str(tmp_path / "nowhere")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main(["runs", str(tmp_path), str(tmp_path)]) == 2
    assert "untwine runs compare" in capsys.readouterr().err


def test_compare_puts_the_numbers_side_by_side(root, capsys):
    tcvae, msvae, budget = root / "a" / "tcvae", root / "a" / "msvae", root / "b" / "budget"
    assert main(["runs", "compare", str(tcvae), str(msvae), str(budget)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "runs compared" and lines[1].split() == ["tcvae", "msvae", "budget"]
    scores = json.loads((tcvae / "metrics.json").read_text())
    mig = number(scores["mig"]["mig"])
    assert _values(out, "mig") == [mig, mig, "-"]
    assert _values(out, "config name") == ["dsprites-betatcvae", "ms-vae", "dsprites-betavae"]
    assert _values(out, "metrics protocol") == ["custom", "custom", "-"]
    assert _values(out, "steps") == ["3", "3", str(json.loads((budget / "summary.json").read_text())["steps"])]
    # stage 2's KL is of w, in its own row; stage 1's KL of z beside the single-stage runs
    kl_w = float((msvae / "logs" / "train.csv").read_text().splitlines()[-1].split(",")[3])
    assert _values(out, "final KL of w (stage 2)") == ["-", number(kl_w), "-"]
    assert _values(out, "final KL of z (stage 1)")[1] == "-"
    # the multi-stage run: stage 1 against the combined model, from its metrics
    assert "msvae: stage 1 against the combined model (held-out images)" in out
    assert _values(out, "reconstruction BCE (nats/image)") == ["2837.7", "2829.6", "lower"]
    assert _values(out, "BCE ratio, combined / stage 1") == ["0.9971", "lower"]
    # the HTML report compares the same rows (one shared reading)
    from untwine.report import write_report
    from untwine.report.runs import comparison_rows
    from untwine.report.rundir import read_run
    page = write_report([tcvae, msvae, budget], out=root / "cmp.html").read_text()
    for label, *_ in comparison_rows([read_run(p) for p in (tcvae, msvae, budget)]):
        assert label in out and label.replace("(", "").split()[0] in page


def test_compare_needs_two_runs_and_real_run_directories(root, tmp_path, capsys):
    assert main(["runs", "compare", str(root / "a" / "tcvae")]) == 2
    assert "needs two or more run directories" in capsys.readouterr().err
    assert main(["runs", "compare", str(root / "a" / "tcvae"), str(tmp_path / "nowhere")]) == 2
    assert "is not a run directory" in capsys.readouterr().err
