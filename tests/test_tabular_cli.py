import json

import numpy as np
import pandas as pd
import pytest

from untwine import cli
from untwine.tabular.demo import demo_table


def test_the_tabular_commands_are_wired_into_untwine():
    assert cli.COMMANDS["tabular"][0] == "untwine.tabular.commands"


def _csv(path, df):
    df.to_csv(path, index=False)
    return str(path)


def _error(capsys, argv):
    assert cli.main(argv) == 2
    return capsys.readouterr().err


def test_fit_errors_are_clear(tmp_path, capsys):
    ok = demo_table(60)
    bad = tmp_path / "bad.csv"
    bad.write_text('a,b\n1,"unclosed\n2,3\n')
    assert "not a readable CSV" in _error(capsys, ["tabular", "fit", str(bad), "--out", str(tmp_path / "m")])
    assert "does not exist" in _error(capsys, ["tabular", "fit", str(tmp_path / "none.csv"), "--out", "m"])
    empty = tmp_path / "empty.csv"
    empty.write_text("a,b\n")
    assert "no data rows" in _error(capsys, ["tabular", "fit", str(empty), "--out", "m"])
    allnan = _csv(tmp_path / "nan.csv", ok.assign(blank=np.nan))
    assert "'blank' is entirely missing" in _error(capsys, ["tabular", "fit", allnan, "--out", "m", "--steps", "1"])
    data = _csv(tmp_path / "ok.csv", ok)
    assert "target 'nope'" in _error(capsys, ["tabular", "fit", data, "--out", "m", "--target", "nope"])
    assert "--type names column 'zz'" in _error(capsys, ["tabular", "fit", data, "--out", "m", "--type", "zz=categorical"])


@pytest.mark.slow
def test_evaluate_writes_json_and_png(tmp_path, capsys):
    real = _csv(tmp_path / "real.csv", demo_table(150, seed=0))
    synth = _csv(tmp_path / "synth.csv", demo_table(150, seed=1))
    out = tmp_path / "ev"
    assert cli.main(["tabular", "evaluate", real, synth, "--out", str(out)]) == 0
    result = json.loads((out / "evaluation.json").read_text())
    assert 0.7 < result["quality"]["score"] <= 1.0 and set(result["c2st"]) == {"logistic", "hgb"}
    assert (out / "column_shapes.png").stat().st_size > 1000
    # a constant column is kept and scores as a constant
    assert result["quality"]["columns"]["country"][1] == pytest.approx(1.0)
    assert "lacks columns" in _error(capsys, ["tabular", "evaluate", real,
                                              _csv(tmp_path / "s2.csv", demo_table(50).drop(columns="job")),
                                              "--out", str(out)])


def test_sample_errors(tmp_path, capsys):
    assert "not a saved tabular model" in _error(capsys, ["tabular", "sample", str(tmp_path), "-n", "5",
                                                          "--out", str(tmp_path / "s.csv")])


@pytest.mark.slow
def test_fit_sample_evaluate_end_to_end(tmp_path, capsys):
    df = demo_table(200)
    df["income"] = df["income"].round(1)  # written with one decimal: the samples keep that precision
    data = _csv(tmp_path / "train.csv", df)
    holdout = _csv(tmp_path / "holdout.csv", demo_table(200, seed=9))
    model = tmp_path / "model"
    assert cli.main(["tabular", "fit", data, "--target", "member", "--out", str(model), "--steps", "30",
                     "--stage2-steps", "20", "--latent-dim", "3"]) == 0
    for name in ("model.json", "fit.json", "traversal_heatmap.png", "latent_column_mi.png", "stage_variance.png", "stage1.safetensors"):
        assert (model / name).is_file(), name
    out = tmp_path / "synth.csv"
    assert cli.main(["tabular", "sample", str(model), "-n", "40", "--out", str(out), "--condition", "job=pilot",
                     "--condition", "grade="]) == 0
    rows = pd.read_csv(out)
    assert len(rows) == 40 and (rows["job"] == "pilot").all() and rows["grade"].isna().all()
    assert "--condition names column 'zz'" in _error(capsys, ["tabular", "sample", str(model), "-n", "3", "--out",
                                                              str(out), "--condition", "zz=1"])
    assert cli.main(["tabular", "sample", str(model), "-n", "100", "--out", str(out)]) == 0
    written = pd.read_csv(out, dtype=str)["income"].dropna()
    assert written.str.fullmatch(r"-?\d+(\.\d)?").all(), written.head().tolist()
    page = (model / "report.html").read_text()
    for name in ("traversal_heatmap.png", "latent_column_mi.png", "stage_variance.png"):
        assert name in page, name                      # the fit's pictures are in its report
    # the model's report: titled by the model, not "stage1_run"; a table's rows, not images
    assert "<title>untwine tabular model: model</title>" in page and "rows per second" in page
    assert "images per second" not in page
    assert cli.main(["tabular", "evaluate", data, str(out), "--target", "member", "--holdout", holdout,
                     "--out", str(tmp_path / "ev"), "--model", str(model)]) == 0
    result = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert {"quality", "c2st", "utility", "privacy"} <= set(result)
    # evaluate --model adds the scores and the column-shape picture to the model's report
    metrics = json.loads((model / "stage1_run" / "metrics.json").read_text())
    assert metrics["synthetic"]["quality"]["quality"] == pytest.approx(result["quality"]["score"])
    assert metrics["synthetic"]["c2st_auc"]["hgb"] == pytest.approx(result["c2st"]["hgb"])
    assert metrics["synthetic"]["train_synthetic_test_real"]["hgb_auc"] == pytest.approx(
        result["utility"]["synthetic"]["hgb"]["auc"])
    page = (model / "report.html").read_text()
    assert "column_shapes.png" in page and "c2st_auc" in page
    assert "is not a model directory" in _error(capsys, ["tabular", "evaluate", data, str(out), "--out",
                                                         str(tmp_path / "ev2"), "--model", str(tmp_path)])


def test_fit_options_left_out_take_the_models_defaults(tmp_path, monkeypatch):
    """The command fits the benchmarked model: an option not given is TabularMultiStage's default."""
    import inspect

    from untwine.tabular.model import TabularMultiStage
    seen = {}

    class Stop(Exception):
        pass

    def fake_fit(self, df, target=None, work_dir=None, resume=False):
        seen.update(self.params)
        raise Stop

    monkeypatch.setattr(TabularMultiStage, "fit", fake_fit)
    data = _csv(tmp_path / "train.csv", demo_table(50))
    with pytest.raises(Stop):
        cli.main(["tabular", "fit", data, "--out", str(tmp_path / "m")])
    defaults = inspect.signature(TabularMultiStage.__init__).parameters
    for key in ("steps", "stage2_steps", "latent_dim", "batch_size", "code_prior"):
        assert seen[key] == defaults[key].default, key
    assert seen["code_prior"] == "mixture" and seen["controller_params"] == {"beta": 0.25}
    with pytest.raises(Stop):
        cli.main(["tabular", "fit", data, "--out", str(tmp_path / "m"), "--steps", "7", "--latent-dim", "3"])
    assert seen["steps"] == 7 and seen["latent_dim"] == 3 and seen["stage2_steps"] == defaults["stage2_steps"].default
    with pytest.raises(Stop):
        cli.main(["tabular", "fit", data, "--out", str(tmp_path / "m"), "--code-prior", "normal"])
    assert seen["code_prior"] == "normal"


# ---- bad input (issue 24) ------------------------------------------------------------------------------
def test_read_csv_keeps_na_words_as_categories_and_refuses_other_delimiters(tmp_path):
    from untwine.errors import DataError
    from untwine.tabular.commands import read_csv
    path = tmp_path / "t.csv"
    path.write_text("region,sales,note\nNA,1.5,None\nEU,NA,x\nNone,?,\nAS,4,y\n")
    df = read_csv(str(path))
    # "NA" (North America) and "None" are categories of a text column, missing values in a numeric one
    assert df["region"].tolist() == ["NA", "EU", "None", "AS"]
    assert df["sales"].dtype == np.float64 and df["sales"].isna().tolist() == [False, True, True, False]
    assert df["note"].tolist()[:2] == ["None", "x"] and pd.isna(df["note"].iloc[2])
    semi = tmp_path / "semi.csv"
    semi.write_text("a;b;c\n1;2;x\n3;4;y\n")
    with pytest.raises(DataError, match=r"semi.csv.*one column.*semicolons.*sep=';'"):
        read_csv(str(semi))


def test_evaluate_needs_a_holdout_for_a_target_and_takes_types(tmp_path, capsys):
    real = _csv(tmp_path / "real.csv", demo_table(80, seed=0))
    synth = _csv(tmp_path / "synth.csv", demo_table(80, seed=1))
    err = _error(capsys, ["tabular", "evaluate", real, synth, "--target", "member", "--out", str(tmp_path / "e")])
    assert "--target 'member' needs --holdout" in err
    err = _error(capsys, ["tabular", "evaluate", real, synth, "--target", "income", "--holdout", real,
                          "--out", str(tmp_path / "e")])
    assert "--type income=categorical" in err                    # the advice names an option that exists
    assert cli.main(["tabular", "evaluate", real, synth, "--type", "age=categorical", "--out",
                     str(tmp_path / "e")]) == 0
    result = json.loads((tmp_path / "e" / "evaluation.json").read_text())
    assert result["quality"]["columns"]["age"][0] == "TVComplement"
    assert "--type names column 'zz'" in _error(capsys, ["tabular", "evaluate", real, synth, "--type", "zz=boolean"])


def test_fit_reads_metadata_and_date_formats(tmp_path, monkeypatch, capsys):
    from untwine.tabular.model import TabularMultiStage
    seen = {}

    class Stop(Exception):
        pass

    def fake_fit(self, df, target=None, work_dir=None, resume=False):
        seen.update(self.params)
        raise Stop

    monkeypatch.setattr(TabularMultiStage, "fit", fake_fit)
    df = demo_table(60)
    df["joined"] = pd.to_datetime(df["joined"]).dt.strftime("%d/%m/%Y")
    data = _csv(tmp_path / "train.csv", df)
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"columns": {"age": {"kind": "continuous"}, "joined": {"kind": "datetime",
                                                                                     "format": "%d/%m/%Y"}}}))
    with pytest.raises(Stop):
        cli.main(["tabular", "fit", data, "--out", str(tmp_path / "m"), "--metadata", str(meta),
                  "--type", "job=categorical"])
    assert seen["column_types"] == {"age": "continuous", "joined": "datetime", "job": "categorical"}
    assert seen["formats"] == {"joined": "%d/%m/%Y"}
    with pytest.raises(Stop):
        cli.main(["tabular", "fit", data, "--out", str(tmp_path / "m"), "--date-format", "joined=%m/%d/%Y"])
    assert seen["column_types"] == {"joined": "datetime"} and seen["formats"] == {"joined": "%m/%d/%Y"}
    meta.write_text(json.dumps({"columns": {"nope": {"kind": "integer"}}}))
    assert "--metadata" in _error(capsys, ["tabular", "fit", data, "--out", str(tmp_path / "m"), "--metadata",
                                           str(meta)])
    assert "does not exist" in _error(capsys, ["tabular", "fit", data, "--out", str(tmp_path / "m"), "--metadata",
                                               str(tmp_path / "none.json")])


def test_sample_prints_the_effective_sample_size_and_refuses_bad_conditions(tmp_path, capsys):
    import torch

    from untwine.tabular.model import TabularMultiStage
    from untwine.tabular.transformer import TableTransformer
    table = demo_table(200, seed=0)
    m = TabularMultiStage(latent_dim=2, hidden=(16,), components=2, rank=2, progress=False, code_prior="normal")
    m.transformer = TableTransformer().fit(table)
    torch.manual_seed(0)
    m._build(m.transformer.output_dim)
    m.save(tmp_path / "m")
    out = tmp_path / "s.csv"
    capsys.readouterr()
    assert cli.main(["tabular", "sample", str(tmp_path / "m"), "-n", "30", "--out", str(out), "--condition",
                     "member=true", "--condition", "age=40"]) == 0
    assert "effective sample size under the conditions" in capsys.readouterr().out
    rows = pd.read_csv(out)
    assert rows["member"].all() and (rows["age"] == 40).all()
    assert "outside the training range of 'age'" in _error(capsys, ["tabular", "sample", str(tmp_path / "m"), "-n",
                                                                    "5", "--out", str(out), "--condition", "age=500"])
    (tmp_path / "m" / "stage2.safetensors").write_bytes(b"garbage")
    assert "fit the model again" in _error(capsys, ["tabular", "sample", str(tmp_path / "m"), "-n", "5",
                                                    "--out", str(out)])
