"""Procedural Shapes3D: hues colour the right region, scale/shape/orientation shape the object."""
import numpy as np
import pytest
import torch
from matplotlib.colors import rgb_to_hsv

from untwine.data.shapes3d import FLOOR, OBJECT, WALL, Shapes3D
from untwine.errors import DataError

FLOOR_HUE, WALL_HUE, OBJECT_HUE, SCALE, SHAPE, ORIENT = range(6)
CUBE, CYLINDER, SPHERE, CAPSULE = range(4)


@pytest.fixture(scope="module")
def ds():
    return Shapes3D()


def render(ds, classes):
    return ds.images(ds.factor_space.index_of(np.atleast_2d(classes)))


def object_masks(ds):
    """(scale, shape, orientation, H, W) silhouettes, from rendered images' regions."""
    space = ds.factor_space
    grid = np.stack(np.meshgrid(range(8), range(4), range(15), indexing="ij"), -1).reshape(-1, 3)
    classes = np.concatenate([np.tile([2, 5, 8], (len(grid), 1)), grid], axis=1)
    regions = ds.regions(space.index_of(classes))
    return (regions == OBJECT).reshape(8, 4, 15, 64, 64)


def test_images_and_batch_agree(ds, rng):
    idx = rng.integers(0, len(ds), 200)
    imgs = ds.images(idx)
    assert imgs.shape == (200, 64, 64, 3) and imgs.dtype == np.uint8
    x = ds.batch(idx)
    assert x.shape == (200, 3, 64, 64) and x.dtype == torch.float32
    assert torch.allclose(x, torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255, atol=1e-7)
    assert torch.equal(ds.batch(idx, device="cpu"), x)


@pytest.mark.parametrize("factor,region", [(FLOOR_HUE, FLOOR), (WALL_HUE, WALL), (OBJECT_HUE, OBJECT)])
def test_hue_changes_its_region_and_only_it(ds, rng, factor, region):
    space = ds.factor_space
    for base in space.sample(6, rng):
        a, b = base.copy(), base.copy()
        a[factor], b[factor] = rng.choice(10, size=2, replace=False)
        ia, ib = render(ds, a)[0], render(ds, b)[0]
        regions = ds.regions(space.index_of(a[None]))[0]
        changed = np.any(ia != ib, axis=-1)
        assert np.array_equal(changed, regions == region)
        assert np.array_equal(regions, ds.regions(space.index_of(b[None]))[0])


@pytest.mark.parametrize("factor,region", [(FLOOR_HUE, FLOOR), (WALL_HUE, WALL), (OBJECT_HUE, OBJECT)])
def test_region_colour_has_the_factor_hue(ds, factor, region):
    hues = ds.factor_space.factors[factor].values
    for h in range(10):
        classes = np.array([3, 6, 9, 4, CUBE, 7])
        classes[factor] = h
        img = render(ds, classes)[0].astype(float) / 255
        pix = img[ds.regions(ds.factor_space.index_of(classes[None]))[0] == region]
        hue = rgb_to_hsv(pix)[:, 0]
        # every pixel of the region has the hue (shading only darkens)
        assert np.all(np.abs((hue - hues[h] + 0.5) % 1.0 - 0.5) < 0.02)


def test_floor_below_wall_and_object_in_the_middle(ds):
    regions = ds.regions(np.arange(0, len(ds), 4801))
    assert np.all(regions[:, -1, :] == FLOOR) and np.all(regions[:, 0, :] == WALL)
    assert np.all(regions[:, 40, 32] == OBJECT)  # the object stands at the centre


def test_scale_grows_the_object(ds):
    area = object_masks(ds).sum(axis=(-2, -1))  # (scale, shape, orientation)
    assert np.all(np.diff(area, axis=0) > 0)
    # scale 0.75 -> 1.25 multiplies lengths by 5/3: areas by about 2.8
    assert np.all((area[-1] / area[0] > 2.3) & (area[-1] / area[0] < 3.3))


def test_shape_changes_the_silhouette(ds):
    masks = object_masks(ds)
    for a in range(4):
        for b in range(a + 1, 4):
            assert np.all(np.any(masks[:, a] != masks[:, b], axis=(-2, -1)))
    # a sphere is as wide as tall; cylinder and cube are not round on top (they have corners)
    area = masks.sum(axis=(-2, -1))
    assert np.all(area[:, SPHERE] < area[:, CYLINDER])


def test_orientation_turns_the_cube_and_the_room(ds):
    masks = object_masks(ds)
    for s in range(8):
        cube = masks[s, CUBE].reshape(15, -1)
        assert n_distinct(cube) == 15
    # the room turns with the scene: the wall corner moves at every step
    bg = ds.background_region.reshape(15, -1)
    assert n_distinct(bg) == 15
    # the corner between the two walls (they differ in shading) moves right as orientation grows,
    # and is at the middle of the picture at orientation 0
    imgs = render(ds, np.array([[1, 2, 3, 4, CUBE, o] for o in range(15)])).astype(int)
    top = imgs[:, 0]
    corner = [np.flatnonzero(np.any(t[1:] != t[:-1], axis=-1)) for t in top]
    assert all(len(c) == 1 for c in corner)  # one edge: left wall | right wall
    corner = np.array([c[0] for c in corner])
    assert np.all(np.diff(corner) > 0) and abs(corner[7] - 31.5) <= 1


def test_documented_symmetry_round_shapes_keep_their_silhouette(ds):
    masks = object_masks(ds)
    for shape in (CYLINDER, SPHERE, CAPSULE):
        assert np.all(masks[:, shape] == masks[:, shape, :1])
    # ... but their images still change with orientation (room and shading turn)
    imgs = render(ds, np.array([[1, 2, 3, 4, SPHERE, o] for o in range(15)]))
    assert n_distinct(imgs) == 15


def test_distinct_factor_vectors_give_distinct_images(ds, rng):
    idx = np.unique(rng.integers(0, len(ds), 12000))
    assert n_distinct(ds.images(idx)) == len(idx)
    # every object layer (geometry x object hue) and every background (orientation x hues) differs
    assert n_distinct(ds._obj.numpy()) == 4800
    assert n_distinct(ds._bg.numpy()) == 1500


def n_distinct(arrays):
    """Number of distinct arrays along the first axis (compared as opaque byte strings)."""
    flat = np.ascontiguousarray(arrays).reshape(len(arrays), -1)
    return len(np.unique(flat.view(f"V{flat.shape[1]}").reshape(-1)))


def test_rendering_is_deterministic(ds, rng):
    other = Shapes3D()
    idx = rng.integers(0, len(ds), 300)
    assert np.array_equal(other.images(idx), ds.images(idx))


def test_cache_chunks_match_on_demand_images(ds):
    first = next(ds._image_chunks(rows=1000))
    assert np.array_equal(first, ds.images(np.arange(1000)))


def test_bad_indices_are_rejected(ds):
    with pytest.raises(DataError, match="out of range"):
        ds.batch(np.array([-1]))
    with pytest.raises(DataError, match="out of range"):
        ds.observations(np.array([[0, 0, 0, 8, 0, 0]]))


def test_cached_branch_reads_the_memory_mapped_images(ds, tmp_path, rng):
    # A sparse file stands in for the 5.9 GB cache: only the sampled images are written.
    path = tmp_path / "images.bin"
    with open(path, "wb") as fh:
        fh.truncate(len(ds) * 64 * 64 * 3)
    mm = np.memmap(path, dtype=np.uint8, mode="r+", shape=(len(ds), 64, 64, 3))
    idx = np.unique(rng.integers(0, len(ds), 300))
    mm[idx] = ds.images(idx)
    cached = Shapes3D.__new__(Shapes3D)
    cached.__dict__.update(ds.__dict__)
    cached._images = mm
    assert cached.cached and not ds.cached
    assert np.array_equal(cached.images(idx), ds.images(idx))
    assert torch.equal(cached.batch(idx), ds.batch(idx))
    unwritten = np.setdiff1d(np.arange(10), idx)[:1]
    assert not np.array_equal(cached.images(unwritten), ds.images(unwritten))  # it really reads the file
