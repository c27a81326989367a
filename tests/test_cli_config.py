"""Issue 25, items 11 and 13: `untwine config`, `untwine presets` (descriptions), `untwine presets
show` and `untwine train --no-eval`, as a user meets them."""
from __future__ import annotations

import pytest
import yaml

from untwine.cli import main
from untwine.train.config import config_to_dict, list_presets, load_config, preset_description

# presets another area adds (image folders, CelebA) carry their own descriptions
OURS = [p for p in list_presets() if not p.startswith(("images-", "celeba-"))]
DATASET_WORD = {"dsprites": "dSprites", "shapes3d": "Shapes3D"}


def _error_line(err: str) -> str:
    return next(line for line in err.splitlines() if line.startswith("untwine: error:"))


def _yaml_out(capsys) -> dict:
    return yaml.safe_load(capsys.readouterr().out)


def test_config_prints_the_resolved_config_with_overrides(capsys):
    assert main(["config", "dsprites-dipvae-ii", "trainer.steps=123", "objective.lambda_od=5", "--no-eval"]) == 0
    printed = _yaml_out(capsys)
    expected = config_to_dict(load_config("dsprites-dipvae-ii", ["trainer.steps=123", "objective.lambda_od=5"]))
    assert printed["trainer"]["steps"] == 123 and printed["objective"] == {"name": "dipvae-ii", "lambda_od": 5,
                                                                          "lambda_d_factor": 1}
    # --no-eval: no metrics and no multi-stage measures; everything else as the preset resolves
    assert printed["trainer"].pop("eval_preset") == "none" and printed["trainer"].pop("multistage_eval") == "none"
    expected["trainer"].pop("eval_preset"), expected["trainer"].pop("multistage_eval")
    assert printed == expected
    # every key, defaults filled in: what `untwine train` would record in config.yaml
    assert set(printed) >= {"data", "model", "objective", "controller", "optim", "trainer", "run"}
    assert printed["run"]["name"] == "dsprites-dipvae-ii" and printed["optim"]["betas"] == [0.9, 0.999]


def test_config_output_is_a_config_file_train_accepts(tmp_path, capsys):
    assert main(["config", "dsprites-capacity", "objective.c_max=30"]) == 0
    path = tmp_path / "mine.yaml"
    path.write_text(capsys.readouterr().out)
    assert load_config(path).objective.params == {"gamma": 1000, "c_max": 30, "c_steps": 10000}


@pytest.mark.parametrize("argv, says", [
    (["dsprites-betavae", "trainer.stpes=3"], "Did you mean 'steps'?"),
    (["dsprites-betavae", "objective.betta=4"], "unknown parameter(s) ['betta']"),
    (["dsprites-betavae", "trainer.eval_preset=fastt"], "unknown metric 'fastt'"),
    (["ms-vae"], "needs its frozen stage 1: add stage1=RUN_DIR"),
    (["dsprites-betavea"], "did you mean 'dsprites-betavae'"),
    (["trainer.steps=3"], "give a preset or a YAML config first"),
])
def test_config_fails_with_trains_own_error(tmp_path, capsys, argv, says):
    assert main(["config", *argv]) == 2
    captured = capsys.readouterr()
    assert says in captured.err and captured.out == ""
    run = tmp_path / "run"
    assert main(["train", *argv, "--run-dir", str(run)]) == 2
    # the same words (Lightning may log a line of its own first), checked before anything is written
    assert _error_line(capsys.readouterr().err) == _error_line(captured.err)
    assert not (run / "checkpoints").exists()


def test_every_preset_says_what_it_is():
    for name in OURS:
        text = preset_description(name)
        assert len(text) > 30, name
        # the length: a -full preset is a GPU's, the others fit a CPU
        assert ("GPU" in text) == name.endswith("-full") and ("CPU" in text) != name.endswith("-full"), (name, text)
        dataset = load_config(name).data.name
        if dataset in DATASET_WORD:
            assert DATASET_WORD[dataset] in text, (name, text)
    # a description is the preset's own, never its base's
    assert preset_description("shapes3d-betavae") != preset_description("dsprites-betavae")
    assert "description" not in config_to_dict(load_config("shapes3d-betavae"))


def test_presets_table_has_a_description_column(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if "preset" in line and "objective" in line)
    assert "description" in header
    for name in ("dsprites-dipvae-i", "dsprites-capacity-full", "shapes3d-dynamicvae-full"):
        row = next(line for line in out.splitlines() if f" {name} " in line)
        assert preset_description(name)[:20] in row, row


def test_presets_show_prints_the_presets_resolved_config(capsys):
    assert main(["presets", "show", "shapes3d-betatcvae-full"]) == 0
    out = capsys.readouterr().out
    first, _, rest = out.partition("\n")
    assert first == f"# shapes3d-betatcvae-full: {preset_description('shapes3d-betatcvae-full')}"
    shown = yaml.safe_load(rest)
    assert shown == config_to_dict(load_config("shapes3d-betatcvae-full"))
    # the base chain merged: beta-TCVAE from dsprites-betatcvae-full, the GPU length from dsprites-betavae-full
    assert shown["objective"]["name"] == "betatcvae" and shown["trainer"]["steps"] == 300_000
    assert shown["data"]["name"] == "shapes3d"
    assert main(["presets", "show", "shapes3d-betatcvae-ful"]) == 2
    assert "did you mean 'shapes3d-betatcvae-full'" in capsys.readouterr().err


def test_train_no_eval_writes_no_metrics(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "dsprites-betavae", "trainer.steps=2", "trainer.eval_every=1", "optim.batch_size=4",
                 "model.arch=mlp", "model.hidden=[16]", "trainer.pictures=false", "trainer.progress=false",
                 "trainer.report=false", "trainer.precision=32-true", "--no-eval", "--run-dir", str(run)]) == 0
    assert load_config(run / "config.yaml").trainer.eval_preset == "none"
    assert not (run / "metrics.json").exists() and not (run / "metrics.jsonl").exists()
    assert "evaluation" not in capsys.readouterr().out
