"""The CelebA loader (issue 27) on a small fixture in CelebA's exact layout: img_align_celeba/ of
178x218 JPEGs, list_attr_celeba.txt (count line, 40 names, then '000001.jpg -1  1 ...' rows with
CelebA's double spaces before positive values) and list_eval_partition.txt ('000001.jpg 0')."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from untwine.data import get_dataset
from untwine.data.celeba import CELEBA_CROP, NUM_ATTRIBUTES
from untwine.errors import DataError

ATTRIBUTES = ("5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair "
              "Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair "
              "Heavy_Makeup High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face "
              "Pale_Skin Pointy_Nose Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair "
              "Wearing_Earrings Wearing_Hat Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young").split()
N = 120


def _attr_line(name: str, values: np.ndarray) -> str:
    # CelebA pads so that columns align: two spaces before 1, one before -1
    return name + "".join(("  1" if v > 0 else " -1") for v in values)


def write_celeba(root, n: int = N, rng=None):
    rng = rng or np.random.default_rng(0)
    images = root / "img_align_celeba"
    images.mkdir(parents=True)
    attrs = np.where(rng.random((n, NUM_ATTRIBUTES)) < 0.3, 1, -1)
    attrs[:, 20] = np.where(np.arange(n) % 2 == 0, 1, -1)  # Male: alternating
    partition = np.zeros(n, int)
    partition[n - 20:n - 10] = 1
    partition[n - 10:] = 2
    names = [f"{i + 1:06d}.jpg" for i in range(n)]
    for i, name in enumerate(names):
        arr = np.full((218, 178, 3), 20, np.uint8)  # the border a 148-px crop removes
        top, left = (218 - CELEBA_CROP) // 2, (178 - CELEBA_CROP) // 2
        arr[top:top + CELEBA_CROP, left:left + CELEBA_CROP] = 100 + i  # grey: JPEG keeps it (no chroma loss)
        Image.fromarray(arr).save(images / name, quality=95)
    (root / "list_attr_celeba.txt").write_text(
        f"{n}\n" + " ".join(ATTRIBUTES) + " \n" + "\n".join(_attr_line(nm, a) for nm, a in zip(names, attrs)) + "\n")
    (root / "list_eval_partition.txt").write_text("\n".join(f"{nm} {p}" for nm, p in zip(names, partition)) + "\n")
    return attrs, partition


def test_celeba_fixture_loads_with_attributes_partition_and_crop(tmp_path):
    attrs, partition = write_celeba(tmp_path / "CelebA")
    ds = get_dataset("celeba", path=tmp_path / "CelebA")
    assert len(ds) == N and ds.image_shape == (3, 64, 64) and ds.factor_space is None
    assert ds.labels.names == tuple(ATTRIBUTES) and ds.labels.sizes == (2,) * 40
    assert np.array_equal(ds.labels.classes, (attrs > 0).astype(np.int64))
    # the official test partition is the evaluation split; training draws from the rest
    assert ds.evaluation_split.eval_indices.tolist() == list(range(N - 10, N))
    assert ds.evaluation_split.num_train == N - 10
    # 148-px centre crop: the border (20) is cut away; inside, the image's own grey (JPEG: +-3; its
    # 8x8 blocks ring at the crop's edge, one output pixel wide)
    img = ds.images(np.array([50]))[0].astype(int)
    assert np.abs(img[1:-1, 1:-1] - 150).max() <= 3 and img.min() > 100


def test_celeba_attributes_feed_the_probes(tmp_path):
    write_celeba(tmp_path / "CelebA")
    ds = get_dataset("celeba", path=tmp_path / "CelebA")
    from untwine.metrics import evaluate

    def male_code(x):  # a code that reads Male exactly (from the image's grey level's parity) and noise
        i = (x[:, 0, 32, 32] * 255).round() - 100
        return np.stack([(i % 2 == 0).numpy().astype(float), np.random.default_rng(0).random(len(x))], 1)

    res = evaluate(male_code, ds, metrics={"mig": {"num_train": 100}, "beta_vae": {}})
    assert "Male" in res["_meta"]["factors"]
    assert "need a full factor grid" in res["grid_metrics"]["skipped"]
    noise = evaluate(lambda x: np.random.default_rng(1).random((len(x), 2)), ds, metrics={"mig": {"num_train": 100}})
    # Male is read by dimension 0 alone: MIG (a mean over the 40 attributes) is far above pure noise's
    assert res["mig"]["mig"] > noise["mig"]["mig"] + 1.0 / 40 * 0.8
    assert res["active_dims"]["num_active_dims"] == 2


def test_celeba_kaggle_layout_and_missing_files(tmp_path):
    root = tmp_path / "kaggle"
    write_celeba(root)
    (root / "img_align_celeba").rename(tmp_path / "tmp_images")
    (root / "img_align_celeba").mkdir()
    (tmp_path / "tmp_images").rename(root / "img_align_celeba" / "img_align_celeba")
    (root / "img_align_celeba" / "img_align_celeba" / "000003.jpg").unlink()
    ds = get_dataset("celeba", path=root)
    assert len(ds) == N - 1 and ds.skipped == ("000003.jpg",)


@pytest.mark.parametrize("damage, message", [
    ("no_partition", "has no list_eval_partition.txt"),
    ("truncated_attr", "announces 120 images but lists 119"),
    ("bad_value", "values of -1 or 1"),
    ("not_a_folder", "is not a folder"),
])
def test_celeba_bad_layouts_are_clear_errors(tmp_path, damage, message):
    root = tmp_path / "CelebA"
    write_celeba(root)
    attr = root / "list_attr_celeba.txt"
    if damage == "no_partition":
        (root / "list_eval_partition.txt").unlink()
    elif damage == "truncated_attr":
        attr.write_text("\n".join(attr.read_text().splitlines()[:-1]) + "\n")
    elif damage == "bad_value":
        attr.write_text(attr.read_text().replace("000005.jpg  1", "000005.jpg  7").replace("000005.jpg -1", "000005.jpg  7"))
    else:
        root = attr
    with pytest.raises(DataError, match=message):
        get_dataset("celeba", path=root)
