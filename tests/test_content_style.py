"""Content/style probes, retrieval and the accumulation curve on synthetic codes with known answers."""
import numpy as np
import pytest
import sklearn.linear_model  # noqa: F401  (its slow first import belongs to collection, not to one test)
import torch
from torch import nn

from untwine.data.arrays import ArrayGroundTruthData
from untwine.data.factors import FactorSpace
from untwine.errors import DataError
from untwine.metrics.content_style import (UnverifiedContentWarning, accuracy_vs_members, content_split_from_config,
                                           content_style_probes, evaluate_content_style, group_retrieval,
                                           permutation_baseline, probe_accuracy, sample_groups_with_content,
                                           split_content_combinations, trained_content_combinations)
from untwine.nets.base import VAE
from untwine.nets.likelihoods import BernoulliLikelihood
from untwine.train.config import load_config, save_config

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
                                 probes=("logistic", "gbt"), trained_content=split.train)
    assert out["probe"] == "logistic" and set(out["by_probe"]) == {"logistic", "gbt"}
    assert out["by_probe"]["gbt"]["content_from_content"] == 1.0
    assert out["by_probe"]["gbt"]["accuracy_vs_members"]["accuracy"][0] == 1.0
    assert out["content_holdout"] == {"train_combinations": 9, "test_combinations": 3, "verified": True,
                                      "seen_test_combinations": 0, "source": "trained_content"}
    with pytest.raises(DataError, match="probes must be"):
        evaluate_content_style(model, data, split, content_dim=2, num_groups=10, group_size=2, probes=(),
                               trained_content=split.train)
    assert out["content_from_content"] == 1.0 and out["style_from_style"] == 1.0
    assert out["content_from_style"] < out["chance_content"] + 0.15
    assert out["group_retrieval"]["retrieval"] == 1.0
    assert out["accuracy_vs_members"]["members"] == [1, 2]
    assert out["accuracy_vs_members"]["factor_names"] == ["a", "b"]
    assert out["accuracy_vs_members"]["accuracy"][0] == 1.0


# -- probes: each probe's own scores, the first at the top level -------------------------------------

SPACE4 = FactorSpace.from_values({"a": range(3), "b": range(4), "c": range(5), "d": range(6)})


class RingStyleEncoder(nn.Module):
    """Content dims = (a, b); style dims = factor c as the radius (1 + c) of a point at angle 2 pi d / 6.
    The style factor c is then in the style code but not linearly readable (each ring lies inside the
    convex hull of the outer ones), which gradient-boosted trees read exactly."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        f = torch.round(x.flatten(1) * 255.0 / 40.0)
        radius, angle = 1.0 + f[:, 2], 2 * np.pi * f[:, 3] / 6
        mu = torch.stack([f[:, 0], f[:, 1], radius * torch.cos(angle), radius * torch.sin(angle)], 1)
        return mu, torch.zeros_like(mu)


def ring_model_and_data():
    classes = SPACE4.classes_of(np.arange(len(SPACE4)))
    images = (classes * 40).astype(np.uint8).reshape(len(SPACE4), 1, 4, 1)
    data = ArrayGroundTruthData("toy4", SPACE4, images)
    return VAE(RingStyleEncoder(), nn.Identity(), BernoulliLikelihood(), 4), data


def test_each_probe_reports_its_own_scores_and_the_first_leads():
    # the linear and the tree probe disagree on the style factor c (linear cannot cut the rings), so a
    # mix-up of the probes (one probe's numbers under the other's name, or the top level not being the
    # first probe's) changes what is compared; before, the test compared a value with its own copy
    model, data = ring_model_and_data()
    split = split_content_combinations(SPACE4, ["a", "b"], holdout_fraction=0.25, seed=0)
    out = evaluate_content_style(model, data, split, content_dim=2, num_groups=300, group_size=2,
                                 probes=("gbt", "logistic"), trained_content=split.train)
    trees, linear = out["by_probe"]["gbt"], out["by_probe"]["logistic"]
    c_trees, c_linear = trees["style_from_style_per_factor"][0], linear["style_from_style_per_factor"][0]
    assert c_trees > 0.97 and c_linear < 0.75, (c_trees, c_linear)
    assert out["probe"] == "gbt"
    for key in ("style_from_style", "content_from_content", "content_from_style", "permutation_content"):
        assert out[key] == trees[key]
    assert out["style_from_style"] != linear["style_from_style"]


# -- chance levels: the majority class against a permutation baseline --------------------------------

def test_permutation_baseline_is_the_uninformative_probes_accuracy_where_majority_is_biased_low(rng):
    # test classes are distributed unlike the training ones (as on held-out content): the majority
    # training class is rare in the test rows, so "always the majority class" sits far below what a
    # probe gets from a code that holds nothing about the label; the permutation baseline does not
    n_train, n_test = 1500, 1500
    ytr = rng.choice(3, size=n_train, p=[0.36, 0.32, 0.32])   # near balanced, as on a grid
    yte = rng.choice(3, size=n_test, p=[0.02, 0.49, 0.49])    # the majority training class is rare here
    noise_tr, noise_te = rng.standard_normal((n_train, 8)), rng.standard_normal((n_test, 8))
    informative_tr = np.concatenate([noise_tr, ytr[:, None] + 0.05 * rng.standard_normal((n_train, 1))], 1)
    informative_te = np.concatenate([noise_te, yte[:, None] + 0.05 * rng.standard_normal((n_test, 1))], 1)
    factors_tr = np.stack([ytr, rng.integers(0, 4, n_train)], 1)
    factors_te = np.stack([yte, rng.integers(0, 4, n_test)], 1)
    # factor 0 is content, read from a content code that holds it; the style code is pure noise
    out = content_style_probes(informative_tr, noise_tr, factors_tr, informative_te, noise_te, factors_te,
                               content_factors=[0])
    assert out["content_from_content"] > 0.97
    uninformed = out["content_from_style"]                 # a probe on a code without the label
    assert out["chance_content"] == pytest.approx(np.mean(yte == 0))     # majority rate ~0.02
    assert uninformed > out["chance_content"] + 0.15                     # the majority rate is biased low
    assert abs(out["permutation_content"] - uninformed) < 0.08           # the permutation baseline is not
    assert len(out["permutation_content_per_factor"]) == 1 and len(out["permutation_style_per_factor"]) == 1
    # the baseline breaks the code-label link even for a code that holds the label
    direct = permutation_baseline(informative_tr, ytr, informative_te, yte, repeats=2)
    assert direct.shape == (1,) and direct[0] < 0.5
    with pytest.raises(DataError, match="repeats"):
        permutation_baseline(informative_tr, ytr, informative_te, yte, repeats=0)


# -- unseen content: the split comes from the run's config, and seen content is refused ---------------

def toy_config(holdout: float, seed: int = 0):
    return load_config({"data": {"name": "dsprites"}, "model": {"latent_dim": 3},
                        "objective": {"name": "mlvae", "content_dim": 2},
                        "batch": {"group_size": 2, "shared_factors": ["a", "b"], "holdout_fraction": holdout,
                                  "holdout_seed": seed}})


def perfect_model_and_data():
    classes = SPACE.classes_of(np.arange(len(SPACE)))
    images = (classes * 40).astype(np.uint8).reshape(len(SPACE), 1, 3, 1)
    return VAE(FactorEncoder(), nn.Identity(), BernoulliLikelihood(), 3), ArrayGroundTruthData("toy", SPACE, images)


def test_split_from_a_run_config_is_the_split_the_engine_trained_with(tmp_path):
    cfg = toy_config(0.25, seed=3)
    split = content_split_from_config(cfg, SPACE)
    same = split_content_combinations(SPACE, ["a", "b"], 0.25, 3)
    assert np.array_equal(split.train, same.train) and np.array_equal(split.test, same.test)
    factors, trained = trained_content_combinations(cfg, SPACE)
    assert factors.tolist() == [0, 1] and np.array_equal(trained, same.train)
    # from a run directory (its config.yaml) and from the config's dict alike
    save_config(cfg, tmp_path / "config.yaml")
    assert np.array_equal(content_split_from_config(tmp_path, SPACE).test, same.test)
    assert np.array_equal(content_split_from_config(cfg.to_dict(), SPACE).test, same.test)
    # a run without holdout trained on every combination: nothing is unseen
    with pytest.raises(DataError, match="holdout_fraction=0"):
        content_split_from_config(toy_config(0.0), SPACE)
    assert len(trained_content_combinations(toy_config(0.0), SPACE)[1]) == 12
    with pytest.raises(DataError, match="shared_factors"):
        content_split_from_config(load_config("dsprites-betavae"), SPACE)


def test_evaluate_derives_the_split_from_the_config_and_refuses_trained_content():
    model, data = perfect_model_and_data()
    cfg = toy_config(0.25, seed=0)
    out = evaluate_content_style(model, data, config=cfg, num_groups=60, group_size=2)   # split, content_dim: the run's
    assert out["content_holdout"]["verified"] is True and out["content_holdout"]["source"] == "config"
    assert out["content_holdout"]["test_combinations"] == 3 and out["content_from_content"] == 1.0
    # a split drawn with another seed puts trained content in the test groups: refused
    other = split_content_combinations(SPACE, ["a", "b"], 0.25, seed=1)
    assert {tuple(r) for r in other.test} & {tuple(r) for r in content_split_from_config(cfg, SPACE).train}
    with pytest.raises(DataError, match="were trained on"):
        evaluate_content_style(model, data, other, config=cfg, num_groups=20, group_size=2)
    # a run that held nothing out (the presets' old default) trained on every test combination
    with pytest.raises(DataError, match="were trained on"):
        evaluate_content_style(model, data, other, config=toy_config(0.0), num_groups=20, group_size=2)
    with pytest.raises(DataError, match="holdout_fraction=0"):
        evaluate_content_style(model, data, config=toy_config(0.0), num_groups=20, group_size=2)
    with pytest.warns(UserWarning, match="were trained on"):
        seen = evaluate_content_style(model, data, other, config=toy_config(0.0), num_groups=20, group_size=2,
                                      allow_seen_content=True)
    assert seen["content_holdout"]["verified"] is False and seen["content_holdout"]["seen_test_combinations"] == 3
    # the content factors must be the ones the run's groups shared
    with pytest.raises(DataError, match="shared_factors"):
        evaluate_content_style(model, data, split_content_combinations(SPACE, ["a"], 0.5), config=cfg,
                               content_dim=2, num_groups=20, group_size=2)
    # with no provenance nothing can be checked, and it says so
    with pytest.warns(UnverifiedContentWarning, match="cannot check"):
        unchecked = evaluate_content_style(model, data, other, content_dim=2, num_groups=20, group_size=2)
    assert unchecked["content_holdout"]["verified"] is None
    with pytest.raises(DataError, match="trained_content must be"):
        evaluate_content_style(model, data, other, content_dim=2, trained_content=np.zeros((2, 3), int))


@pytest.mark.parametrize("preset", ["dsprites-mlvae", "shapes3d-mlvae", "dsprites-mlvae-full", "shapes3d-mlvae-full"])
def test_grouped_presets_hold_content_out_of_training_by_default(preset):
    from untwine.data.registry import get_dataset
    from untwine.train.batches import build_sampler
    from untwine.train.engine import build_objective_from

    cfg = load_config(preset)
    data = get_dataset(cfg.data.name)
    assert cfg.batch.holdout_fraction > 0
    split = content_split_from_config(cfg, data)          # a preset run has unseen content to score
    assert len(split.test) > 0
    # every single content value still occurs in training, so a probe can name it on unseen groups
    for col, factor in enumerate(split.factors):
        assert set(split.train[:, col]) == set(range(data.factor_space.sizes[factor]))
    sampler = build_sampler(cfg, data, build_objective_from(cfg, len(data)), seed=0, device=None)
    held = {tuple(c) for c in split.test.tolist()}
    drawn = set()
    for step in range(30):
        classes = np.asarray(sampler.classes_at(step))
        drawn |= {tuple(c) for c in classes[:, 0, split.factors].tolist()}
    assert drawn and not drawn & held
