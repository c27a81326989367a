import numpy as np
import pandas as pd
import pytest
import torch

from untwine.tabular import interpret
from untwine.tabular.demo import demo_table
from untwine.tabular.model import TabularMultiStage
from untwine.tabular.transformer import TableTransformer


@pytest.fixture(scope="module")
def setup():
    df = demo_table(150, seed=0)[["age", "job", "joined", "grade"]]
    m = TabularMultiStage(latent_dim=2, hidden=(16,), components=2, rank=2, progress=False)
    m.transformer = TableTransformer().fit(df)
    torch.manual_seed(0)
    m._build(m.transformer.output_dim)
    with torch.no_grad():  # z1 does nothing: its decoder weights are zero
        m.vae.decoder.net[0].weight[:, 1] = 0.0
    return m, df


def test_traversal_table_and_effects(setup, tmp_path):
    m, df = setup
    table = interpret.traversal_table(m, steps=5)
    assert len(table) == 10 and set(table["latent"]) == {0, 1}
    assert {"age", "joined"} <= set(table.columns) and any(c.startswith("P(job=") for c in table.columns)
    eff = interpret.traversal_effects(table, interpret.numeric_scales(m, df))
    assert np.allclose(eff.loc[1].to_numpy(dtype=float), 0.0)     # the dead latent moves nothing
    assert eff.loc[0].to_numpy(dtype=float).max() > 0
    interpret.save_heatmap(eff, tmp_path / "h.png", "effects")
    assert (tmp_path / "h.png").stat().st_size > 1000


def test_traversal_over_the_codes_goes_where_the_data_are(setup):
    m, _ = setup
    codes = np.stack([np.linspace(3.0, 5.0, 201), np.linspace(-1.0, 0.0, 201)], axis=1)
    table = interpret.traversal_table(m, steps=3, codes=codes)
    # z0 moves between its codes' 2.5% and 97.5% quantiles, z1 likewise
    assert np.allclose(table.loc[table.latent == 0, "z"], [3.05, 4.0, 4.95])
    assert np.allclose(table.loc[table.latent == 1, "z"], [-0.975, -0.5, -0.025])
    # the decoded rows are the decoder's at the codes' median with one latent moved
    z = torch.tensor([[3.05, -0.5], [4.0, -0.5], [4.95, -0.5]], dtype=torch.float32)
    y = m.decode(z).numpy()
    ages = m.transformer.inverse_transform(y)["age"].to_numpy(dtype=float)
    assert np.allclose(table.loc[table.latent == 0, "age"].to_numpy(dtype=float), ages)
    eff = interpret.traversal_effects(table)
    assert np.allclose(eff.loc[1].to_numpy(dtype=float), 0.0)     # the dead latent still moves nothing
    with pytest.raises(ValueError, match="encoder means"):
        interpret.traversal_table(m, codes=np.zeros((5, 3)))


def test_mi_and_stage_variance(setup, tmp_path, monkeypatch):
    # Issue 24: the assertions here could not fail (MI >= 0 by construction, combined = stage1 +
    # stage2_added by definition, 1 - Var/Var <= 1 always). Now each score is checked where its value
    # is known.
    m, df = setup
    mi = interpret.latent_column_mi(m, df)
    assert mi.shape == (2, 4) and list(mi.columns) == ["age", "job", "joined", "grade"]
    # codes that are the job (z0) and noise (z1): MI finds job in z0 only, and nothing else
    rng = np.random.default_rng(0)
    job = df["job"].astype("category").cat.codes.to_numpy(dtype=float)
    codes = np.stack([job + 0.01 * rng.standard_normal(len(df)), rng.standard_normal(len(df))], axis=1)
    with monkeypatch.context() as mp:
        mp.setattr(m, "posterior", lambda frame: (codes, np.full_like(codes, 1e-3)))
        known = interpret.latent_column_mi(m, df)
    assert known.loc["z0", "job"] > 0.5 and known.loc["z1", "job"] < 0.1 and known.loc["z1", "age"] < 0.1
    sv = interpret.stage_variance(m, df)
    assert set(sv["column"]) == {"age", "job", "joined", "grade"}
    # against the definition, by hand, for the age column's alpha: 1 - Var(x - y) / Var(x)
    x = m.transformer.transform(df).astype(np.float64)
    a = next(s.start for s in m.transformer.spans if s.name == "age.alpha")
    by_hand = [1 - (x[:, a] - m.reconstruct(df, stage2=s2)[:, a]).var() / x[:, a].var() for s2 in (False, True)]
    row = sv.set_index("span").loc["age.alpha"]
    np.testing.assert_allclose([row["stage1"], row["combined"]], by_hand, rtol=1e-6)
    # a stage 1 that reconstructs every row exactly explains all (1), one that returns the column means
    # nothing (0); stage 2 then adds what is left
    means = np.broadcast_to(x.mean(0), x.shape)
    monkeypatch.setattr(m, "reconstruct", lambda frame, stage2=True: x if stage2 else means)
    sv = interpret.stage_variance(m, df)
    np.testing.assert_allclose(sv["stage1"], 0.0, atol=1e-9)
    np.testing.assert_allclose(sv["stage2_added"], 1.0, atol=1e-9)
    monkeypatch.setattr(m, "reconstruct", lambda frame, stage2=True: x)
    sv = interpret.stage_variance(m, df)
    np.testing.assert_allclose(sv["stage1"], 1.0)
    np.testing.assert_allclose(sv["stage2_added"], 0.0, atol=1e-9)
    interpret.save_stage_variance(sv, tmp_path / "s.png")
    assert (tmp_path / "s.png").stat().st_size > 1000


def test_mi_reads_the_posterior_draw_not_the_mean(setup, monkeypatch):
    m, df = setup
    mean, sd = m.posterior(df)
    np.testing.assert_allclose(mean, m.encode(df), atol=1e-6)   # the posterior's mean is the code
    assert sd.shape == mean.shape and (sd > 0).all()
    age = df["age"].to_numpy(dtype=float)
    age = (age - age.mean()) / age.std()
    # z0: a sharp code of age; z1: the same ordering in its mean, drowned by unit posterior noise
    crafted = (np.stack([age, 1e-3 * age], axis=1), np.stack([np.full_like(age, 0.01), np.ones_like(age)], axis=1))
    monkeypatch.setattr(m, "posterior", lambda frame: crafted)
    mi = interpret.latent_column_mi(m, df)
    assert mi.loc["z0", "age"] > 1.5          # k-NN estimate of a near-deterministic code
    assert mi.loc["z1", "age"] < 0.1          # the mean-based estimate would equal z0's


def test_heatmap_colours_each_column_on_its_own_scale_and_wraps_its_title(tmp_path):
    """Issue 25: years (in SDs) and probabilities on one colour scale hid the probabilities; the
    long title was clipped."""
    from PIL import Image
    table = pd.DataFrame({"age (SD)": [3.0, 0.3], "P(job=pilot)": [0.02, 0.2]}, index=["z0", "z1"])
    title = "effect of each latent on each column: a title far longer than two narrow columns of cells are wide"
    interpret.save_heatmap(table, tmp_path / "h.png", title, per_column=True)
    with Image.open(tmp_path / "h.png") as im:
        rgb = np.asarray(im.convert("RGB")).astype(int)
    # the title's ink starts right of the left edge and ends left of the right edge: nothing clipped
    ink = np.flatnonzero((rgb[:40] < 128).all(axis=2).any(axis=0))
    assert ink.size and ink.min() > 2 and ink.max() < rgb.shape[1] - 3
    assert interpret.effect_labels(pd.DataFrame({"age": [1.0], "P(job=a)": [0.5]}), {"age": 2.0}
                                   ).columns.tolist() == ["age (SD)", "P(job=a)"]


def test_stage_variance_names_columns_not_spans():
    assert [interpret.span_label(s, c) for s, c in (("age.alpha", "age"), ("age.mode", "age"),
                                                      ("job.category", "job"), ("score.missing", "score"))] == \
        ["age (value)", "age (mode)", "job", "score (missing?)"]
