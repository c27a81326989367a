"""Loaders of the original files, on tiny files of the same formats written here."""
import copy
import io
import struct
import zipfile

import h5py
import numpy as np
import pytest
import torch

from untwine.data.arrays import ArrayGroundTruthData, pack_binary_images
from untwine.data.factors import FactorSpace
from untwine.data import files
from untwine.data.files import H5GroundTruthData, load_dsprites_npz, load_mpi3d_npz, load_shapes3d_h5
from untwine.errors import DataError

HW = (8, 8)
DS_SPACE = FactorSpace.from_values({
    "shape": [1.0, 2.0, 3.0], "scale": np.linspace(0.5, 1, 2), "orientation": np.linspace(0, 2 * np.pi, 3),
    "posX": np.linspace(0, 1, 4), "posY": np.linspace(0, 1, 4)})                      # 288
S3_SPACE = FactorSpace.from_values({
    "floor_hue": np.linspace(0, 0.9, 3), "wall_hue": np.linspace(0, 0.9, 2), "object_hue": np.linspace(0, 0.9, 2),
    "scale": np.linspace(0.75, 1.25, 2), "shape": np.arange(2.0), "orientation": np.linspace(-30, 30, 3)})  # 144
MPI_SPACE = FactorSpace.from_values({"color": range(2), "shape": range(2), "size": range(2), "h": range(3),
                                     "v": range(4)})                                # 96


# -- writers of the original formats ------------------------------------------------------------

def dsprites_arrays(space=DS_SPACE, seed=0):
    n = len(space)
    classes = space.classes_of(np.arange(n))
    values = np.concatenate([np.ones((n, 1)), space.values_of(classes)], axis=1)
    latents_classes = np.concatenate([np.zeros((n, 1), dtype=np.int64), classes], axis=1)
    imgs = (np.random.default_rng(seed).random((n, *HW)) < 0.3).astype(np.uint8)
    return {"imgs": imgs, "latents_values": values, "latents_classes": latents_classes}


def write_npz(path, arrays, compressed=True, drop=(), **replace):
    arrays = {**arrays, **replace}
    arrays = {k: v for k, v in arrays.items() if k not in drop}
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return path


def shapes3d_arrays(space=S3_SPACE, seed=0, hue_top=0.9):
    n = len(space)
    labels = space.values_of(space.classes_of(np.arange(n)))
    labels[:, :3] *= hue_top / 0.9   # the other hue convention: 0..1
    images = np.random.default_rng(seed).integers(0, 256, (n, *HW, 3), dtype=np.uint8)
    return images, labels


def write_h5(path, images, labels, images_key="images", labels_key="labels", chunked=False):
    with h5py.File(path, "w") as f:
        if images is not None:
            extra = dict(chunks=(16, *images.shape[1:]), compression="gzip") if chunked else {}
            f.create_dataset(images_key, data=images, **extra)
        if labels is not None:
            f.create_dataset(labels_key, data=labels)
    return path


# -- ArrayGroundTruthData ---------------------------------------------------------------------------

def test_array_data_packed_and_plain_agree(rng):
    bits = (rng.random((len(DS_SPACE), *HW)) < 0.5).astype(np.uint8)
    plain = ArrayGroundTruthData("p", DS_SPACE, bits * 255)
    packed = ArrayGroundTruthData("q", DS_SPACE, pack_binary_images(bits), image_shape=(1, *HW), packed=True)
    idx = np.array([5, 0, 287, 5])
    np.testing.assert_array_equal(packed.images(idx), plain.images(idx))
    np.testing.assert_array_equal(packed.images(idx)[..., 0], bits[idx] * 255)
    assert torch.equal(packed.batch(idx), plain.batch(idx))
    assert torch.equal(packed.batch(idx)[:, 0], torch.from_numpy(bits[idx]).float())
    assert packed.nbytes() * 8 == plain.nbytes()
    rgb_bits = (rng.random((len(MPI_SPACE), 3, 5, 3)) < 0.5).astype(np.uint8)   # 45 bits: padded rows
    rgb = ArrayGroundTruthData("r", MPI_SPACE, pack_binary_images(rgb_bits), image_shape=(3, 3, 5), packed=True)
    assert torch.equal(rgb.batch(idx[:2]), ArrayGroundTruthData("s", MPI_SPACE, rgb_bits * 255).batch(idx[:2]))


def test_array_data_rgb_batch_is_contiguous_nchw(rng):
    imgs = rng.integers(0, 256, (len(MPI_SPACE), 4, 5, 3), dtype=np.uint8)
    data = ArrayGroundTruthData("rgb", MPI_SPACE, imgs)
    assert data.image_shape == (3, 4, 5)
    x = data.batch(np.array([3, 1]))
    assert x.shape == (2, 3, 4, 5) and x.dtype == torch.float32 and x.is_contiguous()
    assert x[1, 2, 3, 4].item() == pytest.approx(imgs[1, 3, 4, 2] / 255.0)
    assert torch.equal(data.observations(MPI_SPACE.classes_of(np.array([3, 1]))), x)


@pytest.mark.parametrize("kwargs, match", [
    (dict(images=np.zeros((10, 8, 8, 1), np.uint8)), "10 images for a factor space of 288"),
    (dict(images=np.zeros((288, 8, 8, 1), np.float32)), "uint8"),
    (dict(images=np.zeros((288, 8), np.uint8), packed=True, image_shape=(1, 8, 8)), r"\(288, 8\)"),
    (dict(images=np.zeros((288, 8, 8, 1), np.uint8), image_shape=(3, 8, 8)), "disagrees"),
])
def test_array_data_rejects_bad_arrays(kwargs, match):
    if kwargs.get("packed"):
        kwargs["images"] = np.zeros((288, 7), np.uint8)
    with pytest.raises(DataError, match=match):
        ArrayGroundTruthData("bad", DS_SPACE, **kwargs)


# -- dSprites .npz ----------------------------------------------------------------------------------

@pytest.mark.parametrize("compressed", [True, False])
def test_dsprites_round_trip(tmp_path, compressed):
    arrays = dsprites_arrays()
    # the original holds a pickled metadata entry: it must be skipped, never unpickled
    path = write_npz(tmp_path / "d.npz", arrays, compressed, metadata=np.array({"a": 1}, dtype=object))
    data = load_dsprites_npz(path, factor_space=DS_SPACE, image_hw=HW, progress=compressed)
    assert data.packed and data.image_shape == (1, *HW) and len(data) == 288
    assert data.factor_space.names == DS_SPACE.names
    idx = np.arange(288)
    np.testing.assert_array_equal(data.images(idx)[..., 0], arrays["imgs"] * 255)
    # image of factor vector (2, 1, 0, 3, 1) is row 2*96 + 1*48 + 0*16 + 3*4 + 1 = 253
    x = data.observations(np.array([[2, 1, 0, 3, 1]]))
    assert torch.equal(x[0, 0], torch.from_numpy(arrays["imgs"][253]).float())


def test_dsprites_errors_name_file_expectation_and_finding(tmp_path):
    arrays = dsprites_arrays()
    load = lambda p: load_dsprites_npz(p, factor_space=DS_SPACE, image_hw=HW)  # noqa: E731
    with pytest.raises(DataError, match="not found.*missing.npz"):
        load(tmp_path / "missing.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(DataError, match=r"text.npz is not a valid .npz"):
        load(tmp_path / "text.npz")
    with pytest.raises(DataError, match=r"no key 'latents_classes'; found keys \['imgs', 'latents_values'\]"):
        load(write_npz(tmp_path / "k.npz", arrays, drop=("latents_classes",)))
    with pytest.raises(DataError, match=r"'imgs' should be uint8 of shape \(288, 8, 8\); found uint8 of shape "
                                        r"\(288, 8, 9\)"):
        load(write_npz(tmp_path / "s.npz", arrays, imgs=np.zeros((288, 8, 9), np.uint8)))
    with pytest.raises(DataError, match="'latents_classes' should be int64.*found int32"):
        load(write_npz(tmp_path / "t.npz", arrays, latents_classes=arrays["latents_classes"].astype(np.int32)))
    with pytest.raises(DataError, match="binary"):
        load(write_npz(tmp_path / "b.npz", arrays, imgs=arrays["imgs"] * 255))
    with pytest.raises(DataError, match="object"):
        load(write_npz(tmp_path / "o.npz", arrays, imgs=np.empty((288, 8, 8), dtype=object)))


def test_dsprites_truncated_and_corrupt_files(tmp_path):
    arrays = dsprites_arrays()
    whole = write_npz(tmp_path / "whole.npz", arrays, compressed=False).read_bytes()
    (tmp_path / "cut.npz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match=r"cut.npz .*truncated"):
        load_dsprites_npz(tmp_path / "cut.npz", factor_space=DS_SPACE, image_hw=HW)
    # flip bytes inside the images: the zip CRC check must catch it
    start = whole.find(b"imgs.npy") + 200
    bad = bytearray(whole)
    bad[start:start + 16] = bytes(255 - b for b in bad[start:start + 16])
    (tmp_path / "flip.npz").write_bytes(bytes(bad))
    with pytest.raises(DataError, match=r"flip.npz: key 'imgs' is damaged"):
        load_dsprites_npz(tmp_path / "flip.npz", factor_space=DS_SPACE, image_hw=HW)


def npy_bytes(array):
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array)
    return buf.getvalue()


def write_member(path, name, raw):
    """An .npz whose member `name` holds exactly `raw` (stored uncompressed, as numpy.savez does)."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(name, raw)
    return path


def _damage(raw, old, new):
    assert len(old) == len(new) and raw.count(old) == 1   # same length: the header length stays right
    return raw.replace(old, new)


@pytest.mark.parametrize("damage, problem", [
    # numpy's header parser tokenizes the dict literal: unbalanced brackets raised tokenize.TokenError
    (lambda r: _damage(r, b"3), }", b"3 , }"), "TokenError"),
    (lambda r: _damage(r, b"{'descr'", b"(((((((("), "TokenError"),
    (lambda r: r[:6] + b"\x07\x00" + r[8:], "unknown .npy format version 7.0"),
    # the shape says 96 images, the member holds fewer bytes: mapped, the zip directory read as pixels
    (lambda r: r[:-64], r"announces uint8 of shape \(96, 8, 8, 3\), 18432 bytes of data, but the archive member "
                        r"holds 18368"),
    (lambda r: _damage(r, b"(96, 8, 8, 3)", b"(-6, 8, 8, 3)"), r"negative dimension in shape \(-6, 8, 8, 3\)"),
])
def test_damaged_npy_header_is_a_clear_data_error(tmp_path, damage, problem):
    raw = damage(npy_bytes(np.zeros((96, *HW, 3), np.uint8)))
    path = write_member(tmp_path / "dmg.npz", "images.npy", raw)
    with pytest.raises(DataError, match=rf"MPI3D-toy file .*dmg.npz: the .npy header of key 'images' is damaged "
                                        rf"\(.*{problem}.*\); the file is corrupt or not the original, re-download it"):
        load_mpi3d_npz(path, factor_space=MPI_SPACE, image_hw=HW)


def test_huge_npy_shape_is_a_damaged_header_not_an_overflow(tmp_path):
    # a header whose shape has no data behind it, 24 * 2**80 bytes (int64 products wrap around): read(),
    # memmap() and stream_rows() must all refuse it by name instead of overflowing or allocating
    text = b"{'descr': '|u1', 'fortran_order': False, 'shape': (1099511627776, 1099511627776, 8, 3), }"
    text += b" " * (63 - (10 + len(text)) % 64) + b"\n"
    raw = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + bytes(96)
    with files._npz(write_member(tmp_path / "huge.npz", "imgs.npy", raw), "dSprites") as arc:
        for call in (arc.read, arc.memmap, lambda k: next(arc.stream_rows(k, 4))):
            with pytest.raises(DataError, match=r"huge.npz: the .npy header of key 'imgs' is damaged \(it announces "
                                                r"uint8 of shape \(1099511627776, 1099511627776, 8, 3\), "
                                                rf"{24 * 2 ** 80} bytes of data, but the archive member holds 96\)"):
                call("imgs")


def test_dsprites_wrong_order_and_inconsistent_labels(tmp_path):
    arrays = dsprites_arrays()
    perm = np.random.default_rng(1).permutation(288)
    shuffled = {k: v[perm] for k, v in arrays.items()}
    with pytest.raises(DataError, match="not stored in the row-major order"):
        load_dsprites_npz(write_npz(tmp_path / "perm.npz", shuffled), factor_space=DS_SPACE, image_hw=HW)
    lc = arrays["latents_classes"].copy()
    lc[7, 3] = (lc[7, 3] + 1) % 4
    with pytest.raises(DataError, match="row 7"):
        load_dsprites_npz(write_npz(tmp_path / "inc.npz", arrays, latents_classes=lc), factor_space=DS_SPACE,
                          image_hw=HW)
    lv = arrays["latents_values"].copy()
    lv[0, 0] = 2.0
    with pytest.raises(DataError, match="color"):
        load_dsprites_npz(write_npz(tmp_path / "col.npz", arrays, latents_values=lv), factor_space=DS_SPACE,
                          image_hw=HW)


def test_dsprites_default_space_expects_the_real_sizes(tmp_path):
    path = write_npz(tmp_path / "small.npz", dsprites_arrays())
    with pytest.raises(DataError, match=r"\(737280, 64, 64\)"):
        load_dsprites_npz(path)


# -- Shapes3D .h5 -----------------------------------------------------------------------------------

@pytest.mark.parametrize("hue_top", [0.9, 1.0])   # both hue conventions map by rank
@pytest.mark.parametrize("chunked", [False, True])  # memory-mapped vs read through h5py
def test_shapes3d_lazy_and_in_memory_round_trip(tmp_path, hue_top, chunked):
    images, labels = shapes3d_arrays(hue_top=hue_top)
    path = write_h5(tmp_path / "s.h5", images, labels, chunked=chunked)
    lazy = load_shapes3d_h5(path, factor_space=S3_SPACE, image_hw=HW)
    full = load_shapes3d_h5(path, factor_space=S3_SPACE, image_hw=HW, in_memory=True)
    assert isinstance(full, ArrayGroundTruthData) and not isinstance(full.array, np.memmap)
    if chunked:
        assert isinstance(lazy, H5GroundTruthData)
    else:
        assert isinstance(lazy, ArrayGroundTruthData) and isinstance(lazy.array, np.memmap)
    idx = np.array([143, 0, 5, 5, 6, 7, 8, 70, 0])          # unsorted, repeated, a contiguous run
    np.testing.assert_array_equal(lazy.images(idx), images[idx])
    np.testing.assert_array_equal(full.images(idx), images[idx])
    assert torch.equal(lazy.batch(idx), full.batch(idx))
    if chunked:
        lazy.read_block = 2                                  # several read blocks
        np.testing.assert_array_equal(lazy.images(idx), images[idx])
        twin = copy.deepcopy(lazy)                           # handles are dropped and reopened
        np.testing.assert_array_equal(twin.images(idx), images[idx])
        lazy.close()
        twin.close()


def test_shapes3d_errors(tmp_path):
    images, labels = shapes3d_arrays()
    load = lambda p: load_shapes3d_h5(p, factor_space=S3_SPACE, image_hw=HW)  # noqa: E731
    with pytest.raises(DataError, match="not found"):
        load(tmp_path / "none.h5")
    (tmp_path / "junk.h5").write_bytes(b"\x00" * 1000)
    with pytest.raises(DataError, match="junk.h5 is not a readable HDF5"):
        load(tmp_path / "junk.h5")
    with pytest.raises(DataError, match=r"no dataset 'labels'; found \['images'\]"):
        load(write_h5(tmp_path / "nolab.h5", images, None))
    with pytest.raises(DataError, match=r"'images' should be uint8 of shape \(144, 8, 8, 3\); found float32"):
        load(write_h5(tmp_path / "f.h5", images.astype(np.float32), labels))
    with pytest.raises(DataError, match=r"'labels' should be float64 of shape \(144, 6\); found float64 of shape "
                                        r"\(144, 5\)"):
        load(write_h5(tmp_path / "l.h5", images, labels[:, :5]))
    lab = labels.copy()
    lab[lab[:, 3] == lab[:, 3].max(), 3] = lab[:, 3].min()
    with pytest.raises(DataError, match=r"column 3 \(scale\) has 1 distinct values; expected 2"):
        load(write_h5(tmp_path / "u.h5", images, lab))
    perm = np.random.default_rng(0).permutation(144)
    with pytest.raises(DataError, match="not stored in the row-major order"):
        load(write_h5(tmp_path / "p.h5", images[perm], labels[perm]))
    whole = write_h5(tmp_path / "w.h5", images, labels).read_bytes()
    (tmp_path / "cut.h5").write_bytes(whole[: len(whole) * 2 // 3])
    with pytest.raises(DataError, match="cut.h5.*(truncated|damaged)"):
        load(tmp_path / "cut.h5")


# -- MPI3D .npz -------------------------------------------------------------------------------------

@pytest.mark.parametrize("compressed, grid_shape", [(False, False), (False, True), (True, True)])
def test_mpi3d_round_trip(tmp_path, compressed, grid_shape):
    n = len(MPI_SPACE)
    images = np.random.default_rng(2).integers(0, 256, (n, *HW, 3), dtype=np.uint8)
    stored = images.reshape(*MPI_SPACE.sizes, *HW, 3) if grid_shape else images
    path = write_npz(tmp_path / "m.npz", {"images": stored}, compressed)
    data = load_mpi3d_npz(path, variant="real", factor_space=MPI_SPACE, image_hw=HW)
    assert data.name == "mpi3d_real" and data.image_shape == (3, *HW)
    assert isinstance(data.array.base if data.array.base is not None else data.array, np.memmap) != compressed
    idx = np.array([95, 3, 3, 40])
    np.testing.assert_array_equal(data.images(idx), images[idx])
    # (color 1, shape 0, size 1, h 2, v 3) -> 48 + 0 + 12 + 2*4 + 3 = 71
    np.testing.assert_array_equal(data.images(MPI_SPACE.index_of(np.array([[1, 0, 1, 2, 3]]))), images[[71]])


def test_mpi3d_errors(tmp_path):
    with pytest.raises(DataError, match="unknown MPI3D variant 'sim'"):
        load_mpi3d_npz(tmp_path / "x.npz", variant="sim")
    path = write_npz(tmp_path / "m.npz", {"images": np.zeros((95, *HW, 3), np.uint8)}, compressed=False)
    with pytest.raises(DataError, match=r"'images' should be uint8 of shape \(96, 8, 8, 3\).*found uint8 of shape "
                                        r"\(95, 8, 8, 3\)"):
        load_mpi3d_npz(path, factor_space=MPI_SPACE, image_hw=HW)
    path = write_npz(tmp_path / "k.npz", {"imgs": np.zeros((96, *HW, 3), np.uint8)})
    with pytest.raises(DataError, match=r"no key 'images'; found keys \['imgs'\]"):
        load_mpi3d_npz(path, factor_space=MPI_SPACE, image_hw=HW)


# two small grids in the roles of the complete 6 x 6 grid and disentanglement_lib's 4 x 4 one
SMALL_GRIDS = {
    "complete": FactorSpace.from_values({"color": range(3), "shape": range(3), "size": range(2), "v": range(2)}),
    "without_heldout": FactorSpace.from_values({"color": range(2), "shape": range(2), "size": range(2),
                                                "v": range(2)}),
}


def test_mpi3d_spaces_are_the_complete_grid_and_disentanglement_libs():
    from untwine.data.spaces import MPI3D, MPI3D_WITHOUT_HELDOUT

    # disentanglement_lib's mpi3d.py: factor_sizes [4, 4, 2, 3, 3, 40, 40] for mpi3d_toy and mpi3d_realistic
    assert MPI3D_WITHOUT_HELDOUT.sizes == (4, 4, 2, 3, 3, 40, 40) and len(MPI3D_WITHOUT_HELDOUT) == 460_800
    assert MPI3D.sizes == (6, 6, 2, 3, 3, 40, 40) and len(MPI3D) == 1_036_800
    assert MPI3D.names == MPI3D_WITHOUT_HELDOUT.names
    assert files.MPI3D_GRIDS == {"complete": MPI3D, "without_heldout": MPI3D_WITHOUT_HELDOUT}


@pytest.mark.parametrize("grid, compressed, grid_shape", [
    ("without_heldout", False, False), ("without_heldout", True, True), ("complete", False, True)])
def test_mpi3d_grid_follows_the_files_number_of_images(tmp_path, monkeypatch, grid, compressed, grid_shape):
    monkeypatch.setattr(files, "MPI3D_GRIDS", SMALL_GRIDS)
    space = SMALL_GRIDS[grid]
    images = np.random.default_rng(4).integers(0, 256, (len(space), *HW, 3), dtype=np.uint8)
    stored = images.reshape(*space.sizes, *HW, 3) if grid_shape else images
    path = write_npz(tmp_path / "m.npz", {"images": stored}, compressed)
    data = load_mpi3d_npz(path, variant="toy", image_hw=HW)
    assert data.grid == grid and data.factor_space is space
    assert data.name == ("mpi3d_toy" if grid == "complete" else "mpi3d_toy_without_heldout")
    assert f"{grid} grid: {len(space)} colour" in data.description
    # (color 1, shape 0, size 1, v 1): row-major in the file's own grid
    row = int(space.index_of(np.array([[1, 0, 1, 1]]))[0])
    assert row == (11 if grid == "without_heldout" else 15)
    np.testing.assert_array_equal(data.images(np.array([row, 0])), images[[row, 0]])
    assert load_mpi3d_npz(path, grid=grid, image_hw=HW).grid == grid      # asking for the grid it holds


def test_mpi3d_grid_errors_name_both_grids(tmp_path, monkeypatch):
    # the real grids: a file of neither size says what both would be and where each comes from
    path = write_npz(tmp_path / "three.npz", {"images": np.zeros((3, 64, 64, 3), np.uint8)}, compressed=False)
    with pytest.raises(DataError, match=r"three.npz: key 'images' should be uint8 of shape \(1036800, 64, 64, 3\) or "
                                        r"\(6, 6, 2, 3, 3, 40, 40, 64, 64, 3\) \(complete grid, 1,036,800 images, "
                                        r"6 colours x 6 shapes: .*\); or \(460800, 64, 64, 3\) or "
                                        r"\(4, 4, 2, 3, 3, 40, 40, 64, 64, 3\) \(without_heldout grid, 460,800 images, "
                                        r"4 colours x 4 shapes: disentanglement_lib's mpi3d_toy.*\); "
                                        r"found uint8 of shape \(3, 64, 64, 3\)"):
        load_mpi3d_npz(path)
    monkeypatch.setattr(files, "MPI3D_GRIDS", SMALL_GRIDS)
    path = write_npz(tmp_path / "m.npz", {"images": np.zeros((16, *HW, 3), np.uint8)}, compressed=False)
    with pytest.raises(DataError, match=r"should be uint8 of shape \(36, 8, 8, 3\) or \(3, 3, 2, 2, 8, 8, 3\) "
                                        r"\(complete grid, 36 images, .*found uint8 of shape \(16, 8, 8, 3\); the file "
                                        r"holds the without_heldout grid: leave grid= out to accept it"):
        load_mpi3d_npz(path, grid="complete", image_hw=HW)
    with pytest.raises(DataError, match=r"unknown MPI3D grid 'dlib'; use one of \('complete', 'without_heldout'\)"):
        load_mpi3d_npz(path, grid="dlib", image_hw=HW)


def test_registry_reaches_the_loaders(tmp_path):
    registry = pytest.importorskip("untwine.data.registry")
    n = len(MPI_SPACE)
    images = np.random.default_rng(3).integers(0, 256, (n, *HW, 3), dtype=np.uint8)
    path = write_npz(tmp_path / "m.npz", {"images": images}, compressed=False)
    data = registry.get_dataset("mpi3d_toy", path=path, factor_space=MPI_SPACE, image_hw=HW)
    assert data.name == "mpi3d_toy"
    np.testing.assert_array_equal(data.images(np.array([7])), images[[7]])
    data = registry.get_dataset("mpi3d_realistic", path=path, factor_space=MPI_SPACE, grid="without_heldout",
                                image_hw=HW)
    assert data.name == "mpi3d_realistic_without_heldout" and data.grid == "without_heldout"
    assert "460,800 images" in registry.available_datasets()["mpi3d"]
    arrays = dsprites_arrays()
    data = registry.get_dataset("dsprites", path=write_npz(tmp_path / "d.npz", arrays), factor_space=DS_SPACE,
                                image_hw=HW)
    np.testing.assert_array_equal(data.images(np.array([9]))[0, ..., 0], arrays["imgs"][9] * 255)
