import numpy as np
import pandas as pd
import pytest

from untwine.errors import DataError
from untwine.tabular import evaluation as ev
from untwine.tabular.demo import demo_table


def test_tv_and_ks_complements_by_hand():
    r = pd.Series(["a", "a", "b", "c", None])
    s = pd.Series(["a", "b", "b", "b"])
    # real a .5 b .25 c .25; synthetic a .25 b .75 c 0 -> TV = (.25 + .5 + .25) / 2
    assert ev.tv_complement(r, s) == pytest.approx(0.5)
    assert ev.ks_complement(pd.Series([1.0, 2.0, 3.0, 4.0]), pd.Series([3.0, 4.0, 5.0, 6.0])) == pytest.approx(0.5)


def test_correlation_and_contingency_by_hand():
    real = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0], "y": [1.0, 2.0, 3.0, 4.0]})
    anti = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0], "y": [4.0, 3.0, 2.0, 1.0]})
    assert ev.correlation_similarity(real, anti) == pytest.approx(0.0)
    assert ev.correlation_similarity(real, real) == pytest.approx(1.0)
    assert np.isnan(ev.correlation_similarity(real, anti.assign(y=1.0)))
    a = pd.DataFrame({"u": ["p", "p", "q", None], "v": [1, 2, 1, 1]})
    b = pd.DataFrame({"u": ["p", "q", "q", None], "v": [1, 2, 1, 1]})
    # joint cells: (p,1) .25/.25, (p,2) .25/0, (q,1) .25/.25, (None,1) .25/.25, (q,2) 0/.25
    assert ev.contingency_similarity(a, b) == pytest.approx(0.75)


def test_mixed_pair_discretises_each_table_on_its_own_bins():
    real = pd.DataFrame({"n": np.arange(10.0), "c": list("aaaaabbbbb")})
    # the synthetic numbers are the real ones shifted: on its own bins they fall in the same bins,
    # so the mixed pair is perfect although KS is not
    synth = real.assign(n=real["n"] + 100.0)
    types = {"n": "numerical", "c": "categorical"}
    trends = ev.column_pair_trends(real, synth, types)
    assert trends["pairs"][("n", "c")] == ("ContingencySimilarity", pytest.approx(1.0))
    assert ev.column_shapes(real, synth, types)["columns"]["n"][1] == pytest.approx(0.0)
    # np.digitize puts the maximum in bin 11 of its own table
    assert ev.discretise(pd.Series([0.0, 5.0, 10.0])).tolist() == [1, 6, 11]


def test_quality_of_a_table_against_itself_and_against_noise():
    real = demo_table(300, seed=0)
    same = ev.quality_report(real, real)
    assert same["score"] == pytest.approx(1.0)
    rng = np.random.default_rng(1)
    shuffled = pd.DataFrame({c: real[c].to_numpy()[rng.permutation(len(real))] for c in real.columns})
    broken = ev.quality_report(real, shuffled)
    assert broken["column_shapes"] == pytest.approx(1.0)        # marginals kept
    assert broken["column_pair_trends"] < 0.95                  # dependence (income ~ job) lost
    assert ev.sdtypes(real)["joined"] == "datetime" and ev.sdtypes(real)["member"] == "boolean"


@pytest.mark.slow
def test_c2st_and_utility_on_fresh_and_distorted_rows():
    real, fresh = demo_table(400, seed=0), demo_table(400, seed=1)
    auc = ev.c2st(real, fresh, n=400)
    assert set(auc) == {"logistic", "hgb"} and all(0.3 < v < 0.7 for v in auc.values())
    noise = fresh.assign(income=fresh["income"] * 3)
    assert ev.c2st(real, noise, n=400)["hgb"] > 0.95
    util = ev.utility(real, fresh, demo_table(300, seed=2), target="member")
    for source in ("synthetic", "real"):
        for model in ("logistic", "hgb"):
            assert 0.55 < util[source][model]["auc"] <= 1.0


def test_privacy_on_fresh_and_copied_rows():
    real, fresh = demo_table(400, seed=0), demo_table(400, seed=1)
    copies = ev.privacy(real, real.iloc[:200], fresh, n=400)
    assert copies["exact_copy_rate"] == 1.0 and copies["closer_to_train"] == 1.0
    honest = ev.privacy(real, demo_table(400, seed=3), fresh, n=400)
    assert honest["exact_copy_rate"] == 0.0 and 0.35 < honest["closer_to_train"] < 0.65


def test_privacy_searches_the_whole_training_table():
    # issue 24: privacy() searched a 2,000-row sample of the training table, so the training table
    # itself offered as "synthetic" scored 6% exact copies. Here the training table (3,000 rows) is
    # larger than the synthetic subsample (500): every synthetic row is a copy and must be seen as one.
    train, holdout = demo_table(3000, seed=0), demo_table(1000, seed=1)
    copied = ev.privacy(train, train, holdout, n=500)
    assert copied["exact_copy_rate"] == 1.0 and copied["closer_to_train"] == 1.0
    assert copied["synthetic_rows"] == 500 and copied["train_rows_searched"] == 3000
    # fresh rows against the whole train (3,000) and holdout (1,000): the raw share sits near
    # 3000 / 4000, the rescaled one near 0.5
    honest = ev.privacy(train, demo_table(3000, seed=3), holdout, n=500)
    assert honest["exact_copy_rate"] == 0.0 and honest["closer_baseline"] == pytest.approx(0.75)
    assert 0.65 < honest["closer_to_train_raw"] < 0.85 and 0.4 < honest["closer_to_train"] < 0.6
    # half copies, half fresh rows: 0.5 + 0.5 / 2 on the equal-sizes scale
    half = pd.concat([train.iloc[:250], demo_table(250, seed=4)], ignore_index=True)
    assert 0.65 < ev.privacy(train, half, holdout, n=500)["closer_to_train"] < 0.85


def test_closer_share_rescaling_by_hand():
    d_hold = np.ones(4)
    # nearer to train on 3 of 4 rows with train 3x the holdout: exactly the baseline, 0.5
    assert ev.closer_share(np.array([0.5, 0.5, 0.5, 2.0]), d_hold, 300, 100)["closer_to_train"] == 0.5
    assert ev.closer_share(np.zeros(4), d_hold, 300, 100)["closer_to_train"] == 1.0
    assert ev.closer_share(np.full(4, 2.0), d_hold, 300, 100)["closer_to_train"] == 0.0
    # equal sizes: no rescaling; a tie counts half
    got = ev.closer_share(np.array([0.5, 1.0, 2.0, 2.0]), d_hold, 100, 100)
    assert got["closer_to_train"] == got["closer_to_train_raw"] == pytest.approx(1.5 / 4)


def test_distance_by_hand():
    train = pd.DataFrame({"n": [0.0, 10.0], "c": ["a", "b"]})
    enc = ev._Encoder(train, {"n": "numerical", "c": "categorical"})
    rows = pd.DataFrame({"n": [5.0, np.nan], "c": ["a", "b"]})
    # row 0: to (0, a): (0.5 + 0) / 2; row 1: to (10, b): (1 (missing vs value) + 0) / 2
    np.testing.assert_allclose(ev.distance_to_closest(rows, train, enc), [0.25, 0.5])


def test_evaluation_errors():
    real = demo_table(50)
    with pytest.raises(DataError, match="lacks columns"):
        ev.quality_report(real, real.drop(columns=["job"]))
    with pytest.raises(DataError, match="DataFrame"):
        ev.c2st(real, real.to_numpy())
    with pytest.raises(DataError, match="not in the table"):
        ev.utility(real, real, real, target="nope")
    with pytest.raises(DataError, match="categorical or boolean"):
        ev.utility(real, real, real, target="income")


def test_pair_trends_score_only_pairs_with_a_real_trend_as_sdmetrics():
    # 2 x 2 tables by hand: [[2, 1], [0, 1]] has Cramer's V = |2*1 - 1*0| / sqrt(3*1*2*2) = 0.577 > 0.3;
    # [[1, 1], [1, 1]] has V = 0: SDMetrics' QualityReport leaves that pair out (NaN)
    linked = pd.DataFrame({"u": list("pppq"), "v": [1, 1, 2, 2]})
    loose = pd.DataFrame({"u": list("ppqq"), "v": [1, 2, 1, 2]})
    other = pd.DataFrame({"u": list("pqqq"), "v": [1, 1, 2, 2]})
    # cells (p,1) .5/.25 (p,2) .25/0 (q,2) .25/.5 (q,1) 0/.25 -> TV .5
    assert ev.contingency_similarity(linked, other, 0.3) == pytest.approx(0.5)
    assert np.isnan(ev.contingency_similarity(loose, other, 0.3))
    # loose cells .25 each against other's (p,1) .25 (q,1) .25 (q,2) .5 -> TV .25
    assert ev.contingency_similarity(loose, other, 0.0) == pytest.approx(0.75)
    # Pearson 0.28 on the real side: below SDMetrics' 0.5, so NaN by default; scored with threshold 0
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    y = np.array([2.0, 1.0, 4.0, 3.0, 2.0])
    r = float(np.corrcoef(x, y)[0, 1])
    weak = pd.DataFrame({"x": x, "y": y})
    assert 0.2 < r < 0.5 and np.isnan(ev.correlation_similarity(weak, weak, 0.5))
    assert ev.correlation_similarity(weak, weak.assign(y=-y), 0.0) == pytest.approx(1 - abs(2 * r) / 2)
    # a missing value drops its row (as SDMetrics), it is not read as 0
    holed = pd.DataFrame({"x": [1.0, 2.0, 3.0, np.nan], "y": [1.0, 2.0, 3.0, 100.0]})
    assert ev.correlation_similarity(holed, holed.iloc[:3], 0.5) == pytest.approx(1.0)
    # the property's mean runs over the scored pairs only
    real = pd.concat([linked, pd.DataFrame({"w": list("abab")})], axis=1)
    synth = pd.concat([other, pd.DataFrame({"w": list("aabb")})], axis=1)
    trends = ev.column_pair_trends(real, synth, {"u": "categorical", "v": "categorical", "w": "categorical"})
    scored = {k: v for k, (_, v) in trends["pairs"].items() if np.isfinite(v)}
    # (u, w) is [[2, 1], [0, 1]] again (scored, similarity .5 by the same cells); (v, w) is [[1, 1], [1, 1]]
    assert list(scored) == [("u", "v"), ("u", "w")] and trends["score"] == pytest.approx(0.5)
    everything = ev.column_pair_trends(real, synth, {"u": "categorical", "v": "categorical", "w": "categorical"}, 0, 0)
    assert all(np.isfinite(v) for _, v in everything["pairs"].values())
