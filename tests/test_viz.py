"""Pictures: exact grid layouts, traversals of a decoder whose output encodes z, GIF frames, curves."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from untwine.errors import DataError
from untwine.nets.base import VAE
from untwine.viz import (image_grid, latent_traversal, plot_beta_kl, plot_training_curves, read_log,
                         reconstruction_grid, save_reconstructions, save_traversals, traversal_grid)
from untwine.viz.images import ROW_LABEL_WIDTH
from untwine.viz.traversals import HEADER_HEIGHT, LABEL_WIDTH

SIDE, LATENT = 8, 4  # 8x8 one-channel images; latent j owns pixel rows 2j, 2j+1
LOGVAR = torch.tensor([-1.0, -3.0, 0.0, -2.0])


class BlockEncoder(nn.Module):
    """mu_j = mean of the image's row block j; logvar fixed, so each dimension's KL is known."""

    def forward(self, x):
        mu = x[:, 0].reshape(x.shape[0], LATENT, -1).mean(dim=2)
        return mu, LOGVAR.expand_as(mu)


class BlockDecoder(nn.Module):
    """Logit of row block j = 3 * z_j: the picture encodes the code, brighter as z_j grows."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(3.0))  # a parameter, so the model has a device

    def forward(self, z):
        return (self.scale * z).repeat_interleave(2 * SIDE, dim=1).reshape(-1, 1, SIDE, SIDE)


class BernoulliStandIn(nn.Module):
    pass


def block_model() -> VAE:
    return VAE(BlockEncoder(), BlockDecoder(), BernoulliStandIn(), LATENT)


def block_images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, SIDE, SIDE, generator=g)


def cell(grid: np.ndarray, r: int, c: int, h: int, w: int, pad: int = 2) -> np.ndarray:
    y, x = pad + r * (h + pad), pad + c * (w + pad)
    return grid[y:y + h, x:x + w]


def test_image_grid_places_each_image_and_pads_the_rest():
    images = np.stack([np.full((3, 4, 1), 10 * (i + 1), np.uint8) for i in range(5)])
    grid = image_grid(images, cols=2, pad=1, pad_value=7)
    assert grid.shape == (3 * 3 + 4 * 1, 2 * 4 + 3 * 1, 1)
    for i in range(5):
        np.testing.assert_array_equal(cell(grid, i // 2, i % 2, 3, 4, pad=1), images[i])
    assert (cell(grid, 2, 1, 3, 4, pad=1) == 7).all()  # the sixth cell is empty
    assert (grid[0] == 7).all() and (grid[:, 0] == 7).all() and (grid[:, 5] == 7).all()


def test_image_grid_rejects_an_empty_batch():
    with pytest.raises(DataError, match="0 images"):
        image_grid(np.zeros((0, 4, 4, 1), np.uint8), cols=2)


def test_reconstructions_put_originals_above_their_reconstructions(tmp_path):
    model = block_model().train()
    x = block_images(6)
    grid = reconstruction_grid(model, x, cols=4)
    # 6 images in 4 columns: 2 chunks, each an originals row and a reconstructions row
    assert grid.shape == (4 * SIDE + 5 * 2, 4 * SIDE + 5 * 2, 1)
    mu, _ = BlockEncoder()(x)
    expected = np.round(torch.sigmoid(3 * mu).repeat_interleave(2 * SIDE, 1).reshape(6, SIDE, SIDE, 1).numpy() * 255)
    originals = np.round(x.permute(0, 2, 3, 1).numpy() * 255)
    for i in range(6):
        chunk, col = divmod(i, 4)
        np.testing.assert_array_equal(cell(grid, 2 * chunk, col, SIDE, SIDE), originals[i])
        np.testing.assert_array_equal(cell(grid, 2 * chunk + 1, col, SIDE, SIDE), expected[i])
    assert (cell(grid, 2, 2, SIDE, SIDE) == 128).all() and (cell(grid, 3, 3, SIDE, SIDE) == 128).all()
    assert model.training  # the training flag is restored

    path = save_reconstructions(model, x, tmp_path / "sub" / "recon.png", cols=4)
    png = np.asarray(Image.open(path))[..., None]
    np.testing.assert_array_equal(png[:, ROW_LABEL_WIDTH:], grid)
    assert (png[:2, :ROW_LABEL_WIDTH] == 255).all()  # a white label column ...
    for r in range(4):  # ... with dark text ("input", "reconstruction") on every row of cells
        assert png[2 + r * (SIDE + 2): 2 + r * (SIDE + 2) + SIDE, :ROW_LABEL_WIDTH].min() < 128
    assert [p.name for p in path.parent.iterdir()] == ["recon.png"]  # no temp file left behind


def test_reconstructions_use_the_likelihood_mean_when_offered():
    class GaussianWithMean(nn.Module):
        def mean(self, params):
            return params * 0 + 0.5

    model = VAE(BlockEncoder(), BlockDecoder(), GaussianWithMean(), LATENT)
    grid = reconstruction_grid(model, block_images(2), cols=2)
    assert (cell(grid, 1, 0, SIDE, SIDE) == 128).all()  # round(0.5 * 255)


def expected_kl_order(x: torch.Tensor) -> list[int]:
    mu, _ = BlockEncoder()(x)
    kl = (0.5 * (mu**2 + LOGVAR.exp() - LOGVAR - 1)).mean(0)
    return sorted(range(LATENT), key=lambda j: -float(kl[j])), kl


def test_traversal_rows_follow_kl_and_change_only_their_own_block_monotonically():
    x = block_images(5, seed=1)
    order, kl = expected_kl_order(x)
    trav = latent_traversal(block_model(), x, num_steps=7, limit=2.0)
    assert trav.dims == order
    np.testing.assert_allclose(trav.kl, kl[order].numpy(), rtol=1e-6)
    np.testing.assert_allclose(trav.values, np.linspace(-2, 2, 7), atol=1e-6)
    assert trav.images.shape == (LATENT, 7, SIDE, SIDE, 1)
    base = np.round(torch.sigmoid(3 * BlockEncoder()(x)[0][0]).numpy() * 255)
    for r, dim in enumerate(trav.dims):
        blocks = trav.images[r, :, :, :, 0].reshape(7, LATENT, 2 * SIDE).astype(int)
        own = blocks[:, dim, 0]
        assert (np.diff(own) > 0).all(), f"row {r} (z{dim}) should brighten along the traversal"
        others = np.delete(blocks, dim, axis=1)
        np.testing.assert_array_equal(others[:, :, 0], np.broadcast_to(np.delete(base, dim), (7, LATENT - 1)))

    grid = traversal_grid(trav)
    assert grid.shape == (LATENT * SIDE + 5 * 2, 7 * SIDE + 8 * 2, 1)
    np.testing.assert_array_equal(cell(grid, 2, 6, SIDE, SIDE), trav.images[2, 6])


def test_traversal_dims_selection_and_errors():
    x = block_images(5, seed=1)
    order, _ = expected_kl_order(x)
    assert latent_traversal(block_model(), x, dims=2).dims == order[:2]
    assert latent_traversal(block_model(), x, dims=[3, 0]).dims == [3, 0]
    with pytest.raises(DataError, match="not in 0..3"):
        latent_traversal(block_model(), x, dims=[4])
    with pytest.raises(DataError, match="num_steps"):
        latent_traversal(block_model(), x, num_steps=1)


def test_save_traversals_png_layout_labels_and_gif_frames(tmp_path):
    x = block_images(5, seed=1)
    steps = 6
    trav = save_traversals(block_model(), x, tmp_path / "t.png", tmp_path / "t.gif", num_steps=steps)
    png = np.asarray(Image.open(tmp_path / "t.png"))
    grid = traversal_grid(trav)[..., 0]
    assert png.shape == (HEADER_HEIGHT + grid.shape[0], LABEL_WIDTH + grid.shape[1])
    np.testing.assert_array_equal(png[HEADER_HEIGHT:, LABEL_WIDTH:], grid)
    np.testing.assert_allclose(trav.values, np.linspace(-2.5, 2.5, steps))
    header = png[:HEADER_HEIGHT]
    for s in range(steps):  # the strip above the grid gives each column's value of z_j
        x0 = LABEL_WIDTH + 2 + s * (SIDE + 2)
        assert header[:, x0 - 1:x0 + SIDE + 1].min() < 128
    assert header[:, :LABEL_WIDTH].min() < 128  # "z_j ="
    labels = png[HEADER_HEIGHT:, :LABEL_WIDTH]
    for r in range(LATENT):  # every row band carries dark label text
        band = labels[2 + r * (SIDE + 2): 2 + r * (SIDE + 2) + SIDE]
        assert band.min() < 128

    gif = Image.open(tmp_path / "t.gif")
    assert gif.n_frames == 2 * steps - 2
    frames = []
    for t in range(gif.n_frames):
        gif.seek(t)
        frames.append(np.asarray(gif.convert("L")))
    # frame t shows step t of every row (4 rows in 4 columns), forward then back
    assert frames[0].shape == (HEADER_HEIGHT + SIDE + 4, LATENT * SIDE + 5 * 2)
    for t, step in enumerate(list(range(steps)) + list(range(steps - 2, 0, -1))):
        assert frames[t][:HEADER_HEIGHT].min() < 128  # the frame's value of z_j, written above it
        for r in range(LATENT):
            np.testing.assert_allclose(cell(frames[t][HEADER_HEIGHT:], 0, r, SIDE, SIDE),
                                       trav.images[r, step, :, :, 0], atol=2)


@pytest.fixture
def full_log(tmp_path):
    steps = np.arange(0, 300, 10)
    frame = pd.DataFrame({
        "step": steps, "loss": 500 - steps, "recon": 450 - steps, "kl": 5 + 0.01 * steps,
        "beta": 50 * np.exp(-steps / 50.0), "set_point": 0.5 + 0.0005 * steps})
    path = tmp_path / "metrics.csv"
    frame.to_csv(path, index=False)
    return path


def png_size(path):
    with Image.open(path) as im:
        return im.size


def test_training_curves_one_panel_per_logged_quantity(tmp_path, full_log):
    out = plot_training_curves(full_log, tmp_path / "curves.png")
    assert png_size(out) == (700, 3 * 230)
    assert np.asarray(Image.open(out).convert("L")).std() > 5  # something is drawn

    only_kl = tmp_path / "kl.csv"
    pd.DataFrame({"step": [0, 1, 2], "kl": [1.0, 2.0, 3.0]}).to_csv(only_kl, index=False)
    assert png_size(plot_training_curves(only_kl, tmp_path / "kl.png")) == (700, 230)


def test_training_curves_tolerate_prefixes_gaps_and_zero_beta(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("step,train/loss,train/KL,beta,epoch\n0,10,,0.0,0\n1,,2.5,0.5,0\n2,8,2.0,1.0,0\n")
    log = read_log(path)
    assert list(log.columns) == ["step", "loss", "kl", "beta"]
    assert log["kl"].isna().tolist() == [True, False, False]
    assert png_size(plot_training_curves(path, tmp_path / "m.png")) == (700, 3 * 230)


def test_curves_errors_name_the_problem(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        plot_training_curves(tmp_path / "nope.csv", tmp_path / "x.png")
    junk = tmp_path / "junk.csv"
    junk.write_text("step,epoch\n0,0\n")
    with pytest.raises(DataError, match="no plottable column.*epoch"):
        plot_training_curves(junk, tmp_path / "x.png")
    with pytest.raises(DataError, match=r"lacks \['beta', 'kl'\]"):
        plot_beta_kl(junk, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_beta_kl_plot_has_two_panels(tmp_path, full_log):
    assert png_size(plot_beta_kl(full_log, tmp_path / "bk.png")) == (700, 2 * 230)


def test_pictures_of_the_real_conv64_vae(tmp_path):
    nets = pytest.importorskip("untwine.nets")
    torch.manual_seed(0)
    model = nets.build_vae("conv64", in_channels=1, latent_dim=10).to(memory_format=torch.channels_last)
    x = (torch.rand(3, 1, 64, 64) < 0.2).float()
    grid = reconstruction_grid(model, x)
    assert grid.shape == (2 * 64 + 3 * 2, 3 * 64 + 4 * 2, 1)
    np.testing.assert_array_equal(cell(grid, 0, 1, 64, 64), to_uint8_reference(x[1]))
    trav = save_traversals(model, x, tmp_path / "t.png", tmp_path / "t.gif", num_steps=3, dims=2)
    assert trav.images.shape == (2, 3, 64, 64, 1) and len(set(trav.dims)) == 2
    assert trav.kl[0] >= trav.kl[1]
    assert Image.open(tmp_path / "t.gif").n_frames == 4


def to_uint8_reference(image: torch.Tensor) -> np.ndarray:
    return np.round(image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
