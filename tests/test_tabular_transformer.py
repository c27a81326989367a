import math

import numpy as np
import pandas as pd
import pytest
import torch

from untwine.errors import ConfigError, DataError
from untwine.tabular import Span, TableTransformer
from untwine.tabular.demo import demo_table
from untwine.tabular.likelihood import MixedLikelihood


@pytest.fixture(scope="module")
def table():
    return demo_table(200, seed=0)


@pytest.fixture(scope="module")
def fitted(table):
    return TableTransformer().fit(table)


def test_inferred_kinds_and_layout(fitted):
    kinds = {c["name"]: c["kind"] for c in fitted.columns}
    assert kinds == {"age": "integer", "income": "continuous", "job": "categorical", "city": "categorical",
                     "member": "boolean", "joined": "datetime", "score": "continuous", "grade": "categorical",
                     "country": "constant"}
    # spans tile the row without gaps; every mode span has at most 10 modes
    stop = 0
    for s in fitted.spans:
        assert s.start == stop
        stop = s.stop
        if s.name.endswith(".mode"):
            assert 1 <= s.width <= 10
    assert stop == fitted.output_dim
    names = [s.name for s in fitted.spans]
    assert "score.missing" in names and "grade.missing" in names and "age.missing" not in names
    assert not any(s.column == "country" for s in fitted.spans)
    city = next(s for s in fitted.spans if s.name == "city.category")
    assert city.width == 30


def test_round_trip_reproduces_the_frame(table, fitted):
    back = fitted.inverse_transform(fitted.transform(table, dtype=np.float64))
    assert list(back.columns) == list(table.columns)
    for col in ["age", "job", "city", "member", "joined", "grade", "country"]:
        assert back[col].equals(table[col]), col
        assert back[col].dtype == table[col].dtype, col
    for col in ["income", "score"]:
        np.testing.assert_allclose(back[col], table[col], rtol=1e-9, atol=1e-9)
        assert (back[col].isna() == table[col].isna()).all()
    # float32 rows: continuous values within float32 precision
    back32 = fitted.inverse_transform(fitted.transform(table))
    np.testing.assert_allclose(back32["income"], table["income"], rtol=1e-5)


def test_transform_values_are_alpha_and_one_hots(table, fitted):
    x = fitted.transform(table)
    for s in fitted.spans:
        block = x[:, s.start:s.stop]
        if s.kind == "continuous":
            assert np.all(np.abs(block) <= 1)
        else:
            sums = block.sum(1)
            assert set(np.unique(block)) <= {0.0, 1.0}
            if s.column in ("score", "grade") and not s.name.endswith(".missing"):
                np.testing.assert_array_equal(sums, (~table[s.column].isna()).to_numpy())
            else:
                assert np.all(sums == 1)
    # alpha of a value is (z - mu_m) / (4 sigma_m) in standardised units
    info = fitted._column("income")
    means, stds = fitted.modes["income"]
    z = (table["income"].to_numpy() - info["shift"]) / info["scale"]
    a = next(s for s in fitted.spans if s.name == "income.alpha").start
    m = next(s for s in fitted.spans if s.name == "income.mode")
    mode = x[:, m.start:m.stop].argmax(1)
    np.testing.assert_allclose(x[:, a], np.clip((z - means[mode]) / (4 * stds[mode]), -1, 1), atol=1e-6)


def test_high_cardinality_categorical_round_trips():
    df = pd.DataFrame({"id": [f"u{i}" for i in range(150)] * 2, "v": np.arange(300.0)})
    tt = TableTransformer().fit(df)
    assert tt.inverse_transform(tt.transform(df))["id"].equals(df["id"])


def test_overrides_bools_with_missing_and_constant_with_missing():
    df = pd.DataFrame({"code": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12] * 5,
                       "flag": pd.Series([True, False, None] * 20, dtype=object),
                       "const": pd.Series(["x", None] * 30, dtype=object),
                       "when": pd.Series(pd.to_datetime(["2021-01-01", None, "2021-03-04"] * 20))})
    tt = TableTransformer(column_types={"code": "categorical"}).fit(df)
    assert tt.kind_of("code") == "categorical" and tt.kind_of("flag") == "boolean"
    assert tt.kind_of("const") == "constant" and tt.kind_of("when") == "datetime"
    back = tt.inverse_transform(tt.transform(df, dtype=np.float64))
    assert back["code"].equals(df["code"])
    assert back["flag"].tolist() == df["flag"].tolist()
    assert back["const"].tolist() == df["const"].tolist()
    assert back["when"].equals(df["when"])


def test_datetime_strings_from_a_csv_are_datetimes():
    df = pd.DataFrame({"d": ["2020-01-0%d" % (i % 9 + 1) for i in range(40)], "n": np.arange(40.0)})
    tt = TableTransformer().fit(df)
    assert tt.kind_of("d") == "datetime"
    back = tt.inverse_transform(tt.transform(df, dtype=np.float64))
    assert back["d"].tolist() == df["d"].tolist()   # text dates come back as text in their format


@pytest.mark.parametrize("frame, message", [
    ([1, 2, 3], "must be a pandas DataFrame"),
    (pd.DataFrame(), "empty"),
    (pd.DataFrame({"a": [np.nan, np.nan], "b": [1.0, 2.0]}), "'a' is entirely missing"),
])
def test_bad_tables(frame, message):
    with pytest.raises(DataError, match=message):
        TableTransformer().fit(frame)


def test_bad_overrides_and_unseen_values():
    df = pd.DataFrame({"a": [1.5, 2.5, 3.5, 4.25], "c": ["x", "y", "x", "y"]})
    with pytest.raises(DataError, match="'nope'"):
        TableTransformer(column_types={"nope": "categorical"}).fit(df)
    with pytest.raises(DataError, match="expected one of"):
        TableTransformer(column_types={"a": "text"})
    with pytest.raises(DataError, match="non-numbers"):
        TableTransformer(column_types={"c": "continuous"}).fit(df)
    tt = TableTransformer().fit(df)
    with pytest.raises(DataError, match="unseen"):
        tt.transform(pd.DataFrame({"a": [1.0], "c": ["z"]}))
    with pytest.raises(DataError, match="missing values"):
        tt.transform(pd.DataFrame({"a": [np.nan], "c": ["x"]}))
    with pytest.raises(DataError, match="lacks columns"):
        tt.transform(pd.DataFrame({"a": [1.0]}))
    with pytest.raises(DataError, match="shape"):
        tt.inverse_transform(np.zeros((2, 3)))


def test_encode_condition(fitted):
    enc = fitted.encode_condition("job", "pilot")
    s = next(s for s in fitted.spans if s.name == "job.category")
    assert enc == {s.start + i: float(c == "pilot") for i, c in enumerate(fitted._column("job")["categories"])}
    missing = fitted.encode_condition("score", None)
    m = next(s for s in fitted.spans if s.name == "score.missing")
    assert missing[m.start] == 0.0 and missing[m.start + 1] == 1.0
    assert fitted.encode_condition("member", "True") == fitted.encode_condition("member", True)
    with pytest.raises(DataError, match="not a category"):
        fitted.encode_condition("job", "astronaut")
    with pytest.raises(DataError, match="unknown column"):
        fitted.encode_condition("nope", 1)


def test_save_load_round_trip(tmp_path, table, fitted):
    fitted.save(tmp_path)
    assert not list(tmp_path.glob("*.pkl"))
    loaded = TableTransformer.load(tmp_path)
    np.testing.assert_array_equal(loaded.transform(table), fitted.transform(table))
    assert loaded.spans == fitted.spans
    (tmp_path / "transformer.json").write_text("{broken")
    with pytest.raises(DataError, match="corrupt"):
        TableTransformer.load(tmp_path)
    with pytest.raises(DataError, match="missing"):
        TableTransformer.load(tmp_path / "nowhere")


# ---- the mixed likelihood ---------------------------------------------------------------------
SPANS = [Span("a.alpha", "continuous", 0, 1, "a", 1, 2), Span("a.mode", "softmax", 1, 2, "a"),
         Span("c.category", "softmax", 3, 3, "c"), Span("a.missing", "softmax", 6, 2, "a")]


def test_mixed_nll_against_hand_computation():
    lik = MixedLikelihood(SPANS, variance="fixed", sigma=0.5)
    params = torch.tensor([[0.3, 1.0, -1.0, 0.0, 2.0, -1.0, 3.0, 0.0],
                           [0.3, 1.0, -1.0, 0.0, 2.0, -1.0, 3.0, 0.0]])
    x = torch.tensor([[0.2, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0],     # present, mode 2, category 2
                      [0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]])    # a missing, category 1
    def log_softmax(v, i):
        return v[i] - math.log(sum(math.exp(u) for u in v))
    gauss = 0.5 * ((0.2 - math.tanh(0.3)) / 0.5) ** 2 + math.log(0.5) + 0.5 * math.log(2 * math.pi)
    row0 = gauss - log_softmax([1.0, -1.0], 1) - log_softmax([0.0, 2.0, -1.0], 1) - log_softmax([3.0, 0.0], 0)
    row1 = -log_softmax([0.0, 2.0, -1.0], 0) - log_softmax([3.0, 0.0], 1)
    np.testing.assert_allclose(lik.nll(params, x).numpy(), [row0, row1], rtol=1e-6)
    # the span normalisers are shifted per span: logits of 1e4 stay finite and give the same values
    big = params.clone()
    big[:, 3:6] += 1e4
    np.testing.assert_allclose(lik.nll(big, x).numpy(), [row0, row1], rtol=1e-5)


def test_mixed_mean_sample_and_learned_sigma():
    lik = MixedLikelihood(SPANS)
    assert isinstance(lik.log_sigma, torch.nn.Parameter)
    assert lik.sigma().item() == pytest.approx(0.1)
    params = torch.randn(500, 8)
    mean = lik.mean(params)
    np.testing.assert_allclose(mean[:, 0], torch.tanh(params[:, 0]), rtol=1e-6)
    np.testing.assert_allclose(mean[:, 3:6].sum(1), 1.0, rtol=1e-6)
    for start, stop in ((1, 3), (3, 6), (6, 8)):
        np.testing.assert_allclose(mean[:, start:stop], torch.softmax(params[:, start:stop], 1), rtol=1e-5, atol=1e-7)
    g = torch.Generator().manual_seed(0)
    s = lik.sample(params, g)
    assert torch.all(s[:, 1:3].sum(1) == 1) and torch.all(s[:, 3:6].sum(1) == 1)
    assert torch.all(s[:, 0].abs() <= 1)
    assert torch.equal(s, lik.sample(params, torch.Generator().manual_seed(0)))
    # category frequencies follow the softmax
    p = torch.softmax(torch.tensor([0.0, 2.0, -1.0]), 0)
    draws = lik.sample(torch.tensor([[0.0, 0.0, 0.0, 0.0, 2.0, -1.0, 0.0, 0.0]]).expand(4000, 8), g)
    np.testing.assert_allclose(draws[:, 3:6].mean(0), p, atol=0.03)
    # gradient reaches the learned sigma, sigma stays in [0.01, 1]
    lik.nll(params, s).sum().backward()
    assert lik.log_sigma.grad is not None and lik.log_sigma.grad.abs().sum() > 0
    with torch.no_grad():
        lik.log_sigma.fill_(5.0)
    assert lik.sigma().item() == pytest.approx(1.0)


def test_mixed_likelihood_errors():
    with pytest.raises(ConfigError, match="variance"):
        MixedLikelihood(SPANS, variance="free")
    with pytest.raises(ConfigError, match="sigma"):
        MixedLikelihood(SPANS, sigma=3.0)
    with pytest.raises(ConfigError, match="expected \\(B, 8\\)"):
        MixedLikelihood(SPANS).nll(torch.zeros(2, 7), torch.zeros(2, 7))



def test_mode_fit_diag_equals_full_covariance_in_one_dimension(monkeypatch):
    # the transformer fits its modes with "diag" for speed; in 1-D it is the same model as "full"
    import untwine.tabular.transformer as tt
    rng = np.random.default_rng(0)
    z = np.concatenate([rng.lognormal(0, 1, 600), np.zeros(300), rng.normal(3, 0.1, 100)])
    z = (z - z.mean()) / z.std()
    assert tt.MODE_COVARIANCE == "diag"
    diag = TableTransformer()._fit_modes("x", z)
    monkeypatch.setattr(tt, "MODE_COVARIANCE", "full")
    full = TableTransformer()._fit_modes("x", z)
    assert len(diag[0]) >= 2
    for a, b in zip(diag, full):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10)


# ---- every column kind right (issue 24) ------------------------------------------------------------
def _noisy_rows(tt, df, seed=0, alpha_noise=0.3):
    """The table's rows as a generator might give them back: alphas moved, modes kept."""
    x = tt.transform(df, dtype=np.float64)
    rng = np.random.default_rng(seed)
    for s in tt.spans:
        if s.kind == "continuous":
            x[:, s.start] = np.clip(x[:, s.start] + rng.normal(0, alpha_noise, len(x)), -1, 1)
    return x


def _random_rows(tt, n, seed=0):
    """Any rows at all: alphas uniform in [-1, 1], every one-hot span a random category."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, tt.output_dim))
    for s in tt.spans:
        if s.kind == "continuous":
            x[:, s.start] = rng.uniform(-1, 1, n)
        else:
            x[np.arange(n), s.start + rng.integers(0, s.width, n)] = 1.0
    return x


def test_numbers_on_a_small_support_decode_onto_it():
    # ordinal codes stored as floats: 14 values, each seen often; generated between them, a detector
    # told every synthetic row from a real one
    rng = np.random.default_rng(0)
    support = np.array([0, 0.5, 2.5, 6, 9, 11.5, 13, 17.25, 20, 21, 30, 33.5, 40, 41])
    df = pd.DataFrame({"code": rng.choice(support, 700), "few": rng.choice([0.5, 1.5, 4.25], 700)})
    tt = TableTransformer().fit(df)
    assert tt.kind_of("code") == "continuous" and tt.kind_of("few") == "categorical"
    back = tt.inverse_transform(_random_rows(tt, 2000))
    assert set(back["code"]) <= set(support)
    assert set(back["few"]) <= {0.5, 1.5, 4.25} and back["few"].dtype == np.float64


def test_point_masses_are_modes_of_their_own_and_decode_exactly():
    # zero-inflated (92% zeros, like capital-gain) with two decimals: any alpha on the zeros' mode is 0
    rng = np.random.default_rng(0)
    n = 2000
    gain = np.where(rng.random(n) < 0.92, 0.0, np.round(rng.lognormal(8, 1, n), 2))
    df = pd.DataFrame({"gain": gain})
    tt = TableTransformer().fit(df)
    assert tt._column("gain")["points"] == [0.0]
    assert "support" not in tt._column("gain")   # the other values are each seen about once: not copied
    x = tt.transform(df)
    mode = next(s for s in tt.spans if s.name == "gain.mode")
    zero_mode = x[:, mode.start] == 1.0
    np.testing.assert_array_equal(zero_mode, gain == 0)       # its own mode: no other value shares it
    back = tt.inverse_transform(_noisy_rows(tt, df))
    np.testing.assert_array_equal(back["gain"] == 0, gain == 0)
    assert (back["gain"][gain != 0] > 0).all()


def test_outliers_do_not_widen_the_main_mode_and_values_stay_in_range():
    rng = np.random.default_rng(0)
    values = np.r_[rng.normal(100, 10, 1000), [1e7, 1e7, 1e7]]
    positive = rng.lognormal(0, 1, 1003)
    df = pd.DataFrame({"v": values, "pos": positive})
    tt = TableTransformer().fit(df)
    info = tt._column("v")
    means, stds = tt.modes["v"]
    centre = (100 - info["shift"]) / info["scale"]
    main = np.abs(means - centre).argmin()
    assert stds[main] * info["scale"] < 50                   # was 225,240 with mean/sd scaling
    back = tt.inverse_transform(_random_rows(tt, 5000))
    assert back["v"].between(values.min(), values.max()).all()
    assert (back["pos"] >= positive.min()).all() and (back["pos"] <= positive.max()).all()
    # asked for: values may leave the training range
    free = TableTransformer(enforce_range=False).fit(df).inverse_transform(_random_rows(tt, 5000))
    assert (free["pos"] < positive.min()).any()


def test_decimals_of_the_training_values_are_kept():
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"price": np.round(rng.uniform(1, 100, 500), 2), "raw": rng.normal(0, 1, 500)})
    tt = TableTransformer().fit(df)
    back = tt.inverse_transform(_noisy_rows(tt, df))
    np.testing.assert_allclose(back["price"], np.round(back["price"], 2), rtol=0, atol=1e-9)
    assert tt._column("price")["decimals"] == 2 and tt._column("raw")["decimals"] is None
    assert not np.allclose(back["raw"], np.round(back["raw"], 6))   # full precision is left alone
    # values near 100 with full precision are not "7 decimals"
    assert TableTransformer().fit(pd.DataFrame({"v": rng.normal(100, 10, 300)}))._column("v")["decimals"] is None
    kept = TableTransformer(enforce_rounding=False).fit(df).inverse_transform(_noisy_rows(tt, df))
    assert not np.allclose(kept["price"], np.round(kept["price"], 2))


def test_dates_have_one_format_per_column_and_keep_it():
    days = pd.date_range("2020-01-01", periods=400, freq="D")
    df = pd.DataFrame({"dayfirst": days.strftime("%d/%m/%Y"), "iso": days.strftime("%Y-%m-%d"),
                       "n": np.arange(400.0)})
    tt = TableTransformer().fit(df)
    assert tt._column("dayfirst")["format"] == "%d/%m/%Y" and tt._column("iso")["format"] == "%Y-%m-%d"
    back = tt.inverse_transform(tt.transform(df, dtype=np.float64))
    assert back["dayfirst"].tolist() == df["dayfirst"].tolist()     # "01/08/2020" stays 1 August
    noisy = tt.inverse_transform(_noisy_rows(tt, df))
    # date-only columns come back as dates in their format: no times, no microseconds
    assert noisy["iso"].str.fullmatch(r"\d{4}-\d{2}-\d{2}").all()
    assert noisy["dayfirst"].str.fullmatch(r"\d{2}/\d{2}/\d{4}").all()
    # day first or month first cannot be told: refused, naming the ways out
    ambiguous = pd.DataFrame({"d": pd.date_range("2020-01-01", periods=12, freq="MS").strftime("%d/%m/%Y"),
                              "n": np.arange(12.0)})
    with pytest.raises(DataError, match=r"'d'.*%d/%m/%Y.*%m/%d/%Y.*--date-format.*--type d=categorical"):
        TableTransformer().fit(ambiguous)
    named = TableTransformer(formats={"d": "%m/%d/%Y"}).fit(ambiguous)
    assert named.inverse_transform(named.transform(ambiguous, dtype=np.float64))["d"].tolist() == \
        ambiguous["d"].tolist()
    mixed = pd.DataFrame({"d": ["2020-01-05", "14/02/2021"] * 10, "n": np.arange(20.0)})
    with pytest.raises(DataError, match="more than one format"):
        TableTransformer().fit(mixed)


def test_datetime_values_keep_their_resolution():
    stamps = pd.Series(pd.to_datetime(["2021-01-01", "2021-03-04", "2021-06-30", "2022-01-09"] * 10))
    df = pd.DataFrame({"when": stamps, "n": np.arange(40.0)})
    tt = TableTransformer().fit(df)
    back = tt.inverse_transform(_noisy_rows(tt, df))
    assert (back["when"] == back["when"].dt.normalize()).all()


def test_id_like_columns_are_generated_fresh_never_copied():
    n = 300
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"user_id": rng.permutation(np.arange(1000, 1000 + 3 * n, 3)),
                       "ref": [f"R{i:05d}" for i in rng.permutation(n)],
                       "amount": rng.normal(50, 5, n)})
    tt = TableTransformer().fit(df)
    assert tt.kind_of("user_id") == "id" and tt.kind_of("ref") == "id"
    assert not any(s.column in ("user_id", "ref") for s in tt.spans)   # nothing to learn, nothing to copy
    back = tt.inverse_transform(_random_rows(tt, 500))
    for col in ("user_id", "ref"):
        assert back[col].is_unique and not set(back[col]) & set(df[col]), col
    assert back["user_id"].dtype == df["user_id"].dtype
    # fitted on part of the table, the keys also avoid the rest (a fit's held-out rows)
    part = TableTransformer().fit(df.iloc[:200])
    part.avoid_keys(df.iloc[200:])
    again = part.inverse_transform(_random_rows(part, 500))
    assert not set(again["user_id"]) & set(df["user_id"])
    # unique numbers that are neither named like a key nor count rows stay numbers ("paid" ends in "id")
    amounts = rng.permutation(n) * 7 + rng.integers(0, 7, n)
    years = pd.DataFrame({"year": np.arange(1970, 2020), "v": rng.normal(0, 1, 50)})
    assert TableTransformer().fit(years).kind_of("year") == "integer"
    rows = pd.DataFrame({"row": np.arange(50), "v": rng.normal(0, 1, 50)})   # a written-out index
    assert TableTransformer().fit(rows).kind_of("row") == "id"
    for name in ("salary", "paid"):
        assert TableTransformer().fit(df.assign(user_id=amounts).rename(columns={"user_id": name})
                                      ).kind_of(name) == "integer", name
