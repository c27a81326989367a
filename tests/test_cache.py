"""The on-disk cache: round trips, damage is detected and rebuilt, nothing half-written is valid."""
import json
import os
from pathlib import Path

import numpy as np
import pytest

from untwine.data import cache
from untwine.errors import DataError

SHAPE = (10, 6, 4)


def reference():
    return np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE) * 0.5


class Builder:
    """Yields the reference array in chunks of 3 rows and counts builds."""

    def __init__(self, fail_after=None, rows=None):
        self.calls = 0
        self.fail_after = fail_after
        self.rows = rows

    def __call__(self):
        self.calls += 1
        arr = reference() if self.rows is None else reference()[: self.rows]
        for i, start in enumerate(range(0, len(arr), 3)):
            if self.fail_after is not None and i == self.fail_after:
                raise RuntimeError("renderer crashed")
            yield arr[start:start + 3]


def open_ref(root, builder, version="v1", verify=True):
    return cache.open_array("ref", shape=SHAPE, dtype=np.float32, version=version, chunks=builder,
                            cache_dir=root, verify=verify, progress=False)


@pytest.fixture(autouse=True)
def fresh_process(monkeypatch):
    # Every test starts as a new process: nothing verified yet.
    monkeypatch.setattr(cache, "_VERIFIED", set())


def test_cache_root_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("UNTWINE_CACHE", str(tmp_path / "env"))
    assert cache.cache_root(tmp_path / "arg") == tmp_path / "arg"
    assert cache.cache_root() == tmp_path / "env"
    monkeypatch.delenv("UNTWINE_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.cache_root() == tmp_path / "home" / ".cache" / "untwine"


def test_round_trip_builds_once_and_memory_maps_read_only(tmp_path):
    builder = Builder()
    arr = open_ref(tmp_path, builder)
    assert isinstance(arr, np.memmap) and np.array_equal(arr, reference())
    assert not arr.flags.writeable
    again = open_ref(tmp_path, builder)
    cache._VERIFIED.clear()  # a new process verifies the checksums, still no rebuild
    third = open_ref(tmp_path, builder)
    assert builder.calls == 1 and np.array_equal(again, reference()) and np.array_equal(third, reference())
    manifest = json.loads((tmp_path / "ref.json").read_text())
    assert manifest["shape"] == list(SHAPE) and manifest["version"] == "v1"
    assert manifest["nbytes"] == reference().nbytes == (tmp_path / "ref.bin").stat().st_size
    assert [c[1] for c in manifest["chunks"]] == [3 * 24 * 4] * 3 + [24 * 4]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref.bin", "ref.json"]  # no temp files


def _flip_byte(path: Path, offset: int):
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 0xFF]))


def test_corrupted_data_is_detected_and_rebuilt(tmp_path, capsys):
    builder = Builder()
    open_ref(tmp_path, builder)
    _flip_byte(tmp_path / "ref.bin", 700)
    assert "checksum mismatch" in cache.entry_status("ref", shape=SHAPE, dtype=np.float32, version="v1",
                                                     cache_dir=tmp_path, verify=True)[1]
    arr = open_ref(tmp_path, builder)
    assert builder.calls == 2 and np.array_equal(arr, reference())
    assert "checksum mismatch" in capsys.readouterr().err


def test_truncated_data_is_rebuilt(tmp_path):
    builder = Builder()
    open_ref(tmp_path, builder)
    with open(tmp_path / "ref.bin", "r+b") as fh:
        fh.truncate(100)
    cache._VERIFIED.clear()
    arr = open_ref(tmp_path, builder, verify=False)  # the size check needs no hashing
    assert builder.calls == 2 and np.array_equal(arr, reference())


@pytest.mark.parametrize("damage", ["garbage", "missing", "other_version", "data_missing"])
def test_bad_manifest_means_rebuild(tmp_path, damage):
    builder = Builder()
    open_ref(tmp_path, builder)
    manifest = tmp_path / "ref.json"
    if damage == "garbage":
        manifest.write_text("{not json")
    elif damage == "missing":
        manifest.unlink()
    elif damage == "other_version":
        m = json.loads(manifest.read_text())
        m["version"] = "v0"
        manifest.write_text(json.dumps(m))
    else:
        (tmp_path / "ref.bin").unlink()
    arr = open_ref(tmp_path, builder)
    assert builder.calls == 2 and np.array_equal(arr, reference())


def test_new_renderer_version_rebuilds(tmp_path):
    builder = Builder()
    open_ref(tmp_path, builder, version="v1")
    open_ref(tmp_path, builder, version="v2")
    assert builder.calls == 2
    assert json.loads((tmp_path / "ref.json").read_text())["version"] == "v2"


def test_a_crash_while_building_leaves_no_valid_cache(tmp_path):
    with pytest.raises(RuntimeError, match="crashed"):
        open_ref(tmp_path, Builder(fail_after=2))
    assert list(tmp_path.iterdir()) == []  # no data, no manifest, no temp file
    # an old valid entry stops being valid as soon as a rebuild starts
    open_ref(tmp_path, Builder(), version="v1")
    with pytest.raises(RuntimeError):
        open_ref(tmp_path, Builder(fail_after=1), version="v2")
    assert not (tmp_path / "ref.json").exists()
    assert cache.entry_status("ref", shape=SHAPE, dtype=np.float32, version="v1",
                              cache_dir=tmp_path)[1] == "no manifest"
    builder = Builder()
    assert np.array_equal(open_ref(tmp_path, builder, version="v2"), reference()) and builder.calls == 1


def test_short_or_wrong_chunks_are_refused(tmp_path):
    with pytest.raises(DataError, match="expected"):
        open_ref(tmp_path, Builder(rows=7))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DataError, match="dtype"):
        cache.open_array("ref", shape=SHAPE, dtype=np.float64, version="v1", chunks=Builder(),
                         cache_dir=tmp_path, progress=False)


def test_unwritable_cache_dir_names_the_dir_and_the_fix(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    target = blocker / "cache"  # a directory cannot be made inside a file
    with pytest.raises(DataError) as err:
        open_ref(target, Builder())
    msg = str(err.value)
    assert str(target) in msg and "UNTWINE_CACHE" in msg and "cache_dir" in msg


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can write anywhere")
def test_read_only_cache_dir(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(DataError, match="cannot be written"):
            open_ref(ro, Builder())
    finally:
        ro.chmod(0o700)


def test_env_var_directs_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("UNTWINE_CACHE", str(tmp_path / "via-env"))
    arr = cache.open_array("ref", shape=SHAPE, dtype=np.float32, version="v1", chunks=Builder(),
                           progress=False)
    assert Path(arr.filename).parent == tmp_path / "via-env"


def test_malformed_chunk_list_means_rebuild(tmp_path):
    builder = Builder()
    open_ref(tmp_path, builder)
    manifest = tmp_path / "ref.json"
    m = json.loads(manifest.read_text())
    m["chunks"] = [["x", 1]]
    manifest.write_text(json.dumps(m))
    assert np.array_equal(open_ref(tmp_path, builder), reference()) and builder.calls == 2


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can write anywhere")
def test_valid_cache_in_a_read_only_dir_is_used(tmp_path):
    open_ref(tmp_path, Builder())
    tmp_path.chmod(0o500)
    try:
        builder = Builder()
        assert np.array_equal(open_ref(tmp_path, builder), reference()) and builder.calls == 0
    finally:
        tmp_path.chmod(0o700)


def test_too_little_disk_space_is_refused_before_writing(tmp_path, monkeypatch):
    real = cache.shutil.disk_usage

    def tiny(path):
        return real(path)._replace(free=100)

    monkeypatch.setattr(cache.shutil, "disk_usage", tiny)
    with pytest.raises(DataError, match=r"needs 960 bytes .* has 100 bytes free.*UNTWINE_CACHE"):
        open_ref(tmp_path, Builder())
    assert list(tmp_path.iterdir()) == []


def test_a_write_error_becomes_a_clear_error_and_leaves_nothing(tmp_path):
    def failing():
        yield reference()[:3]
        raise OSError(28, "No space left on device")

    with pytest.raises(DataError, match="No space left on device.*UNTWINE_CACHE"):
        open_ref(tmp_path, failing)
    assert list(tmp_path.iterdir()) == []
