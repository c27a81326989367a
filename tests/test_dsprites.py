"""Procedural dSprites: the picture means what the factors say, bit for bit deterministic."""
import hashlib

import numpy as np
import pytest
import torch

from untwine.data.dsprites import RENDERER_VERSION, DSprites, render_sprites
from untwine.errors import DataError

SQUARE, ELLIPSE, HEART = 0, 1, 2
STEP_DEG = 360 / 39  # orientation grid step


@pytest.fixture(scope="module")
def ds():
    return DSprites()


def image(ds, shape, scale, orient, px, py):
    idx = ds.factor_space.index_of(np.array([[shape, scale, orient, px, py]]))
    return ds.images(idx)[0, :, :, 0] > 0


def centroid(mask):
    """(column, row) of the pixel centres of a binary mask."""
    r, c = np.nonzero(mask)
    return c.mean() + 0.5, r.mean() + 0.5


def test_images_batch_and_packed_agree(ds, rng):
    idx = rng.integers(0, len(ds), 300)
    imgs = ds.images(idx)
    assert imgs.shape == (300, 64, 64, 1) and imgs.dtype == np.uint8
    assert set(np.unique(imgs)) <= {0, 255}
    x = ds.batch(idx)
    assert x.shape == (300, 1, 64, 64) and x.dtype == torch.float32
    assert torch.equal(x, torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255)
    assert torch.equal(ds.batch(idx, device="cpu"), x)
    # the packed form is np.packbits of the image, 512 bytes each
    assert np.array_equal(ds.packed(idx), np.packbits(imgs.reshape(300, -1) > 0, axis=1))
    obs = ds.observations(ds.factor_space.classes_of(idx))
    assert torch.equal(obs, x)


def test_square_centre_is_16_plus_31_pos(ds):
    # An axis-aligned square is symmetric: its centroid is the object centre, 16 + 31 * pos pixels.
    for p in (0, 5, 17, 31):
        cx, cy = centroid(image(ds, SQUARE, 5, 0, p, 31 - p))
        assert cx == pytest.approx(16 + p) and cy == pytest.approx(16 + 31 - p)
    # at scale 1 the square's side is 18 px
    assert image(ds, SQUARE, 5, 0, 10, 10).sum() == 18 * 18


@pytest.mark.parametrize("shape", [SQUARE, ELLIPSE, HEART])
def test_centroid_moves_right_with_posx_and_down_with_posy(ds, shape):
    for orient in (0, 7, 23):
        base = [centroid(image(ds, shape, 3, orient, p, 12)) for p in range(32)]
        cols, rows = np.array(base).T
        assert np.allclose(np.diff(cols), 1.0) and np.allclose(rows, rows[0])  # 1 px per class
        base = [centroid(image(ds, shape, 3, orient, 20, p)) for p in range(32)]
        cols, rows = np.array(base).T
        assert np.allclose(np.diff(rows), 1.0) and np.allclose(cols, cols[0])


@pytest.mark.parametrize("shape", [SQUARE, ELLIPSE, HEART])
def test_area_grows_with_scale_like_its_square(ds, shape):
    for orient in (0, 11, 30):
        areas = np.array([image(ds, shape, s, orient, 16, 16).sum() for s in range(6)])
        assert np.all(np.diff(areas) > 0)
        # scale 0.5 -> 1 doubles the size: about 4x the area
        assert 3.0 < areas[-1] / areas[0] < 5.0  # pixelation blurs small shapes


def test_ellipse_major_axis_follows_orientation_counter_clockwise(ds):
    angles = np.degrees(ds.factor_space.factors[2].values)
    for k in range(40):
        mask = image(ds, ELLIPSE, 5, k, 15, 15)
        r, c = np.nonzero(mask)
        x, y = c + 0.5, -(r + 0.5)  # y up
        cov = np.cov(np.stack([x, y]))
        axis = 0.5 * np.degrees(np.arctan2(2 * cov[0, 1], cov[0, 0] - cov[1, 1]))
        assert abs((axis - angles[k] + 90) % 180 - 90) < 2.0, k


def test_heart_points_where_orientation_says(ds):
    # The heart's mass sits above its centre at orientation 0 (the lobes); it turns with theta.
    angles = np.degrees(ds.factor_space.factors[2].values)
    for k in range(40):
        cx, cy = centroid(image(ds, HEART, 5, k, 15, 15))
        direction = np.degrees(np.arctan2(-(cy - 31), cx - 31))
        assert abs((direction - (angles[k] + 90) + 180) % 360 - 180) < 6.0, k


def test_orientation_zero_and_two_pi_coincide():
    sprites = render_sprites()
    assert np.array_equal(sprites[:, :, 0], sprites[:, :, 39])


def _sprite_duplicates_are_documented(sprites):
    """Every pair of identical sprites: same shape and scale, and orientations 0/39, or a square
    or ellipse whose orientations are symmetric copies to within one grid step (DSprites docs)."""
    flat = sprites.reshape(720, -1)
    _, inverse = np.unique(flat, axis=0, return_inverse=True)
    shape, scale, orient = np.unravel_index(np.arange(720), (3, 6, 40))
    angle = orient * STEP_DEG
    bad = []
    for group in np.unique(inverse):
        members = np.flatnonzero(inverse == group)
        for i in members:
            for j in members[members > i]:
                if (shape[i], scale[i]) != (shape[j], scale[j]):
                    bad.append((i, j))
                    continue
                if {orient[i], orient[j]} == {0, 39}:
                    continue
                period = {SQUARE: 90.0, ELLIPSE: 180.0}.get(int(shape[i]))
                diff = None if period is None else abs((angle[i] - angle[j] + period / 2) % period - period / 2)
                if diff is None or diff > STEP_DEG + 1e-9:
                    bad.append((i, j))
    return bad


def test_all_720_sprites_distinct_except_documented_symmetries():
    sprites = render_sprites()
    assert _sprite_duplicates_are_documented(sprites) == []
    flat = sprites.reshape(3, 6, 40, -1)
    # the heart has no rotation symmetry: its 39 orientations are all distinct at every scale
    for s in range(6):
        assert len(np.unique(flat[HEART, s, :39], axis=0)) == 39
    # the counts the DSprites docstring gives
    distinct = [[len(np.unique(flat[k, s], axis=0)) for s in range(6)] for k in (SQUARE, ELLIPSE)]
    assert distinct == [[22, 24, 33, 36, 36, 36], [33, 39, 39, 39, 39, 39]]
    assert len(np.unique(sprites.reshape(720, -1), axis=0)) == 649


def test_duplicate_check_catches_an_ignored_factor():
    sprites = render_sprites()
    broken = sprites.copy()
    broken[:, 3] = broken[:, 2]  # a renderer that ignored one scale step
    assert _sprite_duplicates_are_documented(broken) != []


def test_distinct_factor_vectors_give_distinct_images_on_a_random_subset(ds, rng):
    idx = np.unique(rng.integers(0, len(ds), 20000))
    packed = ds.packed(idx).view("V512").reshape(-1)  # one opaque 512-byte item per image
    sprite_class = np.unique(ds.sprites.reshape(720, -1), axis=0, return_inverse=True)[1].reshape(-1)
    classes = ds.factor_space.classes_of(idx)
    sprite = np.ravel_multi_index(classes[:, :3].T, (3, 6, 40))
    key = np.stack([sprite_class[sprite], classes[:, 3], classes[:, 4]], axis=1)
    img_id = np.unique(packed, return_inverse=True)[1].reshape(-1)
    key_id = np.unique(key, axis=0, return_inverse=True)[1].reshape(-1)
    # images equal <=> same position and identical sprites (documented symmetries only)
    pairs = np.unique(np.stack([img_id, key_id], 1), axis=0)
    assert len(pairs) == img_id.max() + 1 == key_id.max() + 1


def test_rendering_is_deterministic_bit_for_bit(ds, rng):
    a = render_sprites()
    assert np.array_equal(a, ds.sprites)
    # Pinned: a renderer change must bump RENDERER_VERSION (the cache key) and this digest.
    digest = hashlib.blake2b(np.packbits(a).tobytes(), digest_size=8).hexdigest()
    assert (RENDERER_VERSION, digest) == ("dsprites-1", PINNED_DIGEST)


PINNED_DIGEST = "e0a79b053229d984"


def test_full_render_chunks_match_lazy_images(ds, rng):
    chunks = ds._packed_chunks()
    first, second = next(chunks), next(chunks)  # shape 0 scales 0 and 1: 2 * 40 * 1024 images
    idx = rng.integers(0, 2 * 40 * 1024, 2000)
    assert np.array_equal(np.concatenate([first, second])[idx], ds.packed(idx))


def test_bad_indices_are_rejected(ds):
    with pytest.raises(DataError, match="out of range"):
        ds.images(np.array([len(ds)]))
    with pytest.raises(DataError, match="integers"):
        ds.batch(np.array([0.5]))
    with pytest.raises(DataError, match="out of range"):
        ds.observations(np.array([[0, 6, 0, 0, 0]]))


@pytest.mark.slow
def test_full_cache_equals_lazy_rendering(tmp_path, rng):
    cached = DSprites(cached=True, cache_dir=tmp_path, progress=False)
    lazy = DSprites()
    assert (tmp_path / "dsprites-packed.bin").stat().st_size == 737280 * 512
    idx = rng.integers(0, len(lazy), 50000)
    assert np.array_equal(cached.packed(idx), lazy.packed(idx))
    assert torch.equal(cached.batch(idx[:256]), lazy.batch(idx[:256]))
