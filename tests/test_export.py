"""Issue 25, item 14: `untwine export RUN --format torchscript|onnx --out DIR`, loaded back without
untwine and compared with the run's own model, for a single-stage and a multi-stage (ms-vae) run."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from untwine.cli import main
from untwine.errors import ConfigError
from untwine.train import load_run

QUIET = ["trainer.steps=3", "optim.batch_size=4", "trainer.log_every=1", "trainer.ckpt_every=3",
         "trainer.pictures=false", "trainer.progress=false", "trainer.report=false", "trainer.precision=32-true",
         "trainer.channels_last=false", "--no-eval"]
TOL = 1e-4
FILES = {"torchscript": ".pt", "onnx": ".onnx"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export")
    stage1, stage2 = root / "tcvae", root / "msvae"
    assert main(["train", "dsprites-betatcvae", *QUIET, "--run-dir", str(stage1)]) == 0
    assert main(["train", "ms-vae", f"stage1={stage1}", "stage2.width=8", "stage2.w_dim=4", *QUIET,
                 "--run-dir", str(stage2)]) == 0
    return {"single": stage1, "multi": stage2}


def _load(path: Path):
    """The file as a user without untwine loads it: a function of numpy arrays -> list of arrays."""
    if path.suffix == ".onnx":
        import onnxruntime
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        return lambda *a: session.run(None, dict(zip(names, a)))
    module = torch.jit.load(str(path))

    def run(*a):
        out = module(*(torch.from_numpy(x) for x in a))
        return [t.detach().numpy() for t in (out if isinstance(out, tuple) else (out,))]
    return run


def _images(handle, n=3) -> torch.Tensor:
    # a batch size the export did not trace with, from a corner of the grid
    return handle.data.batch(np.arange(0, 737_280, 737_280 // n)[:n]).float()


@pytest.mark.parametrize("fmt", sorted(FILES))
@pytest.mark.parametrize("kind", ["single", "multi"])
def test_exported_networks_match_the_model(runs, tmp_path, capsys, fmt, kind):
    out = tmp_path / "exported"
    assert main(["export", str(runs[kind]), "--format", fmt, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    manifest = json.loads((out / "export.json").read_text())
    expected = ["encoder", "decoder"] + (["combined_reconstruct", "combined_generate"] if kind == "multi" else [])
    assert list(manifest["networks"]) == expected
    assert all(f"{n}: {out / (n + FILES[fmt])}" in printed for n in expected)

    handle = load_run(runs[kind])
    model = handle.model
    stage1 = model.stage1 if kind == "multi" else model
    x = _images(handle)
    with torch.no_grad():
        mu, logvar = stage1.encode(x)
        image = torch.sigmoid(stage1.decode(mu))
    got_mu, got_logvar = _load(out / f"encoder{FILES[fmt]}")(x.numpy())
    np.testing.assert_allclose(got_mu, mu.numpy(), atol=TOL)
    np.testing.assert_allclose(got_logvar, logvar.numpy(), atol=TOL)
    (got_image,) = _load(out / f"decoder{FILES[fmt]}")(mu.numpy())
    np.testing.assert_allclose(got_image, image.numpy(), atol=TOL)
    assert got_image.shape == (3, 1, 64, 64) and got_image.min() >= 0 and got_image.max() <= 1
    assert manifest["image_shape"] == [1, 64, 64] and manifest["latent_dim"] == 10
    if kind == "multi":
        recon, y = _load(out / f"combined_reconstruct{FILES[fmt]}")(x.numpy())
        np.testing.assert_allclose(recon, model.reconstruct(x).numpy(), atol=TOL)
        np.testing.assert_allclose(y, model.reconstruct_stage1(x).numpy(), atol=TOL)
        z = torch.randn(4, 10, generator=torch.Generator().manual_seed(1))
        w = torch.randn(4, 4, generator=torch.Generator().manual_seed(2))
        (sample,) = _load(out / f"combined_generate{FILES[fmt]}")(z.numpy(), w.numpy())
        with torch.no_grad():
            want = model.stage2.generate(model.stage1_decode(z), z, w)
        np.testing.assert_allclose(sample, want.numpy(), atol=TOL)
        assert manifest["w_dim"] == 4 and manifest["w_prior"].startswith("w ~ N(0, I)")
        # stage 2 changes the image: the combined model is not stage 1 under another name
        assert not np.allclose(recon, y, atol=1e-6)


def test_exported_files_load_without_untwine(runs, tmp_path):
    out = tmp_path / "exported"
    for fmt in FILES:
        assert main(["export", str(runs["multi"]), "--format", fmt, "--out", str(out / fmt)]) == 0
    code = f"""
import sys
sys.modules["untwine"] = None          # any import of untwine fails
import numpy as np, onnxruntime, torch
x = np.random.default_rng(0).random((2, 1, 64, 64), dtype=np.float32)
ts = torch.jit.load({str(out / 'torchscript' / 'combined_reconstruct.pt')!r})(torch.from_numpy(x))[0].numpy()
s = onnxruntime.InferenceSession({str(out / 'onnx' / 'combined_reconstruct.onnx')!r})
ox = s.run(None, {{"image": x}})[0]
print(ts.shape, float(np.abs(ts - ox).max()))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    shape, diff = result.stdout.strip().rsplit(" ", 1)
    assert shape == "(2, 1, 64, 64)" and float(diff) < TOL


def test_clear_errors(runs, tmp_path, capsys):
    # a run that has not reached a checkpoint: say so and how to go on
    started = tmp_path / "started"
    started.mkdir()
    (started / "config.yaml").write_text((runs["single"] / "config.yaml").read_text())
    assert main(["export", str(started), "--format", "onnx", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no checkpoint" in err and f"untwine train --resume {started}" in err
    assert not (tmp_path / "o").exists()
    # not a run at all
    assert main(["export", str(tmp_path), "--format", "torchscript"]) == 2
    assert "not a run directory (no config.yaml)" in capsys.readouterr().err
    # an unknown format, on the command line and in the library
    with pytest.raises(SystemExit) as stop:
        main(["export", str(runs["single"]), "--format", "tflite"])
    assert stop.value.code == 2
    assert "invalid choice: 'tflite'" in capsys.readouterr().err
    from untwine.export import export_run
    with pytest.raises(ConfigError, match="use --format torchscript .* or --format onnx"):
        export_run(runs["single"], "tflite")


def test_a_mixture_stage_2_exports_as_torchscript_and_says_why_not_onnx(runs, tmp_path, capsys):
    gmm = tmp_path / "gmm"
    assert main(["train", "ms-gmm", f"stage1={runs['single']}", "stage2.components=2", "stage2.rank=2",
                 "stage2.hidden=8", *QUIET, "--run-dir", str(gmm)]) == 0
    assert main(["export", str(gmm), "--format", "torchscript", "--out", str(tmp_path / "ts")]) == 0
    manifest = json.loads((tmp_path / "ts" / "export.json").read_text())
    assert manifest["stage2"] == "gmm" and manifest["w_dim"] == 4 and "one-hot" in manifest["w_prior"]
    handle = load_run(gmm)
    x = _images(handle)
    recon, _ = _load(tmp_path / "ts" / "combined_reconstruct.pt")(x.numpy())
    np.testing.assert_allclose(recon, handle.model.reconstruct(x).numpy(), atol=TOL)
    capsys.readouterr()
    # ONNX has no Cholesky: the error names the network and the format that works
    assert main(["export", str(gmm), "--format", "onnx", "--out", str(tmp_path / "onnx")]) == 2
    err = capsys.readouterr().err
    assert "combined_reconstruct" in err and "cannot be written as onnx" in err and "use --format torchscript" in err
