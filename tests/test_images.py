"""Your own images (issue 27): folders and arrays as datasets, their cache and split, bad input, and
a folder of generated PNGs trained, evaluated and reported through the CLI."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from untwine.data import get_dataset
from untwine.data.images import IMAGE_SIZE, MIN_IMAGES, crop_resize, load_images
from untwine.errors import DataError


def _index_image(i: int, size=(80, 72), mode="RGB") -> Image.Image:
    """An image whose centre pixels spell its index (i % 256, i // 256) in flat blocks, so that a
    crop/resize keeps them exactly."""
    w, h = size
    arr = np.full((h, w, 3), 40, np.uint8)
    arr[:, :, 0] = i % 256
    arr[:, :, 1] = i // 256
    arr[:, :, 2] = 200
    im = Image.fromarray(arr, "RGB")
    return im if mode == "RGB" else im.convert(mode)


def write_folder(root: Path, n: int, size=(80, 72), subfolders=(), mode="RGB") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        d = root / subfolders[i % len(subfolders)] if subfolders else root
        d.mkdir(exist_ok=True)
        _index_image(i, size, mode).save(d / f"img_{i:04d}.png")
    return root


def _indices_of(x) -> np.ndarray:
    """The index each image of a float batch (B, 3, 64, 64) spells (see _index_image)."""
    px = (x[:, :2, 32, 32] * 255).round().long().numpy()
    return px[:, 0] + 256 * px[:, 1]


# -- crop and resize -----------------------------------------------------------------------------------

def test_centre_crop_and_box_resize_of_a_known_image():
    # 256 x 128: the centre square is x 64..191, black on its left half, white on its right, the
    # outside grey; shrinking 128 -> 64 with the BOX filter averages 2x2 blocks: exact values
    arr = np.full((128, 256), 128, np.uint8)
    arr[:, 64:128] = 0
    arr[:, 128:192] = 255
    out = crop_resize(Image.fromarray(arr, "L"), channels=1)
    assert out.shape == (IMAGE_SIZE, IMAGE_SIZE, 1)
    assert (out[:, :32] == 0).all() and (out[:, 32:] == 255).all()  # no grey from outside the square


def test_explicit_crop_takes_the_centre_square_of_that_side():
    # CelebA's 148-px crop of a 178 x 218 face image: the border (value 10) is cut away
    arr = np.full((218, 178, 3), 10, np.uint8)
    arr[35:183, 15:163] = (200, 100, 50)
    out = crop_resize(Image.fromarray(arr, "RGB"), channels=3, crop=148)
    assert out.shape == (64, 64, 3)
    assert (out.reshape(-1, 3) == (200, 100, 50)).all()


def test_transparency_is_laid_over_white_and_modes_convert():
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:, 32:, 3] = 255  # left half transparent, right half opaque red
    out = crop_resize(Image.fromarray(rgba, "RGBA"), channels=3)
    assert (out[:, :32] == 255).all() and (out[:, 32:] == (255, 0, 0)).all()
    grey16 = Image.fromarray(np.full((64, 64), 65535, np.uint16))
    assert (crop_resize(grey16, channels=1) == 255).all()


# -- folders: loading, channels, labels, cache ---------------------------------------------------------

def test_folder_loads_recursively_with_labels_from_subfolders(tmp_path):
    root = write_folder(tmp_path / "set", 150, subfolders=("cats", "dogs", "owls"))
    ds = get_dataset("images", path=root)
    assert len(ds) == 150 and ds.image_shape == (3, 64, 64) and ds.factor_space is None
    assert ds.labels.names == ("folder",) and ds.labels.values == (("cats", "dogs", "owls"),)
    # files are read in sorted order of their relative paths: cats/img_0000, cats/img_0003, ...
    expected = sorted(range(150), key=lambda i: (("cats", "dogs", "owls")[i % 3], i))
    assert _indices_of(ds.batch(np.arange(150))).tolist() == expected
    assert ds.labels.classes[:, 0].tolist() == [i % 3 for i in expected]


def test_channels_are_inferred_or_chosen(tmp_path):
    grey = write_folder(tmp_path / "grey", MIN_IMAGES, mode="L")
    assert get_dataset("images", path=grey).image_shape == (1, 64, 64)
    _index_image(0).save(grey / "colour.png")  # one colour image makes the set colour
    assert get_dataset("images", path=grey).image_shape == (3, 64, 64)
    forced = get_dataset("images", path=grey, channels="grey")
    assert forced.image_shape == (1, 64, 64)


def test_mixed_sizes_and_modes_load(tmp_path):
    root = tmp_path / "mixed"
    write_folder(root, MIN_IMAGES)
    Image.new("RGBA", (300, 40), (0, 0, 255, 255)).save(root / "wide.png")
    Image.new("P", (30, 50)).save(root / "palette.png")
    Image.new("L", (20, 20), 7).save(root / "tiny.jpg", quality=95)
    Image.new("RGB", (90, 90), (1, 2, 3)).save(root / "photo.webp")
    ds = get_dataset("images", path=root)
    assert len(ds) == MIN_IMAGES + 4 and ds.image_shape == (3, 64, 64)


def test_the_cache_is_hit_and_a_changed_folder_is_decoded_again(tmp_path, monkeypatch):
    from untwine.data import images

    monkeypatch.setenv("UNTWINE_CACHE", str(tmp_path / "cache"))
    root = write_folder(tmp_path / "set", MIN_IMAGES)
    first = get_dataset("images", path=root)
    entries = sorted(p.name for p in (tmp_path / "cache").glob("images-set-*"))
    assert len(entries) == 4 and any(e.endswith("decoded.json") for e in entries), entries

    def no_decoding(*a, **k):
        raise AssertionError("decoded again on a cache hit")

    with monkeypatch.context() as m:
        m.setattr(images, "decode_file", no_decoding)
        m.setattr(images, "infer_channels", no_decoding)
        again = get_dataset("images", path=root)
    assert np.array_equal(np.asarray(again.array), np.asarray(first.array))
    _index_image(999).save(root / "img_0000.png")  # a file changes: a new key, decoded again
    changed = get_dataset("images", path=root)
    assert _indices_of(changed.batch(np.array([0])))[0] == 999
    assert len(list((tmp_path / "cache").glob("images-set-*"))) == 8


def test_a_damaged_cache_is_rebuilt_not_used(tmp_path, monkeypatch):
    monkeypatch.setenv("UNTWINE_CACHE", str(tmp_path / "cache"))
    root = write_folder(tmp_path / "set", MIN_IMAGES)
    good = np.asarray(get_dataset("images", path=root).array).copy()
    data = next((tmp_path / "cache").glob("images-set-*-c3.bin"))
    raw = bytearray(data.read_bytes())
    raw[100] ^= 0xFF
    data.write_bytes(bytes(raw))
    from untwine.data import cache
    cache._VERIFIED.clear()  # a new process would verify the checksums on its first open
    assert np.array_equal(np.asarray(get_dataset("images", path=root).array), good)


# -- the evaluation split ------------------------------------------------------------------------------

def test_training_batches_never_return_held_out_images(tmp_path):
    from untwine.train.batches import IndexSampler

    ds = get_dataset("images", path=write_folder(tmp_path / "set", 300))
    split = ds.evaluation_split
    assert split.num_eval == 30 and split.num_train == 270
    held = set(_indices_of(ds.batch(split.eval_indices)).tolist())
    sampler = IndexSampler(ds, batch_size=64, seed=3)
    seen = set()
    for _ in range(40):
        batch = _indices_of(next(sampler))
        assert len(set(batch.tolist())) == 64  # distinct within a batch
        seen |= set(batch.tolist())
    assert not seen & held and len(seen) == 270
    with pytest.raises(Exception, match="exceeds the 270 training images"):
        IndexSampler(ds, batch_size=271)


# -- arrays --------------------------------------------------------------------------------------------

def test_npy_grey_array_and_npz_with_labels(tmp_path):
    imgs = np.zeros((MIN_IMAGES, 32, 48), np.uint8)
    imgs[:, :, 8:40] = np.arange(MIN_IMAGES, dtype=np.uint8)[:, None, None]  # the centre square: the index
    np.save(tmp_path / "a.npy", imgs)
    ds = get_dataset("images", path=tmp_path / "a.npy")
    assert ds.image_shape == (1, 64, 64) and ds.labels is None
    assert (ds.images(np.array([7]))[0] == 7).all()  # resized from the centre 32 x 32 only
    colour = np.repeat(imgs[..., None], 3, axis=3)[:, :, 8:40]
    np.savez(tmp_path / "b.npz", images=colour, labels=np.arange(MIN_IMAGES) % 4)
    ds = get_dataset("images", path=tmp_path / "b.npz")
    assert ds.image_shape == (3, 64, 64) and ds.labels.sizes == (4,)
    assert ds.labels.classes_of(np.array([5]))[0, 0] == 1


def test_wrong_arrays_are_clear_errors(tmp_path):
    np.save(tmp_path / "f.npy", np.zeros((MIN_IMAGES, 8, 8), np.float32))
    with pytest.raises(DataError, match="must be uint8"):
        load_images(tmp_path / "f.npy")
    np.save(tmp_path / "s.npy", np.zeros((MIN_IMAGES, 8, 8, 2), np.uint8))
    with pytest.raises(DataError, match="C 1, 3 or 4"):
        load_images(tmp_path / "s.npy")
    np.savez(tmp_path / "two.npz", a=np.zeros((MIN_IMAGES, 8, 8), np.uint8), b=np.zeros(3))
    with pytest.raises(DataError, match="name the images array 'images'"):
        load_images(tmp_path / "two.npz")


# -- bad input -----------------------------------------------------------------------------------------

def test_an_empty_folder_names_the_path_and_the_fix(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no images under .*empty.*the folder is empty.*PNG/JPEG/WebP"):
        get_dataset("images", path=tmp_path / "empty")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("x")
    with pytest.raises(DataError, match=r"holds 1 \.txt files"):
        get_dataset("images", path=tmp_path / "docs")


def test_a_folder_of_ten_images_is_too_few(tmp_path):
    with pytest.raises(DataError, match=rf"has 10 image files, too few: untwine needs at least {MIN_IMAGES}"):
        get_dataset("images", path=write_folder(tmp_path / "ten", 10))


def test_a_path_of_another_kind(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=r"notes.txt' is a file of another kind \(\.txt\)"):
        get_dataset("images", path=tmp_path / "notes.txt")
    _index_image(0).save(tmp_path / "one.png")
    with pytest.raises(DataError, match="a single image .*give the folder that holds your images"):
        get_dataset("images", path=tmp_path / "one.png")
    with pytest.raises(DataError, match="does not exist"):
        get_dataset("images", path=tmp_path / "nowhere")
    with pytest.raises(DataError, match="has no procedural renderer; pass path="):
        get_dataset("images")


def test_unreadable_files_are_skipped_with_a_count(tmp_path, capsys):
    root = write_folder(tmp_path / "set", 120)
    (root / "zz_not_an_image.png").write_bytes(b"this is text")
    whole = (root / "img_0001.png").read_bytes()
    (root / "img_0001.png").write_bytes(whole[: len(whole) // 2])  # truncated
    ds = get_dataset("images", path=root)
    assert len(ds) == 120 - 1 and sorted(ds.skipped) == ["img_0001.png", "zz_not_an_image.png"]
    assert "skipped 2 of 121 files" in capsys.readouterr().err
    assert 1 not in set(_indices_of(ds.batch(np.arange(len(ds)))).tolist())


def test_too_many_unreadable_files_are_an_error_naming_them(tmp_path):
    root = write_folder(tmp_path / "set", 100)
    for i in range(10):
        (root / f"broken_{i}.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(DataError, match=r"10 of 110 files .* cannot be read as images .*broken_0.jpg"):
        get_dataset("images", path=root)


# -- through every part: train, evaluate, report, preview ---------------------------------------------

def test_a_folder_trains_evaluates_and_reports_through_the_cli(tmp_path):
    from untwine.cli import main

    root = write_folder(tmp_path / "pngs", 240, size=(70, 90))
    run = tmp_path / "run"
    small = ["trainer.steps=12", "trainer.log_every=4", "optim.batch_size=16", "model.latent_dim=4",
             "trainer.eval_preset=fast"]
    assert main(["train", "images-betatcvae", f"data.path={root}", *small, "--run-dir", str(run)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["supervised"]["skipped"].endswith("need ground-truth factors; dataset 'pngs' has none")
    assert 0 <= metrics["active_dims"]["num_active_dims"] <= 4
    assert np.isfinite(metrics["unsupervised"]["gaussian_total_correlation"])
    recon = metrics["reconstruction"]
    assert recon["elbo_sampled"] <= recon["iwae"] + 1e-6 and recon["bce"] >= recon["bce_floor"]
    for picture in ("reconstructions.png", "traversals.png", "curves.png"):
        assert (run / "pictures" / picture).stat().st_size > 1000
    (run / "report.html").unlink()
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert "reconstruction" in page and "need ground-truth factors" in page
    ms = tmp_path / "ms"
    assert main(["train", "images-ms-vae", f"stage1={run}", "trainer.steps=6", "optim.batch_size=16",
                 "--run-dir", str(ms)]) == 0
    stages = json.loads((ms / "metrics.json").read_text())["multistage"]
    assert "has no labels" in stages["classifier"]["skipped"]
    assert stages["combined"]["reconstruction"]["bce"] > 0 and "bce_ratio" in stages["summary"]
    assert (ms / "pictures" / "samples.png").exists() and (ms / "pictures" / "side_by_side.png").exists()
    out = tmp_path / "preview.png"
    assert main(["data", "show", str(root), "--out", str(out)]) == 0
    assert Image.open(out).size[0] > 300
