"""The factor classifier (issue 25 item 10, issue 27): it learns the weak labels of an image set, says
which factors it can read (held-out accuracy at least halfway from chance to 1), and fidelity and
w-invariance count only those, with its own held-out accuracy beside them; it shows progress."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from untwine.data.images import ImageData, labels_from_columns
from untwine.multistage.classifier import (READABLE_SHARE, chance_accuracy, classifier_config, get_factor_classifier,
                                           readable_factors, train_factor_classifier)
from untwine.multistage.evaluation import factor_fidelity


def test_readable_is_halfway_from_chance_to_one():
    # dSprites as issue 25 found it: orientation 0.121 of 40 uniform angles (chance 0.025) is 0.10 of
    # the way to 1: left out; shape 0.99 of 3 is read
    acc = {"shape": 0.99, "orientation": 0.121, "scale": 0.60, "posX": 0.52, "posY": 0.48}
    chance = {"shape": 1 / 3, "orientation": 1 / 40, "scale": 1 / 6, "posX": 1 / 32, "posY": 1 / 32}
    assert readable_factors(acc, chance) == ["shape", "scale", "posX"]
    # a binary attribute present in 90% of images: 0.95 is exactly halfway, 0.94 is not
    assert readable_factors({"a": 0.95}, {"a": 0.9}) == ["a"]
    assert readable_factors({"a": 0.94}, {"a": 0.9}) == []
    assert readable_factors({"a": 1.0}, {"a": 1.0}) == []  # a constant label says nothing
    assert READABLE_SHARE == 0.5


def _toy_set(n: int = 400, seed: int = 0) -> ImageData:
    """Grey images whose brightness is the label "bright" (readable) and a coin flip "coin" that no
    image shows (unreadable)."""
    rng = np.random.default_rng(seed)
    bright = rng.integers(0, 2, n)
    coin = rng.integers(0, 2, n)
    imgs = np.where(bright[:, None, None, None] == 1, 200, 40).astype(np.uint8) * np.ones((1, 64, 64, 1), np.uint8)
    imgs = np.clip(imgs.astype(int) + rng.integers(-20, 21, imgs.shape), 0, 255).astype(np.uint8)
    return ImageData("toy", imgs, labels=labels_from_columns(["bright", "coin"], np.stack([bright, coin], 1)))


def test_chance_is_the_most_frequent_class_on_the_held_out_images():
    ds = _toy_set()
    idx = ds.evaluation_split.eval_indices
    truth = ds.labels.classes_of(idx)
    chance = chance_accuracy(ds, idx)
    assert chance["bright"] == pytest.approx(max(truth[:, 0].mean(), 1 - truth[:, 0].mean()))


def test_the_classifier_learns_weak_labels_and_leaves_out_what_it_cannot_read(capsys):
    ds = _toy_set()
    config = classifier_config(ds, steps=60, batch_size=32, held_out=40)
    assert config["factors"] == ["bright", "coin"] and config["sizes"] == [2, 2]
    clf = train_factor_classifier(ds, config, progress=True)
    out = capsys.readouterr().out
    assert "factor classifier (toy)" in out and "step 60/60" in out  # progress while it trains
    assert clf.accuracy["bright"] == 1.0
    assert clf.readable == ["bright"] and set(clf.chance) == {"bright", "coin"}

    class Identity(torch.nn.Module):  # a "VAE" that reconstructs exactly
        latent_dim = 2

        def encode(self, x):
            return x, None

        def decode(self, z):
            return z

        @property
        def likelihood(self):
            return type("L", (), {"mean": staticmethod(lambda t: t)})()

    fid = factor_fidelity(Identity(), ds, clf, n=30)
    assert set(fid["stage1"]) == {"bright", "mean"} and fid["stage1"]["bright"] == 1.0  # coin left out


def test_an_image_set_without_labels_has_no_classifier(tmp_path):
    ds = ImageData("plain", np.zeros((200, 64, 64, 1), np.uint8))
    from untwine.errors import DataError
    with pytest.raises(DataError, match="has no factors or labels for a factor classifier"):
        get_factor_classifier(ds, steps=2, cache=False)
