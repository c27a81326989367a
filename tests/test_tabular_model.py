import json

import numpy as np
import pandas as pd
import pytest
import torch

from untwine.errors import CheckpointError, DataError
from untwine.tabular.demo import demo_table
from untwine.tabular.model import TableData, TabularMultiStage


@pytest.fixture(scope="module")
def table():
    return demo_table(240, seed=0)


@pytest.fixture(scope="module")
def untrained(table):
    """Transformer fitted, both stages built with their initial (random) weights: enough to test
    sampling, conditions and saving without a training run."""
    from untwine.tabular.transformer import TableTransformer
    m = TabularMultiStage(latent_dim=3, hidden=(32,), components=3, rank=2, progress=False, code_prior="normal")
    m.transformer = TableTransformer().fit(table)
    torch.manual_seed(0)
    m._build(m.transformer.output_dim)
    m.target = "member"
    return m


@pytest.fixture(scope="module")
def model(table, tmp_path_factory):
    run = tmp_path_factory.mktemp("run") / "stage1"
    return TabularMultiStage(latent_dim=3, hidden=(32,), steps=40, stage2_steps=30, batch_size=64, components=3,
                             rank=2, progress=False, code_prior="normal").fit(table, target="member", work_dir=run)


def test_table_data_contract():
    rows = np.arange(12, dtype=np.float32).reshape(4, 3)
    data = TableData(rows)
    assert len(data) == 4 and data.image_shape == (3,) and data.factor_space is None
    assert torch.equal(data.batch(np.array([2, 0])), torch.tensor([[6.0, 7.0, 8.0], [0.0, 1.0, 2.0]]))
    with pytest.raises(DataError, match="non-empty"):
        TableData(np.zeros((0, 3)))


@pytest.mark.slow
def test_fit_goes_through_the_engine(model, tmp_path_factory):
    # 48 rows held out for the fit's own privacy check, never fitted
    assert model.info["rows"] == 192 and model.info["privacy"]["holdout_rows"] == 48
    assert 0 <= model.info["privacy"]["closer_to_train"] <= 1
    assert model.info["features"] == model.transformer.output_dim
    # the engine wrote its run (config, checkpoint) and stage 1's learned sigma is in the model
    assert model.vae.likelihood.log_sigma.shape[0] == sum(s.kind == "continuous" for s in model.transformer.spans)
    assert all(not p.requires_grad for p in model.vae.parameters())
    assert model.info["stage2_nll_per_dim"] is not None
    rows = model.sample(30, seed=0, conditions={"job": "pilot"})
    assert (rows["job"] == "pilot").all()


def test_sample_has_the_tables_columns_and_is_reproducible(untrained, table):
    a, b = untrained.sample(50, seed=3), untrained.sample(50, seed=3)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(untrained.sample(50, seed=4))
    assert list(a.columns) == list(table.columns) and len(a) == 50
    assert (a.dtypes == table.dtypes).all()
    assert set(a["job"]) <= set(table["job"]) and (a["country"] == "NZ").all()
    assert a["age"].between(table["age"].min(), table["age"].max()).all()


def test_conditional_sampling_meets_rare_conditions_exactly(untrained, table):
    assert (table["job"] == "pilot").mean() < 0.06
    rows = untrained.sample(40, seed=0, conditions={"job": "pilot", "grade": None})
    assert len(rows) == 40 and (rows["job"] == "pilot").all() and rows["grade"].isna().all()
    ages = untrained.sample(10, seed=0, conditions={"age": 33})
    assert (ages["age"] == 33).all()
    with pytest.raises(DataError, match="not a category"):
        untrained.sample(5, conditions={"job": "astronaut"})
    with pytest.raises(DataError, match="unknown column"):
        untrained.sample(5, conditions={"nope": 1})
    with pytest.raises(DataError, match="positive integer"):
        untrained.sample(0)


def test_sampling_in_chunks_draws_the_same_model(untrained, monkeypatch):
    # Large n is drawn in chunks (memory); a chunk is the same sampler: the first chunk's rows are
    # exactly an unchunked draw of that many rows, the frequencies agree, conditions hold in every chunk.
    whole = untrained.sample_rows(2000, seed=5)
    monkeypatch.setattr(untrained, "_chunk_rows", lambda: 16)
    sizes, draw = [], untrained._sample_chunk
    monkeypatch.setattr(untrained, "_sample_chunk", lambda n, *a: sizes.append(n) or draw(n, *a))
    chunked = untrained.sample_rows(2000, seed=5)
    assert max(sizes) == 16 and sum(sizes) == 2000   # no tensor ever spans all rows
    assert chunked.shape == whole.shape
    np.testing.assert_array_equal(chunked[:16], untrained.sample_rows(16, seed=5))
    np.testing.assert_array_equal(chunked, untrained.sample_rows(2000, seed=5))   # reproducible
    a, b = untrained.transformer.inverse_transform(whole), untrained.transformer.inverse_transform(chunked)
    freq = pd.concat([a["job"].value_counts(normalize=True), b["job"].value_counts(normalize=True)], axis=1).fillna(0)
    assert (freq.iloc[:, 0] - freq.iloc[:, 1]).abs().max() < 0.05
    rows = untrained.sample(30, seed=1, conditions={"job": "pilot"})   # 16 // 20 -> one row per chunk
    assert len(rows) == 30 and (rows["job"] == "pilot").all()


def test_conditional_residual_matches_gaussian_conditioning(untrained):
    # one component: r_R | r_C must have the mean and covariance of Gaussian conditioning
    mix = untrained.mixture
    k = torch.zeros(20000, dtype=torch.long)
    idx = torch.tensor([0, 2])
    cov = mix.loadings[0] @ mix.loadings[0].T + torch.diag(mix.psi[0])
    r_c = torch.tensor([0.3, -0.2])
    rest = torch.tensor([i for i in range(mix.dim) if i not in (0, 2)])
    gain = cov[rest][:, idx] @ torch.linalg.inv(cov[idx][:, idx])
    expect = mix.means[0, rest] + gain @ (r_c - mix.means[0, idx])
    with torch.no_grad():
        r = untrained._conditional_residual(k, r_c.expand(20000, 2), idx, torch.Generator().manual_seed(0))
    sd = cov[rest, rest].sqrt()
    assert torch.all((r[:, rest].mean(0) - expect).abs() < 4 * sd / np.sqrt(20000) + 1e-4)


def test_save_load_round_trip(untrained, tmp_path):
    untrained.save(tmp_path)
    loaded = TabularMultiStage.load(tmp_path)
    pd.testing.assert_frame_equal(loaded.sample(30, seed=1), untrained.sample(30, seed=1))
    assert loaded.target == "member"
    (tmp_path / "stage2.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing"):
        TabularMultiStage.load(tmp_path)
    with pytest.raises(CheckpointError, match="not a saved tabular model"):
        TabularMultiStage.load(tmp_path / "nothing")


def test_fit_errors(table):
    with pytest.raises(DataError, match="target 'nope'"):
        TabularMultiStage(steps=1).fit(table, target="nope")
    with pytest.raises(DataError, match="DataFrame"):
        TabularMultiStage(steps=1).fit(table.to_numpy())
    with pytest.raises(DataError, match="not fitted"):
        TabularMultiStage().sample(3)


def _discrete_spans_are_one_hot_or_missing(model, rows: np.ndarray) -> None:
    spans = [sp for sp in model.transformer.spans if sp.kind == "softmax"]
    missing = {sp.column: sp for sp in spans if sp.name == f"{sp.column}.missing"}
    for sp in spans:
        block = rows[:, sp.start:sp.start + sp.width]
        assert set(np.unique(block)) <= {0.0, 1.0}, sp.name
        sums = block.sum(1)
        if sp.column in missing and sp is not missing[sp.column]:
            drawn_missing = rows[:, missing[sp.column].start + 1] == 1.0
            assert (sums[drawn_missing] == 0).all() and (sums[~drawn_missing] == 1).all(), sp.name
        else:
            assert (sums == 1).all(), sp.name


def test_combined_sampler_draws_categories_as_stage1_and_continuous_detail_from_stage2(untrained):
    rows = untrained.sample_rows(20000, seed=0)                     # discrete="stage1", the default
    _discrete_spans_are_one_hot_or_missing(untrained, rows)
    alone = untrained.sample_rows(20000, seed=1, stage2=False)
    job = next(sp for sp in untrained.transformer.spans if sp.name == "job.category")
    block = slice(job.start, job.start + job.width)
    # the categories' frequencies are stage 1's (both draw p1(x_D | z) with z ~ N(0, I))
    se = np.sqrt(0.25 / 20000)
    assert np.abs(rows[:, block].mean(0) - alone[:, block].mean(0)).max() < 5 * 2 * se
    # the continuous coordinates are not stage 1's alone: stage 2 adds its detail to y
    alpha = [sp.start for sp in untrained.transformer.spans if sp.kind == "continuous"]
    assert not np.allclose(rows[:, alpha], alone[:, alpha], atol=1e-3)
    # the residual reading is the old sampler, still there; a bad name is a clear error
    assert untrained.sample_rows(50, seed=0, discrete="residual").shape == rows[:50].shape
    with pytest.raises(DataError, match="discrete="):
        untrained.sample_rows(5, discrete="argmax")


def test_conditional_sampling_follows_the_models_conditional_against_brute_force(untrained):
    # p(grade | job = pilot) under p1(x_D | z) with z ~ N(0, I): brute force by weighting many z
    # with stage 1's probability of "pilot", against the sampler's frequencies. The decoder is
    # given a strong shared dependence (z_0 raises both "pilot" and grade "A"), so that the
    # conditional differs clearly from the marginal
    import copy
    untrained = copy.deepcopy(untrained)
    spans = {sp.name: sp for sp in untrained.transformer.spans}
    pilot = spans["job.category"].start + untrained.transformer._column("job")["categories"].index("pilot")
    grade = spans["grade.category"]
    base = untrained.vae.decode

    def decode(z):
        out = base(z).clone()
        out[:, pilot] += 3.0 * z[:, 0]
        out[:, grade.start] += 3.0 * z[:, 0]
        return out
    untrained.vae.decode = decode
    with torch.no_grad():
        z = torch.randn(400000, untrained.params["latent_dim"], generator=torch.Generator().manual_seed(5))
        y = untrained.decode(z)
    w = y[:, pilot].double()
    g = y[:, grade.start:grade.start + grade.width].double()
    present = 1 - y[:, spans["grade.missing"].start + 1].double()
    expect = ((w * present)[:, None] * g).sum(0) / w.sum()          # P(grade = c, present | pilot)
    rows = untrained.sample_rows(4000, seed=0, conditions={"job": "pilot"}, oversample=50)
    got = rows[:, grade.start:grade.start + grade.width].mean(0)
    marginal = (present[:, None] * g).mean(0).numpy()
    assert np.abs(expect.numpy() - marginal).max() > 0.15          # the test can tell them apart
    assert np.abs(got - expect.numpy()).max() < 0.04
    assert (rows[:, pilot] == 1.0).all()


def _with_prior(untrained, tmp_path) -> TabularMultiStage:
    """A copy of the untrained model whose sampling prior is a hand-set 2-component mixture."""
    untrained.save(tmp_path / "base")
    m = TabularMultiStage.load(tmp_path / "base")
    m.params["code_prior"] = "mixture"
    m.prior = {"weights": torch.tensor([0.25, 0.75]),
               "means": torch.tensor([[-6.0, 0.0, 0.0], [4.0, 1.0, 0.0]]),
               "chol": torch.stack([0.5 * torch.eye(3),
                                    torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.0, 0.0, 1.0]])])}
    return m


def test_code_prior_draws_from_its_mixture(untrained, tmp_path):
    m = _with_prior(untrained, tmp_path)
    z = m._draw_z(40_000, torch.Generator().manual_seed(0))
    second = z[:, 0] > 0
    assert abs(second.float().mean().item() - 0.75) < 0.01
    cov = torch.cov(z[second].T)
    assert torch.allclose(cov, torch.tensor([[1.0, 0.8, 0.0], [0.8, 1.0, 0.0], [0.0, 0.0, 1.0]]), atol=0.04)
    assert torch.allclose(z[~second].mean(0), torch.tensor([-6.0, 0.0, 0.0]), atol=0.02)
    assert torch.allclose(z[~second].std(0), torch.full((3,), 0.5), atol=0.02)
    # the normal prior is N(0, I)
    z0 = untrained._draw_z(40_000, torch.Generator().manual_seed(0))
    assert torch.allclose(z0.mean(0), torch.zeros(3), atol=0.02) and torch.allclose(z0.std(0), torch.ones(3), atol=0.02)


def test_code_prior_is_fitted_to_the_aggregate_posterior_draws_not_the_means(untrained, tmp_path, monkeypatch):
    m = _with_prior(untrained, tmp_path)
    m.params["prior_components"] = 2
    n = 4000
    mu = torch.zeros(n, 3)
    mu[: n // 4, 0], mu[n // 4:, 0] = -4.0, 4.0           # two clusters of codes, a quarter and three quarters
    logvar = torch.full((n, 3), 2 * np.log(0.5))          # every posterior: sd 0.5
    monkeypatch.setattr(m.vae, "encode", lambda x: (mu[: len(x)], logvar[: len(x)]))
    prior = m._fit_code_prior(torch.zeros(n, m.transformer.output_dim))
    order = prior["means"][:, 0].argsort()
    assert torch.allclose(prior["weights"][order], torch.tensor([0.25, 0.75]), atol=1e-3)
    assert torch.allclose(prior["means"][order][:, 0], torch.tensor([-4.0, 4.0]), atol=0.05)
    # each component's spread is the posteriors' sd (0.5), not the zero spread of the means
    variances = (prior["chol"] @ prior["chol"].transpose(1, 2)).diagonal(dim1=1, dim2=2)
    assert torch.allclose(variances, torch.full((2, 3), 0.25), atol=0.03)


def test_code_prior_saves_loads_and_rejects_a_broken_file(untrained, tmp_path):
    m = _with_prior(untrained, tmp_path)
    m.save(tmp_path / "with_prior")
    loaded = TabularMultiStage.load(tmp_path / "with_prior")
    assert loaded.params["code_prior"] == "mixture"
    pd.testing.assert_frame_equal(loaded.sample(40, seed=2), m.sample(40, seed=2))
    assert not loaded.sample(40, seed=2).equals(untrained.sample(40, seed=2))
    rows = loaded.sample(25, seed=0, conditions={"job": "pilot"})          # conditions draw from the same prior
    assert len(rows) == 25 and (rows["job"] == "pilot").all()
    from safetensors.torch import save_file
    save_file({"weights": torch.ones(2), "means": torch.zeros(2, 5), "chol": torch.zeros(2, 5, 5)},
              str(tmp_path / "with_prior" / "prior.safetensors"))
    with pytest.raises(CheckpointError, match="prior.safetensors holds"):
        TabularMultiStage.load(tmp_path / "with_prior")
    (tmp_path / "with_prior" / "prior.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing"):
        TabularMultiStage.load(tmp_path / "with_prior")
    # a model saved before the code prior existed (no code_prior in model.json) loads with the normal prior
    import json
    meta = json.loads((tmp_path / "base" / "model.json").read_text())
    meta["params"].pop("code_prior"), meta["params"].pop("prior_components")
    (tmp_path / "base" / "model.json").write_text(json.dumps(meta))
    old = TabularMultiStage.load(tmp_path / "base")
    assert old.prior is None
    pd.testing.assert_frame_equal(old.sample(30, seed=1), untrained.sample(30, seed=1))
    with pytest.raises(DataError, match="code_prior='flat'"):
        TabularMultiStage(code_prior="flat")


@pytest.mark.slow
def test_code_prior_changes_sampling_not_stage1(table, model, tmp_path):
    # the same fit with the mixture prior: stage 1's representation is bit-identical, only sampling moves
    other = TabularMultiStage(latent_dim=3, hidden=(32,), steps=40, stage2_steps=30, batch_size=64, components=3,
                              rank=2, progress=False, code_prior="mixture", prior_components=4)
    other.fit(table, target="member", work_dir=tmp_path / "stage1")
    assert np.array_equal(other.encode(table), model.encode(table))
    # 192 fitted rows (48 held out for the privacy check): one component per 100 codes at most
    assert other.prior["weights"].shape == (1,)
    assert other.info["prior_seconds"] >= 0
    assert not other.sample(50, seed=0).equals(model.sample(50, seed=0))


def test_a_key_column_is_sampled_fresh_and_the_fit_pictures_skip_it(table):
    # issue 24: an ID column became a one-hot category (every synthetic ID a real one, its row
    # following), then the fit crashed in latent_column_mi
    from untwine.tabular import interpret
    from untwine.tabular.transformer import TableTransformer
    df = table.assign(order_ref=[f"ORD-{i:04d}" for i in range(len(table))])
    m = TabularMultiStage(latent_dim=2, hidden=(16,), components=2, rank=2, progress=False, code_prior="normal")
    m.transformer = TableTransformer().fit(df)
    torch.manual_seed(0)
    m._build(m.transformer.output_dim)
    rows = m.sample(100, seed=0)
    assert rows["order_ref"].is_unique and not set(rows["order_ref"]) & set(df["order_ref"])
    mi = interpret.latent_column_mi(m, df)
    assert "order_ref" not in mi.columns
    assert "order_ref" not in interpret.traversal_table(m, steps=3).columns


def test_conditions_are_met_verbatim_or_refused(untrained, table):
    # issue 24: age=500 was silently replaced by 72; 50000 came back as 50000.0000887
    with pytest.raises(DataError, match=r"age=500.*outside the training range of 'age' \[\d+, \d+\]"):
        untrained.sample(5, conditions={"age": 500})
    with pytest.raises(DataError, match=r"outside the training range of 'joined' \[2020-"):
        untrained.sample(5, conditions={"joined": "1999-01-01"})
    with pytest.raises(DataError, match="give a number"):
        untrained.sample(5, conditions={"income": "lots"})
    income = float(table["income"].median())
    rows = untrained.sample(20, seed=0, conditions={"income": income, "age": "33"})
    assert (rows["income"] == income).all() and (rows["age"] == 33).all()
    assert rows["age"].dtype == table["age"].dtype
    when = str(table["joined"].iloc[3])
    assert (untrained.sample(5, seed=0, conditions={"joined": when})["joined"] == pd.Timestamp(when)).all()
    # a boolean as a command line writes it
    assert untrained.sample(5, seed=0, conditions={"member": "true"})["member"].all()
    assert not untrained.sample(5, seed=0, conditions={"member": "FALSE"})["member"].any()
    with pytest.raises(DataError, match="never missing"):
        untrained.sample(5, conditions={"age": None})


def test_a_small_effective_sample_size_is_warned_about(untrained):
    # "pilot" made rare and tied to the tail of z_0: few candidates carry the weight
    import copy
    untrained = copy.deepcopy(untrained)
    pilot = next(sp for sp in untrained.transformer.spans if sp.name == "job.category").start + \
        untrained.transformer._column("job")["categories"].index("pilot")
    base = untrained.vae.decode

    def decode(z):
        out = base(z).clone()
        out[:, pilot] += 6.0 * z[:, 0] - 12.0
        return out
    untrained.vae.decode = decode
    with pytest.warns(UserWarning, match="effective sample size of \\d+ candidates.*oversample"):
        untrained.sample(400, seed=0, conditions={"job": "pilot"}, oversample=1)
    assert untrained.last_condition_ess < 200
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        untrained.sample(10, seed=0, conditions={"job": "pilot"})


def test_save_writes_editable_metadata_that_a_fit_reads_back(untrained, table, tmp_path):
    from untwine.tabular.transformer import TableTransformer, read_metadata
    untrained.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "metadata.json").read_text())
    cols = meta["columns"]
    assert cols["age"]["kind"] == "integer" and cols["joined"]["kind"] == "datetime"
    assert cols["job"]["kind"] == "categorical" and cols["job"]["categories"] == 4
    assert cols["country"] == {**cols["country"], "kind": "categorical", "constant": "NZ"}
    assert cols["income"]["range"][0] == pytest.approx(table["income"].min())
    # edited and read back: the next fit follows it
    cols["age"]["kind"], cols["score"]["kind"] = "categorical", "continuous"
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(meta))
    tt = TableTransformer(**read_metadata(edited)).fit(table)
    assert tt.kind_of("age") == "categorical" and tt.kind_of("joined") == "datetime"
    # a text date column's format is written and read back
    dated = table.assign(joined=pd.to_datetime(table["joined"]).dt.strftime("%d/%m/%Y"))
    TableTransformer().fit(dated).write_metadata(tmp_path / "dated.json")
    assert read_metadata(tmp_path / "dated.json")["formats"] == {"joined": "%d/%m/%Y"}
    cols["age"]["kind"] = "number"
    edited.write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"edited.json.*'age' has kind 'number'; expected one of"):
        read_metadata(edited)
    edited.write_text("{oops")
    with pytest.raises(DataError, match="edited.json.*not valid JSON"):
        read_metadata(edited)
    with pytest.raises(DataError, match="does not exist"):
        read_metadata(tmp_path / "none.json")


def test_damaged_model_files_are_clear_errors(untrained, tmp_path):
    untrained.save(tmp_path / "m")
    (tmp_path / "m" / "stage1.safetensors").write_bytes(b"\x00\x01garbage")
    with pytest.raises(CheckpointError, match="stage1|damaged"):
        TabularMultiStage.load(tmp_path / "m")
    untrained.save(tmp_path / "m2")
    (tmp_path / "m2" / "transformer.safetensors").write_bytes(b"\x00\x01garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        TabularMultiStage.load(tmp_path / "m2")
    untrained.save(tmp_path / "m3")
    meta = json.loads((tmp_path / "m3" / "model.json").read_text())
    meta.pop("params")
    (tmp_path / "m3" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="lacks the model's \"params\""):
        TabularMultiStage.load(tmp_path / "m3")
    untrained.save(tmp_path / "m4")
    meta = json.loads((tmp_path / "m4" / "transformer.json").read_text())
    meta.pop("spans")
    (tmp_path / "m4" / "transformer.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="incomplete"):
        TabularMultiStage.load(tmp_path / "m4")


def test_the_fit_holds_out_rows_for_its_own_privacy_check(untrained, table, monkeypatch):
    from untwine.tabular.model import holdout_rows
    assert holdout_rows(30) == 0 and holdout_rows(500) == 100 and holdout_rows(32561) == 2000
    assert holdout_rows(240, 0.25) == 60 and holdout_rows(240, 10) == 10 and holdout_rows(240, 0) == 0
    with pytest.raises(DataError, match="holdout"):
        TabularMultiStage(holdout=1.5)
    train, held = table.iloc[:180], table.iloc[180:]
    honest = untrained._privacy_check(train, held)
    assert honest["holdout_rows"] == 60 and 0 <= honest["closer_to_train"] <= 1
    # a model that hands back its training rows is caught, with a warning
    monkeypatch.setattr(untrained, "sample", lambda n, seed=0: train.sample(n, replace=True, random_state=seed))
    with pytest.warns(UserWarning, match="closer-to-train 1.000.*train for fewer steps"):
        copied = untrained._privacy_check(train, held)
    assert copied["closer_to_train"] == 1.0 and copied["exact_copy_rate"] == 1.0


def test_range_and_rounding_reach_the_transformer(table, monkeypatch):
    from untwine.tabular.transformer import TableTransformer
    seen = []
    fit = TableTransformer.fit
    monkeypatch.setattr(TableTransformer, "fit", lambda self, df: seen.append(self) or fit(self, df))
    m = TabularMultiStage(enforce_range=False, steps=1, progress=False)
    monkeypatch.setattr("untwine.train.train", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("stop")))
    with pytest.raises(RuntimeError, match="stop"):
        m.fit(table)
    assert seen and seen[-1].enforce_range is False and seen[-1].enforce_rounding is True
