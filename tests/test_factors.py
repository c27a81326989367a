import numpy as np
import pytest

from untwine.data.factors import FactorSpace
from untwine.errors import DataError


@pytest.fixture
def space():
    return FactorSpace.from_values({"a": [0, 1, 2], "b": np.linspace(0, 1, 4), "c": [10.0, 20.0]})


def test_row_major_order_last_factor_fastest(space):
    assert len(space) == 24
    assert space.index_of(np.array([[0, 0, 1]]))[0] == 1
    assert space.index_of(np.array([[0, 1, 0]]))[0] == 2
    assert space.index_of(np.array([[1, 0, 0]]))[0] == 8
    assert space.index_of(np.array([[2, 3, 1]]))[0] == 23


def test_round_trip_every_index(space):
    idx = np.arange(len(space))
    classes = space.classes_of(idx)
    np.testing.assert_array_equal(space.index_of(classes), idx)
    # agrees with numpy's own row-major unravel
    np.testing.assert_array_equal(classes, np.stack(np.unravel_index(idx, space.sizes), axis=1))


def test_round_trip_millions():
    s = FactorSpace.from_values({"shape": range(3), "scale": range(6), "orient": range(40),
                                 "x": range(32), "y": range(32)})
    idx = np.random.default_rng(1).integers(0, len(s), 2_000_000)
    np.testing.assert_array_equal(s.index_of(s.classes_of(idx)), idx)


def test_values_and_back(space):
    classes = np.array([[2, 1, 0], [0, 3, 1]])
    vals = space.values_of(classes)
    np.testing.assert_allclose(vals, [[2, 1 / 3, 10], [0, 1, 20]])
    np.testing.assert_array_equal(space.classes_of_values(vals), classes)


def test_sampling_seeded_and_uniform(space):
    a = space.sample(30_000, np.random.default_rng(5))
    b = space.sample(30_000, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    counts = np.bincount(a[:, 1], minlength=4) / len(a)
    np.testing.assert_allclose(counts, 0.25, atol=0.01)


def test_sample_fixed(space, rng):
    s = space.sample_fixed(100, {"b": 2, 0: 1}, rng)
    assert (s[:, 1] == 2).all() and (s[:, 0] == 1).all()
    assert len(np.unique(s[:, 2])) == 2


@pytest.mark.parametrize("bad, msg", [
    (np.array([[3, 0, 0]]), "out of range 0..2"),
    (np.array([[0, 0]]), "shape"),
    (np.array([[0.5, 0, 0]]), "integers"),
])
def test_bad_classes(space, bad, msg):
    with pytest.raises(DataError, match=msg):
        space.index_of(bad)


def test_bad_requests(space, rng):
    with pytest.raises(DataError, match="out of range"):
        space.classes_of(np.array([24]))
    with pytest.raises(DataError, match="unknown factor 'd'"):
        space.sample_fixed(2, {"d": 0}, rng)
    with pytest.raises(DataError, match="not on its grid"):
        space.classes_of_values(np.array([[0.0, 0.5, 10.0]]))
