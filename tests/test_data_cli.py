"""`untwine data info|show|render` in-process, and the dataset registry."""
import numpy as np
import pytest
from PIL import Image

from untwine.cli import main
from untwine.data import DSprites, Shapes3D, available_datasets, get_dataset
from untwine.data.commands import traversal_classes
from untwine.errors import DataError


def test_info_prints_the_factor_table(capsys):
    assert main(["data", "info", "dsprites"]) == 0
    out = capsys.readouterr().out
    for word in ("shape", "scale", "orientation", "posX", "posY", "737,280", "(1, 64, 64)"):
        assert word in out
    assert "6.283" in out  # orientation max = 2 pi
    assert main(["data", "info", "shapes3d"]) == 0
    out = capsys.readouterr().out
    assert "480,000" in out and "floor_hue" in out and "(3, 64, 64)" in out and "-30" in out


@pytest.mark.parametrize("name,rows", [("dsprites", 2 + 5), ("shapes3d", 2 + 6)])
def test_show_writes_a_png_grid(tmp_path, capsys, name, rows):
    out = tmp_path / "sub" / f"{name}.png"
    assert main(["data", "show", name, "--out", str(out), "--seed", "3"]) == 0
    assert str(out) in capsys.readouterr().out
    img = np.asarray(Image.open(out).convert("RGB"))
    assert img.shape[0] > rows * 64 and img.shape[1] > 10 * 64  # a row of 10 images per line
    assert img.std() > 20  # not blank
    if name == "shapes3d":  # colour images come out in colour
        assert np.abs(img[..., 0].astype(int) - img[..., 2]).max() > 100
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temp file left


def test_show_depends_on_the_seed(tmp_path):
    a, b, c = (tmp_path / f"{n}.png" for n in "abc")
    main(["data", "show", "dsprites", "--out", str(a), "--seed", "1"])
    main(["data", "show", "dsprites", "--out", str(b), "--seed", "1"])
    main(["data", "show", "dsprites", "--out", str(c), "--seed", "2"])
    pa, pb, pc = (np.asarray(Image.open(p)) for p in (a, b, c))
    assert np.array_equal(pa, pb) and not np.array_equal(pa, pc)


def test_traversal_classes_cover_the_range():
    assert traversal_classes(3).tolist() == [0, 1, 2]
    t = traversal_classes(40)
    assert len(t) == 10 and t[0] == 0 and t[-1] == 39 and np.all(np.diff(t) > 0)


@pytest.mark.parametrize("argv,message", [
    (["data", "info", "nosuch"], "known datasets"),
    (["data", "show", "dsprites", "--out", "x.jpg"], ".png"),
    (["data", "info", "mpi3d"], "--path"),
    (["data", "render", "dsprites", "--path", "x.npz"], "leave out --path"),
])
def test_bad_requests_get_clear_errors(capsys, argv, message):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_render_fills_the_cache_of_a_procedural_dataset(tmp_path, capsys, monkeypatch):
    # Stand-in for the 377 MB render: a DSprites whose cache build is checked, not performed.
    seen = {}

    class Probe:
        name = "dsprites"

        def __init__(self, cached=False, cache_dir=None, progress=True):
            seen.update(cached=cached, cache_dir=cache_dir)

        def __len__(self):
            return 737280

    monkeypatch.setattr("untwine.data.dsprites.DSprites", Probe)
    assert main(["data", "render", "dsprites", "--cache-dir", str(tmp_path)]) == 0
    assert seen == {"cached": True, "cache_dir": str(tmp_path)}
    assert "737,280 images cached" in capsys.readouterr().out


# -- registry --------------------------------------------------------------------
def test_registry_names_and_objects():
    assert set(available_datasets()) == {"dsprites", "shapes3d", "mpi3d", "cars3d", "smallnorb", "images", "celeba"}
    ds = get_dataset("dSprites")
    assert isinstance(ds, DSprites) and not ds.cached and len(ds) == 737280
    assert isinstance(get_dataset("3dshapes"), Shapes3D)


def test_registry_errors():
    with pytest.raises(DataError, match="known datasets are .*dsprites"):
        get_dataset("dsprite")
    with pytest.raises(DataError, match="path="):
        get_dataset("mpi3d_toy")
    with pytest.raises(DataError, match="cached= and progress="):
        get_dataset("dsprites", variant="toy")


def test_registry_reads_original_files_through_the_loaders(monkeypatch, tmp_path):
    files = pytest.importorskip("untwine.data.files")
    calls = []
    for fn in ("load_dsprites_npz", "load_shapes3d_h5", "load_mpi3d_npz"):
        monkeypatch.setattr(files, fn, lambda path, _fn=fn, **kw: calls.append((_fn, str(path), kw)) or _fn)
    assert get_dataset("dsprites", path=tmp_path / "d.npz") == "load_dsprites_npz"
    assert get_dataset("shapes3d", path=tmp_path / "s.h5") == "load_shapes3d_h5"
    assert get_dataset("mpi3d_real", path=tmp_path / "m.npz") == "load_mpi3d_npz"
    assert calls[-1] == ("load_mpi3d_npz", str(tmp_path / "m.npz"), {"variant": "real"})


def test_package_exports_the_data_api():
    import untwine.data as data

    for name in data.__all__:
        assert getattr(data, name) is not None, name
    from untwine.data.samplers import ObservationSampler

    assert data.ObservationSampler is ObservationSampler
    with pytest.raises(AttributeError, match="no attribute"):
        data.not_a_thing
