"""Multi-stage runs through the one engine: stage 1 frozen and bit-identical, representation equal,
resume equals uninterrupted, the GAN's two optimisers, and clear errors for a bad stage-1 run."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from untwine.errors import CheckpointError, ConfigError
from untwine.train import load_config, load_run, train

QUIET = ["trainer.eval_preset=none", "trainer.pictures=false", "trainer.progress=false", "trainer.report=false",
         "trainer.precision=32-true", "trainer.channels_last=false", "trainer.log_every=2", "trainer.ckpt_every=2"]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / "last" / "model.safetensors"))


@pytest.fixture(scope="module")
def stage1_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("stage1") / "run"
    train(load_config("dsprites-betatcvae", ["trainer.steps=2", "optim.batch_size=4", *QUIET]), run_dir=run)
    return run


def _stage2(variant: str, stage1: Path, steps: int, *extra: str):
    small = {"vae": ["stage2.width=8", "stage2.w_dim=4"], "gan": ["stage2.width=8", "stage2.w_dim=4"],
             "flow": ["stage2.hidden=8", "stage2.blocks=1", "stage2.levels=2"],
             "gmm": ["stage2.components=2", "stage2.rank=2", "stage2.hidden=8"]}[variant]
    return load_config(f"ms-{variant}", [f"stage1={stage1}", f"trainer.steps={steps}", "optim.batch_size=4",
                                         *QUIET, *small, *extra])


@pytest.mark.parametrize("variant", ["vae", "gan"])
def test_stage1_stays_bit_identical_and_the_representation_is_stage1s(tmp_path, stage1_run, variant):
    before = _weights(stage1_run)
    files_before = {f: f.read_bytes() for f in sorted(stage1_run.rglob("*")) if f.is_file()}
    s = train(_stage2(variant, stage1_run, 4), run_dir=tmp_path / variant)
    assert s["steps"] == 4 and np.isfinite(s["final_terms"]["loss"])
    after = _weights(tmp_path / variant)
    stage1_after = {k[len("stage1."):]: v for k, v in after.items() if k.startswith("stage1.")}
    assert stage1_after.keys() == before.keys()
    assert all(torch.equal(before[k], stage1_after[k]) for k in before)  # frozen: bit for bit
    assert any(k.startswith("stage2.") for k in after)
    # the stage-1 run itself untouched: every file, byte for byte, and no file added
    assert {f: f.read_bytes() for f in sorted(stage1_run.rglob("*")) if f.is_file()} == files_before
    combined, first = load_run(tmp_path / variant), load_run(stage1_run)
    x = combined.data.batch(np.arange(0, 737280, 92160))
    assert torch.equal(combined.model.representation(x), first.model.representation(x))
    if variant == "gan":  # the discriminator has its own optimiser state in the checkpoint
        from untwine.train import load_checkpoint
        assert "aux" in load_checkpoint(tmp_path / variant).optimizers


def test_stage2_resume_equals_uninterrupted(tmp_path, stage1_run):
    train(_stage2("vae", stage1_run, 6), run_dir=tmp_path / "straight")
    train(_stage2("vae", stage1_run, 4), run_dir=tmp_path / "split")
    train(_stage2("vae", stage1_run, 6), run_dir=tmp_path / "split", resume=True)
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "split")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_multistage_run_loads_after_its_stage1_run_moved(tmp_path, stage1_run):
    import shutil
    moved = tmp_path / "stage1-copy"
    shutil.copytree(stage1_run, moved)
    train(_stage2("vae", moved, 2), run_dir=tmp_path / "ms")
    shutil.rmtree(moved)
    run = load_run(tmp_path / "ms")
    x = run.data.batch(np.arange(3))
    assert run.model.reconstruct(x).shape == x.shape


def test_bad_stage1_runs_are_named_with_the_mismatch(tmp_path, stage1_run):
    with pytest.raises(CheckpointError, match="missing"):
        train(_stage2("vae", tmp_path / "nowhere", 2), run_dir=tmp_path / "a")
    with pytest.raises(ConfigError, match="data.name='dsprites'.*shapes3d"):
        train(_stage2("vae", stage1_run, 2, "data.name=shapes3d"), run_dir=tmp_path / "b")
    ms = tmp_path / "ms"
    train(_stage2("vae", stage1_run, 2), run_dir=ms)
    with pytest.raises(ConfigError, match="itself a multi-stage run"):
        train(_stage2("vae", ms, 2), run_dir=tmp_path / "c")
    import shutil
    corrupt = tmp_path / "corrupt"
    shutil.copytree(stage1_run, corrupt)
    (corrupt / "checkpoints" / "last" / "model.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(CheckpointError, match="stage-1 run"):
        train(_stage2("vae", corrupt, 2), run_dir=tmp_path / "d")
    with pytest.raises(ConfigError, match="stage2.name"):
        load_config("dsprites-betavae", [f"stage1={stage1_run}"])
    with pytest.raises(ConfigError, match="objective.name=multistage"):
        train(_stage2("vae", stage1_run, 2, "objective.name=betavae"), run_dir=tmp_path / "e")


def test_an_image_shape_stage1_cannot_read_is_refused(tmp_path, stage1_run):
    from untwine.data.arrays import ArrayGroundTruthData
    from untwine.data.factors import FactorSpace
    space = FactorSpace.from_values({"x": np.arange(4.0)})
    data = ArrayGroundTruthData("dsprites", space, np.zeros((4, 32, 32, 1), np.uint8))
    with pytest.raises(ConfigError, match="64x64"):
        train(_stage2("vae", stage1_run, 2), run_dir=tmp_path / "a", data=data)


def test_a_multistage_run_scores_both_stages_and_the_same_disentanglement(tmp_path, stage1_run):
    mig = "trainer.eval_preset={mig: {num_train: 300}}"
    ms = tmp_path / "ms"
    s = train(_stage2("vae", stage1_run, 2, mig, "trainer.multistage_eval=reconstruction"), run_dir=ms)
    stages = s["metrics"]["multistage"]
    for stage in ("stage1", "combined"):
        assert {"bce", "mse", "psnr", "ssim", "elbo_sampled", "iwae"} <= set(stages[stage])
        assert "elbo" not in stages[stage] and stages[stage]["iwae"] >= stages[stage]["elbo_sampled"]
    assert stages["summary"]["reconstruction_applicable"] is True
    assert stages["summary"]["bce_ratio"] == pytest.approx(stages["combined"]["bce"] / stages["stage1"]["bce"])
    assert stages["summary"]["bce_excess_ratio"] == pytest.approx(
        stages["combined"]["bce_excess"] / stages["stage1"]["bce_excess"])
    from untwine.metrics import evaluate
    first = load_run(stage1_run)
    alone = evaluate(first.model.encode, first.data, metrics={"mig": {"num_train": 300}}, seed=0)
    assert s["metrics"]["mig"]["mig"] == alone["mig"]["mig"]  # stage 2 cannot change the representation


def test_untwine_evaluate_on_a_multistage_run_reports_both_stages(tmp_path, stage1_run, capsys, monkeypatch):
    import json
    from untwine.cli import main

    class _Classifier:  # a stand-in for the factor classifier (training one takes minutes)
        accuracy, config = {}, {}

        def features(self, x):
            return x.flatten(1)[:, ::64].float()

        def predict(self, x):
            return (x.flatten(1)[:, :5] > 0.5).long()

        def eval(self):
            return self

        def train(self, mode=True):
            return self

        training = False

        def parameters(self):
            return iter([torch.zeros(1)])

    import untwine.multistage.classifier as clf
    monkeypatch.setattr(clf, "get_factor_classifier", lambda data, **kw: _Classifier())
    ms = tmp_path / "ms"
    train(_stage2("vae", stage1_run, 2), run_dir=ms)
    out = tmp_path / "scores.json"
    assert main(["evaluate", str(ms), "--metrics", "mig", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "stage 1 against the combined model" in printed and "reconstruction BCE" in printed
    saved = json.loads(out.read_text())
    assert {"stage1", "combined", "summary"} <= set(saved["multistage"]) and "mig" in saved


def test_a_gaussian_stage1_carries_a_stage2_through_checkpoint_resume_and_load(tmp_path):
    # stage 1's Gaussian likelihood holds a tensor (log_var); registered twice in the combined model,
    # safetensors refused the checkpoint ("share memory") at the first save
    s1 = tmp_path / "s1"
    train(load_config("dsprites-betatcvae", ["model.likelihood=gaussian", "trainer.steps=2", "optim.batch_size=4",
                                             *QUIET]), run_dir=s1)
    ms = tmp_path / "ms"
    train(_stage2("vae", s1, 2), run_dir=ms)
    s = train(_stage2("vae", s1, 4), run_dir=ms, resume=True)
    assert s["steps"] == 4 and np.isfinite(s["final_terms"]["loss"])
    weights = _weights(ms)
    assert "stage1.likelihood.log_var" in weights and not any(k.startswith("likelihood.") for k in weights)
    run = load_run(ms)
    assert type(run.model.likelihood).__name__ == "GaussianLikelihood"  # still stage 1's, read through
    x = run.data.batch(np.arange(3))
    assert run.model.reconstruct(x).shape == x.shape
