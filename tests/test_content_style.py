"""Content/style probes, retrieval and the accumulation curve on synthetic codes with known answers."""
import numpy as np
import pytest
import sklearn.linear_model  # noqa: F401  (its slow first import belongs to collection, not to one test)
import torch
from torch import nn

from untwine.data.arrays import ArrayGroundTruthData
from untwine.data.factors import FactorSpace
from untwine.errors import DataError
from untwine.metrics.content_style import (accuracy_vs_members, content_style_probes, evaluate_content_style,
                                           group_retrieval, probe_accuracy, sample_groups_with_content,
                                           split_content_combinations)
from untwine.nets.base import VAE
from untwine.nets.likelihoods import BernoulliLikelihood

SPACE = FactorSpace.from_values({"a": range(3), "b": range(4), "c": range(5)})


def test_split_is_a_seeded_partition_of_the_combinations():
    split = split_content_combinations(SPACE, ["b", "a"], holdout_fraction=0.25, seed=3)
    assert split.factors.tolist() == [0, 1]
    assert split.train.shape == (9, 2) and split.test.shape == (3, 2)
    both = {tuple(r) for r in split.train} | {tuple(r) for r in split.test}
    assert both == {(a, b) for a in range(3) for b in range(4)}
    assert not {tuple(r) for r in split.train} & {tuple(r) for r in split.test}
    again = split_content_combinations(SPACE, ["a", "b"], holdout_fraction=0.25, seed=3)
    assert np.array_equal(again.test, split.test)
    assert not np.array_equal(split_content_combinations(SPACE, ["a", "b"], 0.25, seed=4).test, split.test)


def test_split_errors():
    with pytest.raises(DataError, match="holdout_fraction"):
        split_content_combinations(SPACE, "a", holdout_fraction=1.0)
    with pytest.raises(DataError, match="proper subset"):
        split_content_combinations(SPACE, ["a", "b", "c"])
    with pytest.raises(DataError, match="unknown factor"):
        split_content_combinations(SPACE, "zz")


def test_groups_with_content_draw_only_the_given_combinations(rng):
    combos = np.array([[0, 3], [2, 1]])
    classes = sample_groups_with_content(SPACE, combos, ["a", "b"], num_groups=50, group_size=4, rng=rng)
    assert classes.shape == (50, 4, 3)
    content = classes[:, :, :2]
    assert (content == content[:, :1]).all()                       # shared within a group
    assert {tuple(r) for r in content[:, 0]} == {(0, 3), (2, 1)}
    assert len(np.unique(classes[:, :, 2])) > 1                    # style varies
    with pytest.raises(DataError, match="combinations"):
        sample_groups_with_content(SPACE, np.zeros((2, 3), int), ["a", "b"], 5, 2, rng)


def test_probe_reads_an_informative_code_and_not_noise(rng):
    y = rng.integers(0, 4, size=(600, 1))
    informative = np.concatenate([y + 0.05 * rng.standard_normal((600, 1)), rng.standard_normal((600, 2))], 1)
    acc = probe_accuracy(informative[:400], y[:400], informative[400:], y[400:])
    assert acc.shape == (1,) and acc[0] > 0.97
    noise = rng.standard_normal((600, 3))
    assert probe_accuracy(noise[:400], y[:400], noise[400:], y[400:])[0] < 0.4   # chance 0.25
    # a single training class is predicted as that class
    assert probe_accuracy(noise[:4], np.zeros(4, int), noise[4:8], np.array([0, 0, 1, 0]))[0] == 0.75
    with pytest.raises(DataError, match="integer classes"):
        probe_accuracy(noise[:4], np.zeros(4), noise[4:8], np.zeros(4, int))


def test_gbt_probe_reads_a_factor_that_is_not_linearly_readable(rng):
    # 4 classes coded by the radius of a ring at a random angle: each inner ring lies inside the
    # convex hull of the outer ones, so no linear readout separates them (chance 0.25); trees do
    y = rng.integers(0, 4, size=(3000, 1))
    radius, angle = 1 + y[:, 0] + 0.1 * rng.standard_normal(3000), rng.uniform(0, 2 * np.pi, 3000)
    code = np.stack([radius * np.cos(angle), radius * np.sin(angle)], 1)
    linear = probe_accuracy(code[:2000], y[:2000], code[2000:], y[2000:])[0]
    trees = probe_accuracy(code[:2000], y[:2000], code[2000:], y[2000:], probe="gbt")[0]
    assert trees > 0.97 and linear < 0.4
    noise = rng.standard_normal((600, 3))
    y4 = rng.integers(0, 4, size=(600, 1))
    assert probe_accuracy(noise[:400], y4[:400], noise[400:], y4[400:], probe="gbt")[0] < 0.4   # chance 0.25
    with pytest.raises(DataError, match="probe must be one of"):
        probe_accuracy(code[:10], y[:10], code[10:20], y[10:20], probe="knn")


def test_content_style_probes_separate_what_each_code_holds(rng):
    n = 800
    factors = SPACE.sample(n, rng)
    content_code = factors[:, :2] + 0.05 * rng.standard_normal((n, 2))
    style_code = factors[:, 2:] + 0.05 * rng.standard_normal((n, 1))
    out = content_style_probes(content_code[:500], style_code[:500], factors[:500],
                               content_code[500:], style_code[500:], factors[500:], content_factors=[0, 1])
    assert out["content_from_content"] > 0.97 and out["style_from_style"] > 0.97
    assert out["content_from_style"] < out["chance_content"] + 0.1
    assert out["style_from_content"] < out["chance_style"] + 0.1
    assert len(out["content_from_content_per_factor"]) == 2


def test_group_retrieval_by_hand_and_on_clusters(rng):
    codes = np.array([[0.0], [0.1], [5.0], [5.3], [0.2]])
    ids = np.array([0, 0, 1, 1, 1])
    out = group_retrieval(codes, ids)
    # nearest: 0->1 (hit), 1->0 (hit), 2->3 (hit), 3->2 (hit), 4->1 (miss)
    assert out["retrieval"] == pytest.approx(0.8)
    assert out["chance"] == pytest.approx((1 / 4 * 2 + 2 / 4 * 3) / 5)
    centres = rng.standard_normal((20, 3)) * 10
    clustered = np.repeat(centres, 4, axis=0) + 0.01 * rng.standard_normal((80, 3))
    assert group_retrieval(clustered, np.repeat(np.arange(20), 4))["retrieval"] == 1.0
    with pytest.raises(DataError, match="one id per code row"):
        group_retrieval(codes, ids[:3])


def test_accuracy_rises_with_the_members_accumulated(rng):
    def posteriors(groups):
        content = rng.integers(0, 3, size=(groups, 1))
        mu = content[:, None, :] + 1.0 * rng.standard_normal((groups, 6, 1))   # noisy evidence per member
        return mu, np.zeros_like(mu), content

    out = accuracy_vs_members(*posteriors(600), *posteriors(400))
    assert out["members"].tolist() == [1, 2, 3, 4, 5, 6]
    assert out["per_factor"].shape == (6, 1)
    assert out["accuracy"][-1] > out["accuracy"][0] + 0.15
    with pytest.raises(DataError, match="groups, members, dims"):
        accuracy_vs_members(np.zeros((2, 3)), np.zeros((2, 3)), np.zeros((2, 1), int),
                            np.zeros((2, 3, 1)), np.zeros((2, 3, 1)), np.zeros((2, 1), int))


class FactorEncoder(nn.Module):
    """mu = the factor classes written in the image's pixels (a perfect content/style split)."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        mu = x.flatten(1) * 255.0 / 40.0
        return mu, torch.zeros_like(mu)


def test_evaluate_content_style_on_a_perfect_encoder():
    classes = SPACE.classes_of(np.arange(len(SPACE)))
    images = (classes * 40).astype(np.uint8).reshape(len(SPACE), 1, 3, 1)  # pixel k = 40 * class_k
    data = ArrayGroundTruthData("toy", SPACE, images)
    model = VAE(FactorEncoder(), nn.Identity(), BernoulliLikelihood(), 3)
    split = split_content_combinations(SPACE, ["a", "b"], holdout_fraction=0.25, seed=0)
    out = evaluate_content_style(model, data, split, content_dim=2, num_groups=150, group_size=2,
                                 probes=("logistic", "gbt"))
    assert out["probe"] == "logistic" and set(out["by_probe"]) == {"logistic", "gbt"}
    assert out["by_probe"]["gbt"]["content_from_content"] == 1.0
    assert out["by_probe"]["gbt"]["accuracy_vs_members"]["accuracy"][0] == 1.0
    assert out["by_probe"]["logistic"]["content_from_content"] == out["content_from_content"]
    with pytest.raises(DataError, match="probes must be"):
        evaluate_content_style(model, data, split, content_dim=2, num_groups=10, group_size=2, probes=())
    assert out["content_from_content"] == 1.0 and out["style_from_style"] == 1.0
    assert out["content_from_style"] < out["chance_content"] + 0.15
    assert out["group_retrieval"]["retrieval"] == 1.0
    assert out["accuracy_vs_members"]["members"] == [1, 2]
    assert out["accuracy_vs_members"]["factor_names"] == ["a", "b"]
    assert out["accuracy_vs_members"]["accuracy"][0] == 1.0
