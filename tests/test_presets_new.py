"""Issue 25, item 13: the DIP-VAE and capacity-annealing presets and the Shapes3D -full presets
build and train through `untwine train`, with the papers' / disentanglement_lib's settings."""
from __future__ import annotations

import csv
import math

import pytest

from untwine.cli import main
from untwine.train.config import config_to_dict, load_config

NEW_CPU = ("dsprites-dipvae-i", "dsprites-dipvae-ii", "dsprites-capacity")
NEW_FULL = (*(f"{p}-full" for p in NEW_CPU),
            *(f"shapes3d-{m}-full" for m in ("betavae", "betatcvae", "factorvae", "controlvae", "dynamicvae")))
# a few steps of the preset's own network on a CPU: only the batch, the length and the device change
TINY = ["trainer.steps=2", "optim.batch_size=4", "trainer.log_every=1", "trainer.ckpt_every=2",
        "trainer.pictures=false", "trainer.progress=false", "trainer.report=false", "trainer.precision=32-true",
        "trainer.channels_last=false", "trainer.accelerator=cpu"]
# the term each objective logs beside recon and kl (the objective in use, not a beta-VAE fallback)
OWN_TERM = {"dipvae-i": "dip", "dipvae-ii": "dip", "capacity": "capacity"}


def _rows(run) -> list[dict]:
    with open(run / "logs" / "train.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("preset", NEW_CPU + NEW_FULL)
def test_new_preset_trains_a_few_steps(tmp_path, preset):
    run = tmp_path / preset
    assert main(["train", preset, *TINY, "--no-eval", "--run-dir", str(run)]) == 0
    recorded = load_config(run / "config.yaml")
    preset_cfg = load_config(preset)
    assert recorded.objective == preset_cfg.objective and recorded.controller == preset_cfg.controller
    assert recorded.data.name == preset_cfg.data.name
    assert recorded.trainer.eval_preset == "none"
    rows = _rows(run)
    assert [int(r["step"]) for r in rows] == [1, 2]
    assert all(math.isfinite(float(r["loss"])) for r in rows)
    term = OWN_TERM.get(recorded.objective.name)
    if term:
        assert all(math.isfinite(float(r[term])) for r in rows)
    if recorded.objective.name == "capacity":  # C(t) = c_max * t / c_steps, t the 0-based step index
        p = recorded.objective.params
        assert float(rows[1]["capacity"]) == pytest.approx(p["c_max"] * 1 / p["c_steps"])


def test_dipvae_and_capacity_presets_follow_the_papers_and_disentanglement_lib():
    from untwine.train.factory import build_objective_from
    for variant, factor in (("i", 10.0), ("ii", 1.0)):
        for name in (f"dsprites-dipvae-{variant}", f"dsprites-dipvae-{variant}-full"):
            objective = build_objective_from(load_config(name), dataset_size=737_280)
            assert objective.name == f"dipvae-{variant}"
            assert (objective.lambda_od, objective.lambda_d) == (10.0, 10.0 * factor)
    full = build_objective_from(load_config("dsprites-capacity-full"), dataset_size=737_280)
    assert (full.gamma, full.c_max, full.c_steps) == (1000.0, 25.0, 100_000)
    cpu = load_config("dsprites-capacity")
    capacity = build_objective_from(cpu, dataset_size=737_280)
    # the CPU budget reaches full capacity half way, then trains there
    assert capacity.capacity(cpu.trainer.steps // 2) == 25.0 and capacity.capacity(cpu.trainer.steps // 4) == 12.5
    for name in ("dsprites-dipvae-i-full", "dsprites-dipvae-ii-full", "dsprites-capacity-full"):
        cfg = load_config(name)
        assert (cfg.trainer.steps, cfg.optim.batch_size, cfg.optim.lr, cfg.trainer.accelerator) == \
               (300_000, 64, 1e-4, "gpu")


@pytest.mark.parametrize("method", ["betavae", "betatcvae", "factorvae", "controlvae", "dynamicvae"])
def test_shapes3d_full_is_the_dsprites_full_protocol_on_shapes3d(method):
    shapes, sprites = (config_to_dict(load_config(f"{d}-{method}-full")) for d in ("shapes3d", "dsprites"))
    assert shapes.pop("data")["name"] == "shapes3d" and sprites.pop("data")["name"] == "dsprites"
    assert shapes.pop("run")["name"] == f"shapes3d-{method}-full"
    sprites.pop("run")
    assert shapes == sprites
    # and the GPU length, not the CPU preset's
    assert load_config(f"shapes3d-{method}-full").trainer.steps > load_config(f"shapes3d-{method}").trainer.steps
