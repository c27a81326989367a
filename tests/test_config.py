"""Typed configs: presets, overrides, and the errors for wrong keys, types and presets."""
from __future__ import annotations

import pytest

from untwine.errors import ConfigError
from untwine.train.config import (Config, config_to_dict, list_presets, load_config, parse_override,
                                  save_config)

REQUIRED_PRESETS = [f"{d}-{m}" for d in ("dsprites", "shapes3d")
                    for m in ("betavae", "betatcvae", "factorvae", "controlvae", "dynamicvae")]


def test_required_presets_are_shipped():
    names = list_presets()
    assert set(REQUIRED_PRESETS) <= set(names)
    assert "dsprites-dynamicvae-full" in names and {"demo-stage1", "demo-stage2"} <= set(names)
    assert {"ms-vae", "ms-gan", "ms-flow", "ms-gmm"} <= set(names)


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_builds_its_objective_and_controller(name):
    from untwine.train.engine import build_controller_from, build_objective_from
    cfg = load_config(name)
    if cfg.stage2.name != "none":  # a multi-stage preset: its stage 2 builds; the run needs stage1=RUN_DIR
        from untwine.multistage import build_stage2
        assert cfg.objective.name == "multistage" and cfg.data.name == "stage1" and not cfg.stage1.run
        from untwine.data import get_dataset
        from untwine.multistage.gmm import resolve_bits
        params = resolve_bits(cfg.stage2.params, get_dataset("dsprites"))   # bits: auto -> the data's depth
        stage2 = build_stage2(cfg.stage2.name, image_shape=(1, 64, 64), latent_dim=10, **params)
        assert sum(p.numel() for p in stage2.parameters()) > 0
        return
    objective = build_objective_from(cfg, dataset_size=737_280)
    controller = build_controller_from(cfg)
    assert (controller is None) == (cfg.controller.name == "none")
    assert cfg.run.name == name
    if controller is not None:
        assert controller.beta > 0 and controller.set_point() == pytest.approx(0.5)
    assert callable(objective)


def test_design_defaults_in_presets():
    dyn = load_config("dsprites-dynamicvae-full")
    assert dyn.optim.batch_size == 128 and dyn.optim.lr == 1e-4 and dyn.trainer.accelerator == "gpu"
    assert dyn.trainer.steps == 2_000_000
    assert dyn.controller.params == {"beta0": 50, "kp": 0.01, "ki": 0.005, "beta_min": 0.1, "window": 5,
                                     "c_start": 0.5, "c_step": 0.15, "c_period": 6000, "c_ramp": 1000,
                                     "c_max": 20, "time_scale": 1}
    ctl = load_config("dsprites-controlvae")
    assert ctl.controller.params["kp"] == 0.01 and ctl.controller.params["ki"] == 0.001
    assert ctl.controller.params["beta_min"] == 1 and ctl.controller.params["c_period"] == 5000
    beta = load_config("dsprites-betavae")
    assert (beta.model.arch, beta.model.latent_dim, beta.optim.batch_size, beta.optim.lr) == ("conv64", 10, 64, 1e-4)
    assert load_config("shapes3d-factorvae").data.name == "shapes3d"
    # a preset on another base does not inherit the base objective's parameters
    assert load_config("dsprites-factorvae").objective.params == {"gamma": 35}


@pytest.mark.parametrize("text, path, value", [
    ("trainer.steps=3000", ["trainer", "steps"], 3000),
    ("objective.beta=4", ["objective", "beta"], 4),
    ("optim.lr=1e-4", ["optim", "lr"], 1e-4),          # YAML 1.1 reads this as a string; we mean a number
    ("optim.lr=0.5", ["optim", "lr"], 0.5),
    ("trainer.compile=true", ["trainer", "compile"], True),
    ("data.path=null", ["data", "path"], None),
    ("optim.betas=[0.5, 0.9]", ["optim", "betas"], [0.5, 0.9]),
    ("objective.estimator=mss", ["objective", "estimator"], "mss"),
    ("run.dir=runs/a=b", ["run", "dir"], "runs/a=b"),
])
def test_overrides_parse(text, path, value):
    assert parse_override(text) == (path, value)


def test_overrides_apply_with_types():
    cfg = load_config("dsprites-betavae", ["trainer.steps=3000", "objective.beta=6", "optim.lr=1e-3",
                                           "trainer.precision=bf16-mixed", "trainer.devices=auto"])
    assert cfg.trainer.steps == 3000 and cfg.objective.params["beta"] == 6
    assert isinstance(cfg.optim.lr, float) and cfg.optim.lr == 1e-3
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.devices == "auto"
    assert load_config("dsprites-betavae", ["optim.lr=1"]).optim.lr == 1.0  # int accepted for a float


def test_renaming_the_objective_drops_the_old_parameters_in_any_order():
    a = load_config("dsprites-betavae", ["objective.gamma=10", "objective.name=factorvae"])
    b = load_config("dsprites-betavae", ["objective.name=factorvae", "objective.gamma=10"])
    assert a.objective.name == b.objective.name == "factorvae"
    assert a.objective.params == b.objective.params == {"gamma": 10}


@pytest.mark.parametrize("override, words", [
    (["trainer.stpes=5"], ["'trainer.stpes'", "Did you mean 'steps'?", "log_every"]),
    (["optim.batchsize=5"], ["'optim.batchsize'", "'batch_size'"]),
    (["trainr.steps=5"], ["'trainr'", "'trainer'"]),
])
def test_wrong_key_names_the_key_and_the_valid_keys(override, words):
    with pytest.raises(ConfigError) as info:
        load_config("dsprites-betavae", override)
    for w in words:
        assert w in str(info.value)


@pytest.mark.parametrize("override, words", [
    (["trainer.steps=many"], ["'trainer.steps'", "int", "'many'"]),
    (["trainer.steps=1.5"], ["'trainer.steps'", "int", "1.5"]),
    (["trainer.compile=3"], ["'trainer.compile'", "bool"]),
    (["optim.betas=0.9"], ["'optim.betas'", "list"]),
    (["model.latent_dim=true"], ["'model.latent_dim'", "int"]),
    (["trainer.precision=fp8"], ["'trainer.precision'", "bf16-mixed", "'fp8'"]),
    (["model.arch=resnet"], ["'model.arch'", "conv64", "mlp"]),
    (["optim.batch_size=0"], ["'optim.batch_size'", "at least 1"]),
    (["optim.betas=[0.9, 1.5]"], ["'optim.betas'", "[0, 1)"]),
])
def test_wrong_type_or_value_names_key_type_and_value(override, words):
    with pytest.raises(ConfigError) as info:
        load_config("dsprites-betavae", override)
    for w in words:
        assert w in str(info.value)


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ConfigError) as info:
        load_config("dsprites-dynamicva")
    msg = str(info.value)
    assert "unknown preset 'dsprites-dynamicva'" in msg and "did you mean 'dsprites-dynamicvae'" in msg
    for name in REQUIRED_PRESETS:
        assert name in msg


def test_malformed_overrides_and_files(tmp_path):
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config("dsprites-betavae", ["trainer.steps"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    loop = tmp_path / "loop.yaml"
    loop.write_text(f"base: {loop}\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(loop)


def test_yaml_file_with_base_and_round_trip(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("base: dsprites-dynamicvae\ntrainer:\n  steps: 123\ncontroller:\n  time_scale: 0.5\n")
    cfg = load_config(path)
    assert cfg.trainer.steps == 123 and cfg.controller.params["time_scale"] == 0.5
    assert cfg.controller.params["beta0"] == 50 and cfg.run.name == "mine"
    save_config(cfg, tmp_path / "resolved.yaml")
    again = load_config(tmp_path / "resolved.yaml")
    assert config_to_dict(again) == config_to_dict(cfg)
    assert isinstance(load_config(cfg), Config) and config_to_dict(load_config(cfg)) == config_to_dict(cfg)


def test_builder_rejects_unknown_objective_parameter():
    from untwine.train.engine import build_objective_from
    cfg = load_config("dsprites-betavae", ["objective.betta=4"])
    with pytest.raises(ConfigError, match="betta"):
        build_objective_from(cfg, dataset_size=10)


def test_cli_reports_config_errors(capsys):
    from untwine.cli import main
    assert main(["train", "dsprites-betavae", "trainer.stpes=3"]) == 2
    assert "Did you mean 'steps'?" in capsys.readouterr().err
    assert main(["train", "no-such-preset"]) == 2
    assert "dsprites-dynamicvae" in capsys.readouterr().err
    assert main(["presets"]) == 0
    assert "dsprites-dynamicvae-full" in capsys.readouterr().out
