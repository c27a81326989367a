"""What a new user meets on a fresh machine: the README's chain on an empty cache, through the CLI.

The chain trains at tiny length but takes every default path: the stage-1 preset with its
end-of-run metrics, ms-vae and ms-gan with the default (full) multi-stage evaluation, which trains
the factor classifier inside the engine's no_grad evaluation because the cache is empty (the crash
of issue 22), `untwine evaluate`, `untwine report` and the tables' fit and sample. The one
concession to the suite's budget: the classifier trains 40 steps instead of 2,000.
"""
from __future__ import annotations

import functools
import json

import numpy as np
import pytest

from untwine.cli import main


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    cache = tmp_path / "empty-cache"
    monkeypatch.setenv("UNTWINE_CACHE", str(cache))
    from untwine.multistage import classifier
    monkeypatch.setattr(classifier, "get_factor_classifier",
                        functools.partial(classifier.get_factor_classifier, steps=40, held_out=256))
    return cache


def test_the_readme_chain_on_an_empty_cache(tmp_path, empty_cache, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert not empty_cache.exists()
    quick = ["trainer.progress=false", "optim.batch_size=16"]
    assert main(["train", "dsprites-betatcvae", "trainer.steps=20", *quick, "--run-dir", "s1"]) == 0
    for variant in ("ms-vae", "ms-gan"):
        assert main(["train", variant, "stage1=s1", "trainer.steps=20", *quick, "--run-dir", variant]) == 0
        metrics = json.loads((tmp_path / variant / "metrics.json").read_text())
        stages = metrics["multistage"]
        # the default evaluation ran in full: both stages' reconstruction, samples, fidelity, invariance
        assert {"reconstruction", "samples", "factor_accuracy"} <= set(stages["stage1"]), stages["stage1"]
        assert {"reconstruction", "samples", "factor_accuracy", "w_invariance"} <= set(stages["combined"])
        assert metrics["mig"] == json.loads((tmp_path / "s1" / "metrics.json").read_text())["mig"]
    assert list((empty_cache / "classifiers").glob("dsprites-*")), "the classifier was trained and cached"
    assert main(["evaluate", "ms-vae", "--metrics", "mig", "--out", "scores.json"]) == 0
    assert "mig" in json.loads((tmp_path / "scores.json").read_text())
    assert main(["report", "s1", "ms-vae", "ms-gan", "--out", "compare.html"]) == 0
    assert (tmp_path / "compare.html").stat().st_size > 10_000

    from untwine.tabular.demo import demo_table
    demo_table(200).to_csv(tmp_path / "table.csv", index=False)
    assert main(["tabular", "fit", "table.csv", "--out", "model", "--steps", "30", "--stage2-steps", "20"]) == 0
    assert main(["tabular", "sample", "model", "-n", "50", "--out", "synthetic.csv"]) == 0
    import pandas as pd
    synthetic, real = pd.read_csv(tmp_path / "synthetic.csv"), pd.read_csv(tmp_path / "table.csv")
    assert len(synthetic) == 50 and list(synthetic.columns) == list(real.columns)
    assert set(synthetic["job"].dropna()) <= set(real["job"].dropna())      # categories stay categories
    assert not np.isinf(synthetic.select_dtypes("number").to_numpy()).any()  # NaN: a modelled missing value
