"""Grouped ML-VAE: product of Gaussians, one content sample per group, per-image loss, masks, errors."""
import csv
import math

import numpy as np
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lightning.fabric  # noqa: F401  (its slow import belongs to collection, not to the first engine test)
from untwine.cli import main
from untwine.data.samplers import GroupBatch
from untwine.errors import ConfigError, DataError
from untwine.nets import build_vae
from untwine.nets.base import VAE
from untwine.nets.likelihoods import BernoulliLikelihood
from untwine.objectives import OBJECTIVES, accumulate_content, build_objective


def masked(x, mask):
    return SimpleNamespace(x=x, classes=None, mask=mask)


def tiny_model(latent_dim=4, seed=0):
    torch.manual_seed(seed)
    return build_vae("mlp", in_dim=(1, 4, 4), latent_dim=latent_dim, hidden=(8,))


def test_product_of_gaussians_closed_form():
    # one group, two members, one dim: v = 1 and 4 -> 1/v_G = 1.25, mu_G = (2/1 + 7/4) / 1.25 = 3
    mu = torch.tensor([[2.0], [7.0]])
    lv = torch.tensor([[0.0], [math.log(4.0)]])
    mu_g, lv_g = accumulate_content(mu, lv)
    torch.testing.assert_close(mu_g, torch.tensor([3.0]))
    torch.testing.assert_close(lv_g.exp(), torch.tensor([0.8]))
    # a single image returns its own posterior
    mu_1, lv_1 = accumulate_content(mu[:1], lv[:1])
    torch.testing.assert_close(mu_1, mu[0])
    torch.testing.assert_close(lv_1, lv[0])
    # batched groups against the direct formula
    g = torch.Generator().manual_seed(0)
    mu, lv = torch.randn(3, 5, 2, generator=g), torch.randn(3, 5, 2, generator=g)
    prec = (-lv).exp()
    mu_g, lv_g = accumulate_content(mu, lv)
    torch.testing.assert_close(lv_g, -prec.sum(1).log())
    torch.testing.assert_close(mu_g, (prec * mu).sum(1) / prec.sum(1))


def test_accumulate_with_mask_ignores_absent_members_even_nan():
    mu = torch.tensor([[[2.0], [float("nan")], [7.0]]])
    lv = torch.tensor([[[0.0], [float("nan")], [math.log(4.0)]]])
    mu_g, lv_g = accumulate_content(mu, lv, torch.tensor([[True, False, True]]))
    torch.testing.assert_close(mu_g, torch.tensor([[3.0]]))
    torch.testing.assert_close(lv_g.exp(), torch.tensor([[0.8]]))


def test_accumulate_errors():
    with pytest.raises(DataError, match="no member present"):
        accumulate_content(torch.zeros(2, 3, 1), torch.zeros(2, 3, 1),
                           torch.tensor([[True, False, False], [False, False, False]]))
    with pytest.raises(DataError, match="same shape"):
        accumulate_content(torch.zeros(3, 2), torch.zeros(3, 1))
    with pytest.raises(DataError, match="one flag per member"):
        accumulate_content(torch.zeros(2, 3, 1), torch.zeros(2, 3, 1), torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(DataError, match="bool"):
        accumulate_content(torch.zeros(2, 3, 1), torch.zeros(2, 3, 1), torch.ones(2, 3))


class GivenEncoder(nn.Module):
    def __init__(self, mu, logvar):
        super().__init__()
        self.mu, self.logvar = nn.Parameter(mu.clone()), nn.Parameter(logvar.clone())

    def forward(self, x):
        return self.mu, self.logvar


def test_loss_by_hand_content_kl_once_per_group():
    # one group of two members, content_dim 1, style_dim 1; decoder = identity, images are 2-vectors
    mu = torch.tensor([[2.0, 0.5], [7.0, -1.0]])
    lv = torch.tensor([[0.0, 0.0], [math.log(4.0), math.log(2.0)]])
    model = VAE(GivenEncoder(mu, lv), nn.Identity(), BernoulliLikelihood(), 2).eval()
    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    out = build_objective("mlvae", content_dim=1, beta=3.0, latent_dim=2)(model, GroupBatch(x, None))
    z = torch.tensor([[3.0, 0.5], [3.0, -1.0]])  # content = the group mean for both
    recon = F.binary_cross_entropy_with_logits(z, x[0], reduction="sum") / 2
    kl_c = 0.5 * (9.0 + 0.8 - math.log(0.8) - 1.0)
    kl_s = 0.5 * (0.25 + 1 - 0 - 1) + 0.5 * (1.0 + 2.0 - math.log(2.0) - 1.0)
    torch.testing.assert_close(out.terms["recon"], recon)
    torch.testing.assert_close(out.terms["kl_content"], torch.tensor(kl_c / 2))
    torch.testing.assert_close(out.terms["kl_style"], torch.tensor(kl_s / 2))
    torch.testing.assert_close(out.terms["kl"], torch.tensor((kl_c + kl_s) / 2))
    torch.testing.assert_close(out.loss, recon + 3.0 * (kl_c + kl_s) / 2)
    torch.testing.assert_close(build_objective("mlvae", content_dim=1)(model, GroupBatch(x, None), beta=0.0).loss,
                               recon)


def test_one_content_sample_per_group_shared_by_every_member():
    model = tiny_model(latent_dim=5).train()
    seen = {}
    model.decoder.register_forward_hook(lambda m, i, o: seen.update(z=i[0].detach()))
    x = torch.rand(3, 4, 1, 4, 4)
    build_objective("mlvae", content_dim=2)(model, GroupBatch(x, None))
    z = seen["z"].view(3, 4, 5)
    content, style = z[..., :2], z[..., 2:]
    assert torch.equal(content, content[:, :1].expand_as(content))    # identical within each group
    assert not torch.allclose(content[0, 0], content[1, 0])           # different groups differ
    assert not torch.allclose(style[0, 0], style[0, 1])               # style is per member


def test_gradients_reach_every_members_content_head():
    model = tiny_model(latent_dim=4).train()
    kept = []

    def keep_mean(module, inputs, output):
        output[0].retain_grad()
        kept.append(output[0])

    model.encoder.register_forward_hook(keep_mean)
    out = build_objective("mlvae", content_dim=2)(model, GroupBatch(torch.rand(2, 3, 1, 4, 4), None))
    out.loss.backward()
    grad = kept[0].grad
    assert (grad[:, :2].abs().sum(1) > 0).all()
    assert (grad[:, 2:].abs().sum(1) > 0).all()


@pytest.mark.parametrize("training", [False, True])
def test_masked_group_equals_unmasked_on_present_members(training):
    model = tiny_model(latent_dim=4).train(training)
    objective = build_objective("mlvae", content_dim=2)
    x = torch.rand(1, 4, 1, 4, 4)
    padded = x.clone()
    padded[:, 1] = float("nan")  # absent members are never looked at
    torch.manual_seed(1)
    a = objective(model, masked(padded, torch.tensor([[True, False, True, True]])))
    torch.manual_seed(1)
    b = objective(model, GroupBatch(x[:, [0, 2, 3]], None))
    torch.testing.assert_close(a.loss, b.loss)
    for key in b.terms:
        torch.testing.assert_close(a.terms[key], b.terms[key])


def test_unequal_groups_sum_per_image():
    model = tiny_model(latent_dim=4).eval()
    objective = build_objective("mlvae", content_dim=2)
    x = torch.rand(2, 3, 1, 4, 4)
    both = objective(model, masked(x, torch.tensor([[True, True, True], [True, False, True]])))
    g0 = objective(model, GroupBatch(x[:1], None))
    g1 = objective(model, GroupBatch(x[1:, [0, 2]], None))
    torch.testing.assert_close(both.loss, (3 * g0.loss + 2 * g1.loss) / 5)


def test_errors():
    with pytest.raises(ConfigError, match="content_dim"):
        build_objective("mlvae")
    with pytest.raises(ConfigError, match="no style dims"):
        build_objective("mlvae", content_dim=10, latent_dim=10)
    with pytest.raises(ConfigError, match="content_dim"):
        build_objective("mlvae", content_dim=0)
    model = tiny_model(latent_dim=4)
    objective = build_objective("mlvae", content_dim=2)
    x = torch.rand(2, 3, 1, 4, 4)
    with pytest.raises(DataError, match="no member present"):
        objective(model, masked(x, torch.tensor([[True, True, True], [False, False, False]])))
    with pytest.raises(DataError, match="one flag per member"):
        objective(model, masked(x, torch.ones(2, 2, dtype=torch.bool)))
    with pytest.raises(DataError, match="GroupBatch"):
        objective(model, torch.rand(6, 1, 4, 4))
    with pytest.raises(ConfigError, match="latent dims"):
        build_objective("mlvae", content_dim=2, latent_dim=6)(model, GroupBatch(x, None))
    assert OBJECTIVES["mlvae"].batch_kind == "groups"


# -- pictures (viz/groups.py) ------------------------------------------------------------------------

class PixelEncoder(nn.Module):
    """mu = the 4 pixels of a (1, 2, 2) image: dims 0, 1 (content) = top row, dims 2, 3 (style) = bottom row."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        mu = x.flatten(1)
        return mu, torch.zeros_like(mu)


class PixelDecoder(nn.Module):
    def forward(self, z):
        return torch.logit(z.clamp(1e-4, 1 - 1e-4)).view(-1, 1, 2, 2)  # sigmoid(logit(z)) = z: cells show z


def pixel_model():
    return VAE(PixelEncoder(), PixelDecoder(), BernoulliLikelihood(), 4)


def test_swap_grid_rows_keep_content_columns_take_style(tmp_path):
    from PIL import Image

    from untwine.viz.groups import save_swap_grid, swap_grid

    g = torch.Generator().manual_seed(0)
    content = torch.rand(3, 1, 2, generator=g).expand(3, 2, 2)      # shared by both members of a group
    style = torch.rand(3, 2, 2, generator=g)                        # per member
    groups = torch.stack([content, style], dim=2).view(3, 2, 1, 2, 2)
    grid = swap_grid(pixel_model(), groups, content_dim=2)
    pad, side = 2, 2
    assert grid.shape == (4 * side + 5 * pad, 4 * side + 5 * pad, 1)

    def cell(r, c):
        y, x = pad + r * (side + pad), pad + c * (side + pad)
        return grid[y:y + side, x:x + side, 0]

    def u8(t):
        return np.round(t.numpy() * 255).astype(np.uint8)

    for i in range(3):
        for j in range(3):
            np.testing.assert_allclose(cell(i + 1, j + 1)[0], u8(content[i, 0]), atol=1)   # content of group i
            np.testing.assert_allclose(cell(i + 1, j + 1)[1], u8(style[j, 0]), atol=1)     # style of group j
        np.testing.assert_array_equal(cell(0, i + 1), u8(groups[i, 0, 0]))             # header: style source
        np.testing.assert_array_equal(cell(i + 1, 0), u8(groups[i, 0, 0]))             # left: content source
    path = save_swap_grid(pixel_model(), groups, 2, tmp_path / "swap.png")
    assert np.array_equal(np.asarray(Image.open(path))[..., None], grid)
    with pytest.raises(DataError, match="content_dim"):
        swap_grid(pixel_model(), groups, content_dim=4)
    with pytest.raises(DataError, match="G, M, C, H, W"):
        swap_grid(pixel_model(), groups[0], content_dim=2)


def test_content_and_style_traversals_cover_their_dims(tmp_path):
    from untwine.viz.groups import save_content_style_traversals

    x = torch.rand(2, 1, 2, 2)
    content, style = save_content_style_traversals(pixel_model(), x, 2, tmp_path / "c.png", tmp_path / "s.png",
                                                   num_steps=3, limit=0.4)
    assert content.dims == [0, 1] and style.dims == [2, 3]
    assert (tmp_path / "c.png").is_file() and (tmp_path / "s.png").is_file()


def test_accuracy_curve_plot(tmp_path):
    from untwine.viz.groups import plot_accuracy_vs_members

    curve = {"members": [1, 2, 3], "accuracy": [0.5, 0.7, 0.8], "per_factor": [[0.4, 0.6], [0.6, 0.8], [0.7, 0.9]]}
    path = plot_accuracy_vs_members(curve, tmp_path / "curve.png", chance=0.2)
    assert path.stat().st_size > 1000
    with pytest.raises(DataError, match="equal length"):
        plot_accuracy_vs_members({"members": [1, 2], "accuracy": [0.5]}, tmp_path / "bad.png")


@pytest.mark.filterwarnings("ignore:The number of unique classes")   # sklearn, on the few evaluation groups
@pytest.mark.parametrize("preset", ["dsprites-mlvae", "shapes3d-mlvae"])
def test_presets_train_through_the_engine(tmp_path, preset):
    small = ["model.arch=mlp", "model.hidden=[16]", "optim.batch_size=8", "trainer.log_every=1",
             "trainer.ckpt_every=3", "trainer.eval_preset=none", "trainer.pictures=false", "trainer.progress=false"]
    assert main(["train", preset, "trainer.steps=3", *small, "--run-dir", str(tmp_path / "run")]) == 0
    with open(next((tmp_path / "run").rglob("*.csv"))) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and all(math.isfinite(float(r["loss"])) for r in rows)
    assert float(rows[-1]["kl"]) == pytest.approx(float(rows[-1]["kl_content"]) + float(rows[-1]["kl_style"]), rel=1e-4)
    # the run's own config gives its unseen content (the presets hold 20% of it out) and content_dim
    from untwine.metrics.content_style import content_split_from_config, evaluate_content_style
    from untwine.train.run import load_run
    run = load_run(tmp_path / "run")
    split = content_split_from_config(tmp_path / "run", run.data)
    assert run.config.batch.holdout_fraction == 0.2 and len(split.test) > 0
    out = evaluate_content_style(run.model, run.data, config=run.config, num_groups=12, group_size=2)
    assert out["content_holdout"]["verified"] is True
    assert out["content_holdout"]["test_combinations"] == len(split.test)
    assert out["content_factors"] == list(run.config.batch.shared_factors)
