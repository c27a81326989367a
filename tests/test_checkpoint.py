"""Checkpoints: exact round trips, atomic swap, and clear errors for missing or corrupt files."""
from __future__ import annotations

import json

import pytest
import torch

from untwine.errors import CheckpointError
from untwine.train.checkpoint import (Checkpoint, capture_torch_rng, checkpoint_dir, flatten_optimizer_state,
                                      load_checkpoint, load_model_weights, restore_torch_rng, save_checkpoint,
                                      unflatten_optimizer_state)


def _trained_adam():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.5, 0.9))
    for _ in range(3):
        opt.zero_grad()
        net(torch.randn(5, 3)).pow(2).sum().backward()
        opt.step()
    return net, opt


def _checkpoint(step=7) -> Checkpoint:
    net, opt = _trained_adam()
    return Checkpoint(step=step, model=net.state_dict(), optimizers={"main": opt.state_dict()},
                      aux={"disc.weight": torch.arange(6.0).reshape(2, 3)},
                      controller={"beta_raw": 3.5, "recent_kl": [0.1, 0.2], "inf": float("inf")},
                      sampler={"sampler": "ObservationSampler", "seed": 4, "step": step},
                      rng=capture_torch_rng(), extra={"note": "x"})


def test_round_trip_is_exact(tmp_path):
    ck = _checkpoint()
    save_checkpoint(tmp_path, ck)
    back = load_checkpoint(tmp_path)
    assert back.step == 7 and back.controller == ck.controller and back.sampler == ck.sampler
    assert back.extra == {"note": "x"}
    for k, v in ck.model.items():
        assert torch.equal(back.model[k], v)
    assert torch.equal(back.aux["disc.weight"], ck.aux["disc.weight"])
    assert torch.equal(back.rng["torch_cpu"], ck.rng["torch_cpu"])
    # the optimizer state loads into a fresh Adam and continues identically
    net, opt = _trained_adam()
    net2, _ = _trained_adam()
    opt2 = torch.optim.Adam(net2.parameters(), lr=1.0)
    opt2.load_state_dict(back.optimizers["main"])
    assert opt2.param_groups[0]["lr"] == 1e-3 and opt2.param_groups[0]["betas"] == [0.5, 0.9]
    for o, n in ((opt, net), (opt2, net2)):
        torch.manual_seed(1)
        o.zero_grad()
        n(torch.randn(5, 3)).pow(2).sum().backward()
        o.step()
    for a, b in zip(net.parameters(), net2.parameters()):
        assert torch.equal(a, b)


def test_optimizer_flattening_separates_tensors_and_json():
    _, opt = _trained_adam()
    tensors, meta = flatten_optimizer_state("main", opt.state_dict())
    assert all(isinstance(v, torch.Tensor) for v in tensors.values())
    assert "main.state.0.exp_avg" in tensors and "main.state.0.step" in tensors
    json.dumps(meta)  # the rest is plain JSON
    back = unflatten_optimizer_state("main", tensors, meta)
    assert set(back["state"]) == set(opt.state_dict()["state"])


def test_rng_restore_reproduces_the_stream():
    state = capture_torch_rng()
    a = torch.randn(4)
    restore_torch_rng(state)
    assert torch.equal(torch.randn(4), a)


def test_a_new_checkpoint_replaces_the_old_and_leaves_no_temp(tmp_path):
    save_checkpoint(tmp_path, _checkpoint(step=1))
    save_checkpoint(tmp_path, _checkpoint(step=2))
    assert load_checkpoint(tmp_path).step == 2
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last"]


def test_interrupted_swap_falls_back_to_the_previous(tmp_path):
    save_checkpoint(tmp_path, _checkpoint(step=3))
    root = tmp_path / "checkpoints"
    (root / "last").rename(root / "last.prev")  # crash between the two renames
    assert checkpoint_dir(tmp_path) == root / "last.prev"
    assert load_checkpoint(tmp_path).step == 3
    save_checkpoint(tmp_path, _checkpoint(step=4))  # the next save completes the swap
    assert load_checkpoint(tmp_path).step == 4 and not (root / "last.prev").exists()


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, _checkpoint(step=5))
    import untwine.train.checkpoint as ckpt_mod

    def disk_full(path, obj):
        raise OSError("No space left on device")
    monkeypatch.setattr(ckpt_mod, "_write_json", disk_full)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path, _checkpoint(step=6))
    monkeypatch.undo()
    assert load_checkpoint(tmp_path).step == 5
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last"]


def test_missing_run_or_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.safetensors", "rng.safetensors",
                                  "optimizer.json"])
def test_missing_file_is_named(tmp_path, name):
    save_checkpoint(tmp_path, _checkpoint())
    (tmp_path / "checkpoints" / "last" / name).unlink()
    with pytest.raises(CheckpointError, match=f"{name}.*missing"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.safetensors", "aux.safetensors"])
def test_truncated_safetensors_is_named(tmp_path, name):
    save_checkpoint(tmp_path, _checkpoint())
    path = tmp_path / "checkpoints" / "last" / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=f"{name}.*corrupt or truncated"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("name", ["state.json", "optimizer.json"])
def test_bad_json_is_named(tmp_path, name):
    save_checkpoint(tmp_path, _checkpoint())
    path = tmp_path / "checkpoints" / "last" / name
    path.write_text(path.read_text()[:-20])
    with pytest.raises(CheckpointError, match=f"{name}.*not valid JSON"):
        load_checkpoint(tmp_path)


def test_model_weights_only(tmp_path):
    ck = _checkpoint(step=9)
    save_checkpoint(tmp_path, ck)
    weights, step = load_model_weights(tmp_path)
    assert step == 9 and weights.keys() == ck.model.keys()
