"""Samplers: exact properties of pairs and groups, their statistics, seeding and exact resume."""
import json

import numpy as np
import pytest
import torch

from untwine.data.arrays import ArrayGroundTruthData
from untwine.data.factors import FactorSpace
from untwine.data.samplers import (PAIR_MODES, GroupSampler, ObservationSampler, PairSampler, sample_groups,
                                   sample_weak_pairs)
from untwine.data.split import evaluation_split
from untwine.errors import DataError

SPACE = FactorSpace.from_values({"a": range(3), "b": range(4), "c": range(5), "d": range(2), "e": range(6)})  # K=5


@pytest.fixture(scope="module")
def data():
    # every image encodes its own flat index in its first pixels, so gathers can be checked exactly
    n = len(SPACE)
    imgs = np.zeros((n, 6, 6, 3), dtype=np.uint8)
    idx = np.arange(n)
    imgs[:, 0, 0, 0], imgs[:, 0, 0, 1] = idx % 256, idx // 256
    imgs[:, 1:, :, :] = np.random.default_rng(0).integers(0, 256, (n, 5, 6, 3), dtype=np.uint8)
    return ArrayGroundTruthData("toy", SPACE, imgs)


# -- weak pairs -------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["locatello", "guaranteed"])
@pytest.mark.parametrize("k", [1, 2, 4, -1])
def test_pairs_share_exactly_the_unchanged_factors(rng, mode, k):
    c1, c2, changed = sample_weak_pairs(SPACE, 4000, rng, k=k, mode=mode)
    assert c1.shape == c2.shape == changed.shape == (4000, 5) and changed.dtype == bool
    SPACE.check_classes(c1), SPACE.check_classes(c2)
    np.testing.assert_array_equal(c1[~changed], c2[~changed])
    n_changed = changed.sum(axis=1)
    assert n_changed.min() >= 1 and n_changed.max() <= 4           # at least one factor stays shared
    if mode == "guaranteed":
        np.testing.assert_array_equal(c1 != c2, changed)           # the chosen factors really change
    if k in (1, 2, 4):
        assert set(np.unique(n_changed)) <= {1, k}


def test_pairs_one_or_k_split_is_half_and_factor_choice_uniform(rng):
    n = 20000
    _, _, changed = sample_weak_pairs(SPACE, n, rng, k=3)
    share_k = np.mean(changed.sum(axis=1) == 3)
    assert abs(share_k - 0.5) < 4 * np.sqrt(0.25 / n)              # 4 sigma
    # each factor is chosen with probability (1/2 * 1 + 1/2 * 3) / 5 = 0.4
    np.testing.assert_allclose(changed.mean(axis=0), 0.4, atol=4 * np.sqrt(0.24 / n))


def test_locatello_mode_resamples_uniformly_so_some_changes_keep_their_value(rng):
    # a resampled factor with n values keeps its value with probability 1/n (disentanglement_lib)
    c1, c2, changed = sample_weak_pairs(SPACE, 20000, rng, k=1, mode="locatello")
    d = changed[:, 3]                                               # factor d has 2 values
    assert abs(np.mean(c1[d, 3] == c2[d, 3]) - 0.5) < 0.05
    e = changed[:, 4]                                               # factor e has 6 values
    counts = np.bincount(c2[e, 4], minlength=6) / e.sum()
    np.testing.assert_allclose(counts, 1 / 6, atol=0.04)


def test_k_minus_one_spans_one_to_k_minus_one(rng):
    n = 20000
    _, _, changed = sample_weak_pairs(SPACE, n, rng, k=-1)
    counts = np.bincount(changed.sum(axis=1), minlength=6)
    assert counts[0] == 0 and counts[5] == 0
    # P(1) = 1/2 + 1/2 * 1/4, P(j) = 1/8 for j = 2..4
    np.testing.assert_allclose(counts[1:5] / n, [0.625, 0.125, 0.125, 0.125], atol=0.02)


def test_guaranteed_mode_never_picks_single_valued_factors(rng):
    space = FactorSpace.from_values({"fixed": [0.0], "x": range(3), "y": range(2)})
    c1, c2, changed = sample_weak_pairs(space, 2000, rng, k=2, mode="guaranteed")
    assert not changed[:, 0].any()
    np.testing.assert_array_equal(c1 != c2, changed)
    # 2 variable factors: at most 1 changes, so a variable factor always stays shared (the old cap,
    # the number of variable factors, changed both x and y in half the pairs)
    assert (changed.sum(axis=1) == 1).all()
    np.testing.assert_allclose(changed[:, 1:].mean(axis=0), 0.5, atol=0.05)  # x or y, uniformly


def test_guaranteed_mode_caps_changes_one_below_the_variable_factors(rng):
    space = FactorSpace.from_values({"fixed": [0.0], "x": range(3), "y": range(2), "w": range(4), "one": [1.0]})
    _, _, changed = sample_weak_pairs(space, 4000, rng, k=3, mode="guaranteed")
    counts = np.bincount(changed.sum(axis=1), minlength=4)
    assert counts[0] == 0 and counts[3] == 0 and counts[1] > 0 and counts[2] > 0  # k = 3 capped at 3 - 1
    assert abs(counts[2] / 4000 - 0.5) < 0.05


@pytest.mark.parametrize("values", [{"fixed": [0.0], "x": range(3)}, {"a": [0.0], "b": [1.0]}])
def test_guaranteed_mode_needs_two_variable_factors(rng, values):
    space = FactorSpace.from_values(values)
    with pytest.raises(DataError, match="at least 2 factors with more than one value.*mode='locatello'"):
        sample_weak_pairs(space, 10, rng, k=1, mode="guaranteed")
    sample_weak_pairs(space, 10, rng, k=1, mode="locatello")  # the plain mode still works
    tiny = ArrayGroundTruthData("tiny", space, np.zeros((len(space), 2, 2, 1), np.uint8))
    with pytest.raises(DataError, match="at least 2 factors with more than one value"):
        PairSampler(tiny, batch_size=2, mode="guaranteed")  # at construction, not at the first batch


def test_pairs_are_reproducible_from_the_seed():
    a = sample_weak_pairs(SPACE, 50, np.random.default_rng(7), k=-1)
    b = sample_weak_pairs(SPACE, 50, np.random.default_rng(7), k=-1)
    c = sample_weak_pairs(SPACE, 50, np.random.default_rng(8), k=-1)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize("k, match", [(5, "k=5 .* use 1..4"), (0, "k=0"), (-2, "k=-2"), (1.5, "integer")])
def test_impossible_pairs_are_refused(rng, k, match):
    with pytest.raises(DataError, match=match):
        sample_weak_pairs(SPACE, 10, rng, k=k)


def test_pair_mode_and_space_checks(rng):
    with pytest.raises(DataError, match="unknown pair mode 'always'"):
        sample_weak_pairs(SPACE, 10, rng, mode="always")
    with pytest.raises(DataError, match="at least 2 factors"):
        sample_weak_pairs(FactorSpace.from_values({"x": range(3)}), 10, rng)


# -- groups -----------------------------------------------------------------------------------------

def test_groups_share_exactly_the_content_factors(rng):
    classes = sample_groups(SPACE, 500, 4, ["b", 4], rng)
    assert classes.shape == (500, 4, 5)
    SPACE.check_classes(classes.reshape(-1, 5))
    content, style = [1, 4], [0, 2, 3]
    assert (classes[:, :, content] == classes[:, :1, content]).all()
    # style varies inside groups: members differ in a style factor as often as independent draws do
    # (factor c, 5 values: two members agree with probability 1/5)
    assert abs(np.mean(classes[:, 0, 2] == classes[:, 1, 2]) - 0.2) < 0.06
    # and content varies between groups, uniformly
    counts = np.bincount(classes[:, 0, 4], minlength=6) / 500
    np.testing.assert_allclose(counts, 1 / 6, atol=0.07)
    assert not (classes[:, :, style] == classes[:, :1, style]).all()


@pytest.mark.parametrize("kwargs, match", [
    (dict(shared_factors=["a", "b", "c", "d", "e"]), "sharing every factor"),
    (dict(shared_factors=[0, 1, 2, 3, 4, "a"]), "sharing every factor"),
    (dict(shared_factors=[]), "at least one factor"),
    (dict(shared_factors=["color"]), "unknown factor 'color'"),
    (dict(shared_factors=[7]), "position 7 is out of range"),
    (dict(shared_factors=["a"], group_size=0), "group_size must be >= 1"),
    (dict(shared_factors=["a"], num_groups=0), "num_groups must be >= 1"),
])
def test_impossible_groups_are_refused(rng, kwargs, match):
    args = dict(num_groups=2, group_size=3) | kwargs
    with pytest.raises(DataError, match=match):
        sample_groups(SPACE, rng=rng, **args)


# -- batch samplers ---------------------------------------------------------------------------------

def _indices_in_images(x):
    """Decode the flat index that the toy images carry in pixel (0, 0)."""
    return (x[..., 0, 0, 0] * 255).round().long() + 256 * (x[..., 1, 0, 0] * 255).round().long()


def test_observation_batches_are_the_images_of_their_classes(data):
    sampler = ObservationSampler(data, batch_size=32, seed=3)
    x, classes = next(sampler)
    assert x.shape == (32, 3, 6, 6) and x.dtype == torch.float32 and classes.dtype == torch.int64
    assert torch.equal(x, data.observations(classes.numpy()))
    np.testing.assert_array_equal(_indices_in_images(x).numpy(), SPACE.index_of(classes.numpy()))
    on_device = ObservationSampler(data, batch_size=32, seed=3, device=torch.device("cpu")).batch_at(0)
    assert torch.equal(on_device.x, x) and torch.equal(on_device.classes, classes)


def test_observation_sampler_resumes_exactly(data):
    a = ObservationSampler(data, batch_size=16, seed=11)
    for _ in range(3):
        next(a)
    state = json.loads(json.dumps(a.state_dict()))                # JSON-able
    assert state == {"sampler": "ObservationSampler", "seed": 11, "step": 3, "holdout_eval": True, "batch_size": 16}
    expected = [next(a) for _ in range(3)]
    assert not torch.equal(expected[0].classes, expected[1].classes)  # each step draws afresh
    b = ObservationSampler(data, batch_size=16, seed=0)
    b.load_state_dict(state)
    for want in expected:
        got = next(b)
        assert torch.equal(got.x, want.x) and torch.equal(got.classes, want.classes)
    # another seed, another stream; batch t depends only on (seed, t)
    c = ObservationSampler(data, batch_size=16, seed=12)
    assert not torch.equal(c.batch_at(3).classes, expected[0].classes)
    assert torch.equal(ObservationSampler(data, 16, seed=11).batch_at(4).x, expected[1].x)
    with pytest.raises(DataError, match="batch_size=16 but this sampler has batch_size=8"):
        ObservationSampler(data, batch_size=8).load_state_dict(state)


def test_observation_draws_are_uniform_over_the_grid(data):
    s = ObservationSampler(data, batch_size=500, seed=0, holdout_eval=False)
    idx = np.concatenate([s.indices_at(t) for t in range(40)])
    counts = np.bincount(SPACE.classes_of(idx)[:, 2], minlength=5) / idx.size
    np.testing.assert_allclose(counts, 0.2, atol=0.02)
    per_image = np.bincount(idx, minlength=len(SPACE)) / 40   # each image in a batch w.p. 500/720
    assert abs(per_image.mean() - 500 / 720) < 1e-12 and per_image.min() > 0.35 and per_image.max() < 1.0


def test_observation_batches_hold_distinct_images(data):
    # beta-TCVAE's MSS estimate of q(z) is unbiased only for batches drawn without replacement
    s = ObservationSampler(data, batch_size=200, seed=1)   # with replacement, 200 of 720 repeat ~24 images
    for t in range(20):
        assert np.unique(s.indices_at(t)).size == 200
    whole = ObservationSampler(data, batch_size=len(SPACE), seed=2, holdout_eval=False).indices_at(0)
    np.testing.assert_array_equal(np.sort(whole), np.arange(len(SPACE)))  # a batch of N is a permutation
    with pytest.raises(DataError, match="batch_size=721 exceeds the 720 training observations of 'toy'.*<= 720"):
        ObservationSampler(data, batch_size=721, holdout_eval=False)
    # 2% of the 720 (14 images) are held out for evaluation: 706 remain for a batch
    train = evaluation_split(SPACE).train_indices
    np.testing.assert_array_equal(np.sort(ObservationSampler(data, batch_size=706, seed=2).indices_at(0)), train)
    with pytest.raises(DataError, match="batch_size=707 exceeds the 706 training observations"):
        ObservationSampler(data, batch_size=707)


def test_pair_sampler_batches_and_resume(data):
    s = PairSampler(data, batch_size=64, k=2, mode="guaranteed", seed=5)
    x1, x2, changed = next(s)
    assert x1.shape == x2.shape == (64, 3, 6, 6) and changed.shape == (64, 5) and changed.dtype == torch.bool
    c1, c2, ch = s.classes_at(0)
    assert torch.equal(x1, data.observations(c1)) and torch.equal(x2, data.observations(c2))
    np.testing.assert_array_equal(changed.numpy(), ch)
    np.testing.assert_array_equal(SPACE.classes_of(_indices_in_images(x1).numpy()) !=
                                  SPACE.classes_of(_indices_in_images(x2).numpy()), ch)
    state = s.state_dict()
    assert state["k"] == 2 and state["mode"] == "guaranteed" and state["step"] == 1
    want = next(s)
    r = PairSampler(data, batch_size=64, k=2, mode="guaranteed")
    r.load_state_dict(state)
    got = next(r)
    assert all(torch.equal(g, w) for g, w in zip(got, want))
    with pytest.raises(DataError, match="k=5 changed factors is impossible with 5 factors"):
        PairSampler(data, batch_size=8, k=5)


def test_group_sampler_batches(data):
    s = GroupSampler(data, num_groups=6, group_size=3, shared_factors=["a", "e"], seed=2)
    x, classes = next(s)
    assert x.shape == (6, 3, 3, 6, 6) and classes.shape == (6, 3, 5)
    assert torch.equal(x.reshape(18, 3, 6, 6), data.observations(classes.reshape(18, 5).numpy()))
    assert (classes[:, :, [0, 4]] == classes[:, :1, [0, 4]]).all()
    assert s.state_dict()["shared_factors"] == ["a", "e"]
    with pytest.raises(DataError, match="sharing every factor"):
        GroupSampler(data, 2, 2, shared_factors=list(SPACE.names))
    with pytest.raises(DataError, match="group_size must be >= 1"):
        GroupSampler(data, 2, 0, shared_factors="a")


@pytest.mark.parametrize("bad, match", [(dict(batch_size=0), "batch_size must be >= 1"),
                                        (dict(batch_size=4, seed=-1), "seed must be >= 0"),
                                        (dict(batch_size=True), "batch_size must be an integer")])
def test_sampler_argument_checks(data, bad, match):
    with pytest.raises(DataError, match=match):
        ObservationSampler(data, **bad)
    with pytest.raises(DataError, match="GroundTruthData"):
        ObservationSampler(np.zeros((3, 3)), batch_size=2)


# ---- the evaluation split: no training sampler returns a held-out image -------------------------

def test_evaluation_split_is_fixed_disjoint_and_two_percent():
    split = evaluation_split(SPACE)
    assert split.num_eval == 14 and split.num_train == 706
    assert np.intersect1d(split.eval_indices, split.train_indices).size == 0
    np.testing.assert_array_equal(np.union1d(split.eval_indices, split.train_indices), np.arange(len(SPACE)))
    np.testing.assert_array_equal(split.is_eval.nonzero()[0], split.eval_indices)
    # a property of the grid: the same sizes under other names give the same split
    renamed = FactorSpace.from_values({f"g{i}": f.values for i, f in enumerate(SPACE.factors)})
    np.testing.assert_array_equal(evaluation_split(renamed).eval_indices, split.eval_indices)
    with pytest.raises(ValueError):
        split.eval_indices[0] = 1   # shared between callers: read-only
    from untwine.data.spaces import DSPRITES, SHAPES3D
    assert evaluation_split(DSPRITES).num_eval == 14745 and evaluation_split(SHAPES3D).num_eval == 9600


def test_training_samplers_never_return_evaluation_images(data):
    held = evaluation_split(SPACE).eval_indices
    single = ObservationSampler(data, batch_size=300, seed=3)
    seen = np.concatenate([single.indices_at(t) for t in range(30)])
    assert np.intersect1d(seen, held).size == 0
    assert np.unique(seen).size == 706          # and every training image is reachable
    # the sampler on the whole grid does draw them (so the check above can fail)
    whole = ObservationSampler(data, batch_size=300, seed=3, holdout_eval=False)
    assert np.intersect1d(np.concatenate([whole.indices_at(t) for t in range(30)]), held).size > 0
    for mode in PAIR_MODES:
        for holdout, expect_none in ((True, True), (False, False)):
            pairs = PairSampler(data, batch_size=256, k=-1, mode=mode, seed=4, holdout_eval=holdout)
            idx = np.concatenate([SPACE.index_of(np.concatenate(pairs.classes_at(t)[:2])) for t in range(20)])
            assert (np.intersect1d(idx, held).size == 0) == expect_none, (mode, holdout)
        c1, c2, changed = PairSampler(data, batch_size=256, k=2, mode=mode, seed=4).classes_at(0)
        np.testing.assert_array_equal(c1[~changed], c2[~changed])    # rejection keeps pairs valid
    for holdout, expect_none in ((True, True), (False, False)):
        groups = GroupSampler(data, num_groups=64, group_size=5, shared_factors=["a"], seed=5,
                              holdout_eval=holdout)
        classes = np.concatenate([groups.classes_at(t) for t in range(20)])
        assert (np.intersect1d(SPACE.index_of(classes.reshape(-1, 5)), held).size == 0) == expect_none
        assert (classes[:, :, 0] == classes[:, :1, 0]).all()      # members still share the content
