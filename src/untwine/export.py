"""`untwine export RUN --format torchscript|onnx --out DIR`: a run's networks for use without untwine.

    written = export_run("runs/tcvae", "onnx", "exported/tcvae")

Every run gives
    encoder   image (B, C, H, W) in [0, 1] -> (mu, logvar), (B, latent_dim) each: mu is the code
              the metrics score
    decoder   code (B, latent_dim) -> image (B, C, H, W): the likelihood's mean (sigmoid of the
              logits for a Bernoulli decoder), in [0, 1]
and a multi-stage run (stage 2 on a frozen stage 1) also
    combined_reconstruct  image -> (reconstruction through stage 1 and stage 2, stage 1's own image)
    combined_generate     (z (B, latent_dim), w (B, w_dim)) -> image: sampling with z ~ N(0, I)
                          and w drawn from stage 2's prior (see export.json)
The encoder and decoder of a multi-stage run are stage 1's. The batch axis is dynamic.

Each file is loaded back after it is written (torch.jit.load, onnxruntime) and its outputs compared
with the model's own on held-out images of the run's dataset (a batch of a size other than the one
traced); export.json records the files, their inputs and outputs, and the largest difference.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from untwine.errors import CheckpointError, ConfigError

FORMATS = {"torchscript": ".pt", "onnx": ".onnx"}
MANIFEST = "export.json"
ONNX_OPSET = 17
#: largest difference a loaded-back file may show against the model (float32 and ONNX kernels)
TOLERANCE = 1e-4
TRACE_BATCH, CHECK_BATCH = 2, 5  # traced with one batch size, checked with another (dynamic batch axis)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="write a run's encoder and decoder (and a multi-stage run's combined model) as "
                       "TorchScript or ONNX, for use without untwine",
        description="Writes into OUT: encoder (image -> mu, logvar), decoder (code -> image in [0, 1]) and, for "
                    "a multi-stage run, combined_reconstruct (image -> combined reconstruction, stage-1 image) and "
                    "combined_generate (z, w -> image), plus export.json describing them. Each file is loaded "
                    "back and checked against the model before the command returns.")
    p.add_argument("run_dir", metavar="RUN", help="a run directory written by `untwine train` (with a checkpoint)")
    p.add_argument("--format", required=True, choices=sorted(FORMATS),
                   help="torchscript (torch.jit.load) or onnx (onnxruntime; needs the 'export' extra)")
    p.add_argument("--out", default=None,
                   help="the folder to write (default: RUN/export-FORMAT)")
    p.set_defaults(func=_export)


def _export(args) -> int:
    out = export_run(args.run_dir, args.format, args.out)
    manifest = json.loads((out / MANIFEST).read_text())
    for name, entry in manifest["networks"].items():
        print(f"{name}: {out / entry['file']}  ({', '.join(entry['inputs'])} -> {', '.join(entry['outputs'])}; "
              f"loaded back, largest difference {entry['max_abs_difference']:.2g})")
    print(f"described in {out / MANIFEST}")
    return 0


# -- what is exported --------------------------------------------------------------------------------
def _networks(model) -> dict[str, tuple[Callable, tuple[str, ...], tuple[str, ...]]]:
    """name -> (module, input names, output names) of a loaded run's model."""
    from torch import nn

    from untwine.multistage.model import MultiStageModel

    stage1 = model.stage1 if isinstance(model, MultiStageModel) else model

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.vae = stage1

        def forward(self, x):
            mu, logvar = self.vae.encode(x)
            return mu.float(), logvar.float()

    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.vae = stage1

        def forward(self, z):
            return self.vae.likelihood.mean(self.vae.decode(z))

    nets = {"encoder": (Encoder(), ("image",), ("mu", "logvar")),
            "decoder": (Decoder(), ("z",), ("image",))}
    if isinstance(model, MultiStageModel):
        class Reconstruct(nn.Module):
            def __init__(self):
                super().__init__()
                self.model = model

            def forward(self, x):
                z, y = self.model.stage1_output(x, sample=False)
                return self.model.stage2.reconstruct(x, y, z), y

        class Generate(nn.Module):
            def __init__(self):
                super().__init__()
                self.model = model

            def forward(self, z, w):
                return self.model.stage2.generate(self.model.stage1_decode(z), z, w)

        nets["combined_reconstruct"] = (Reconstruct(), ("image",), ("reconstruction", "stage1_image"))
        nets["combined_generate"] = (Generate(), ("z", "w"), ("image",))
    return nets


def _w_prior(stage2) -> str:
    """How to draw w for combined_generate, in words."""
    name = getattr(stage2, "name", "")
    if name == "gmm":
        return (f"w = (one-hot of a mixture component ({stage2.components}), then {stage2.rank} factors ~ N(0, I)); "
                f"the component's probabilities depend on z (untwine's sample() draws them)")
    temperature = getattr(stage2, "temperature", 1.0)
    return "w ~ N(0, I)" + (f" times temperature {temperature}" if temperature not in (None, 1, 1.0) else "")


# -- writing and reading back ------------------------------------------------------------------------
def _inputs(name: str, images, model, n: int):
    """Example inputs of network `name`: the first n images, their codes, p(w) draws (fixed seed)."""
    import torch
    x = images[:n]
    mu = model.encode(x)[0].float()  # a multi-stage model encodes with stage 1
    if name in ("encoder", "combined_reconstruct"):
        return (x,)
    if name == "decoder":
        return (mu,)
    gen = torch.Generator().manual_seed(0)
    z, y = mu, model.stage1_decode(mu)
    return (z, model.stage2.sample_w(len(z), y, z, generator=gen).float())


def _write(fmt: str, module, inputs: tuple, path: Path, input_names, output_names) -> None:
    import warnings

    import torch
    with torch.no_grad(), warnings.catch_warnings():
        # the networks' input-shape checks read shapes as Python values: every valid input takes the
        # same branch, so the trace is right for any batch (and the file is checked on another batch)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        if fmt == "torchscript":
            torch.jit.trace(module, inputs, check_trace=False).save(str(path))
            return
        axes = {name: {0: "batch"} for name in (*input_names, *output_names)}
        torch.onnx.export(module, inputs, str(path), dynamo=False, input_names=list(input_names),
                          output_names=list(output_names), dynamic_axes=axes, opset_version=ONNX_OPSET)


def load_exported(path: str | os.PathLike) -> Callable:
    """A written file as a function of numpy arrays returning a list of numpy arrays (both formats):
    what a user without untwine does, in two lines."""
    import numpy as np
    path = Path(path)
    if path.suffix == FORMATS["onnx"]:
        import onnxruntime
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        return lambda *arrays: session.run(None, {n: np.asarray(a, np.float32) for n, a in zip(names, arrays)})
    import torch
    module = torch.jit.load(str(path))

    def run(*arrays):
        with torch.no_grad():
            out = module(*(torch.as_tensor(np.asarray(a, np.float32)) for a in arrays))
        return [t.numpy() for t in (out if isinstance(out, (tuple, list)) else (out,))]
    return run


def _check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; use --format torchscript (torch.jit.load) or "
                          f"--format onnx (onnxruntime)")
    if fmt == "onnx":
        try:
            import onnx  # noqa: F401  (torch.onnx.export needs it)
            import onnxruntime  # noqa: F401  (the file is checked with it)
        except ImportError as e:
            raise ConfigError(f"--format onnx needs the packages onnx and onnxruntime ({e}); install them with "
                              f"pip install 'untwine[export]', or use --format torchscript") from e
    return fmt


def _load(run_dir: Path):
    from untwine.train.checkpoint import checkpoint_dir
    from untwine.train.run import load_run
    if not (run_dir / "config.yaml").is_file():
        raise CheckpointError(f"{str(run_dir)!r} is not a run directory (no config.yaml); give the directory "
                              f"`untwine train` wrote (see `untwine runs`)")
    try:
        checkpoint_dir(run_dir)
    except CheckpointError as e:
        raise CheckpointError(f"cannot export {str(run_dir)!r}: {e}. Train it first, or let it reach its first "
                              f"checkpoint (`untwine train --resume {run_dir}` continues it)") from e
    return load_run(run_dir)


def export_run(run_dir: str | os.PathLike, fmt: str, out: str | os.PathLike | None = None) -> Path:
    """Write the run's networks in `fmt` into `out` (default RUN/export-FMT), each loaded back and
    compared with the model; returns the folder. Raises ConfigError for an unknown format and
    CheckpointError for a folder that is no run or has no checkpoint."""
    import numpy as np
    import torch

    fmt = _check_format(fmt)
    run_dir = Path(run_dir)
    handle = _load(run_dir)
    # frozen: a user's module(x).numpy() works without .detach(), and nothing records gradients
    model = handle.model.float().eval().requires_grad_(False)
    out = Path(out) if out is not None else run_dir / f"export-{fmt}"
    out.mkdir(parents=True, exist_ok=True)
    data = handle.data
    # held-out images where the dataset has an evaluation split: what no training step drew
    space = getattr(data, "factor_space", None)
    if space is not None:
        from untwine.data.split import evaluation_split
        pool = evaluation_split(space).eval_indices
    else:
        pool = np.arange(len(data))
    idx = np.sort(np.random.default_rng(0).choice(pool, size=max(TRACE_BATCH, CHECK_BATCH), replace=False))
    images = torch.as_tensor(data.batch(idx)).float()
    manifest = {"run": str(run_dir.resolve()), "step": handle.step, "format": fmt,
                "image_shape": list(images.shape[1:]), "latent_dim": int(model.latent_dim), "networks": {}}
    if hasattr(model, "stage2"):
        manifest["w_dim"] = int(model.stage2.w_dim)
        manifest["stage2"] = getattr(model.stage2, "name", "")
        manifest["w_prior"] = _w_prior(model.stage2)
    with torch.no_grad():
        for name, (module, input_names, output_names) in _networks(model).items():
            module.eval()
            path = out / f"{name}{FORMATS[fmt]}"
            try:
                _write(fmt, module, _inputs(name, images, model, TRACE_BATCH), path, input_names, output_names)
            except RuntimeError as e:  # an operator the format lacks (ONNX: the mixture's cholesky)
                other = next(f for f in FORMATS if f != fmt)
                raise ConfigError(f"the {name} of {str(run_dir)!r} cannot be written as {fmt} ({e}); use "
                                  f"--format {other}") from e
            check = _inputs(name, images, model, CHECK_BATCH)
            expected = module(*check)
            expected = expected if isinstance(expected, tuple) else (expected,)
            got = load_exported(path)(*(t.numpy() for t in check))
            diff = max(float(np.max(np.abs(np.asarray(g) - e.numpy()))) for g, e in zip(got, expected))
            if not diff <= TOLERANCE:
                raise CheckpointError(f"the exported {name} ({path}) differs from the model by {diff:.3g} "
                                      f"(tolerance {TOLERANCE}); use the other format, or report this model")
            manifest["networks"][name] = {"file": path.name, "inputs": list(input_names),
                                          "outputs": list(output_names), "max_abs_difference": diff}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return out
