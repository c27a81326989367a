"""Exact resume re-tested for the kinds issue 23 names beyond tests/test_train.py (beta-VAE,
DynamicVAE, FactorVAE) and tests/test_multistage_engine.py (ms-vae): a stage-2 GAN (two optimisers,
stage 1 frozen and owned by the task) and a table's stage 1 (data that supply their likelihood)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from untwine.train import load_checkpoint, load_config, train

QUIET = ["trainer.eval_preset=none", "trainer.pictures=false", "trainer.progress=false", "trainer.report=false",
         "trainer.precision=32-true", "trainer.channels_last=false", "trainer.log_every=2", "trainer.ckpt_every=2",
         "optim.batch_size=4"]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / "last" / "model.safetensors"))


def _same(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    ca, cb = load_checkpoint(a), load_checkpoint(b)
    assert ca.optimizers.keys() == cb.optimizers.keys()
    for name in ca.optimizers:
        for pid, state in ca.optimizers[name]["state"].items():
            for key, value in state.items():
                if isinstance(value, torch.Tensor):
                    assert torch.equal(value, cb.optimizers[name]["state"][pid][key]), (name, pid, key)


def test_a_stage2_gan_resumes_exactly(tmp_path):
    s1 = tmp_path / "s1"
    train(load_config("dsprites-betatcvae", ["trainer.steps=2", "model.arch=mlp", "model.hidden=[16]", *QUIET]),
          run_dir=s1)

    def gan(steps):
        return load_config("ms-gan", [f"stage1={s1}", f"trainer.steps={steps}", "stage2.width=8", "stage2.w_dim=4",
                                      *QUIET])
    train(gan(6), run_dir=tmp_path / "straight")
    train(gan(4), run_dir=tmp_path / "split")
    train(gan(6), run_dir=tmp_path / "split", resume=True)
    assert sorted(load_checkpoint(tmp_path / "split").optimizers) == ["aux", "main"]
    _same(tmp_path / "straight", tmp_path / "split")


@pytest.fixture(scope="module")
def table_parts():
    from untwine.tabular.demo import demo_table
    from untwine.tabular.model import TableData, TabularMultiStage
    from untwine.tabular.transformer import TableTransformer
    model = TabularMultiStage(latent_dim=2, hidden=(16,), steps=6, batch_size=32, progress=False)
    df = demo_table(120, seed=0)
    model.transformer = TableTransformer(seed=0).fit(df)
    rows = model.transformer.transform(df)
    model._build(rows.shape[1])
    return model, rows, TableData


def test_a_table_stage1_resumes_exactly(tmp_path, table_parts):
    model, rows, TableData = table_parts

    def run(directory, steps):
        cfg = load_config(model._stage1_config(directory, len(rows)), [f"trainer.steps={steps}", "trainer.ckpt_every=2"])
        return cfg

    import copy

    def data():  # the likelihood module (learned variances) becomes part of the model a run trains: a fresh one each
        return TableData(rows, copy.deepcopy(model.vae.likelihood))
    train(run(tmp_path / "straight", 6), run_dir=tmp_path / "straight", data=data())
    train(run(tmp_path / "split", 4), run_dir=tmp_path / "split", data=data())
    train(run(tmp_path / "split", 6), run_dir=tmp_path / "split", resume=True, data=data())
    _same(tmp_path / "straight", tmp_path / "split")
