"""Training throughput (images/s) of beta-VAE on 64x64 dSprites: untwine beside disent, same run.

    .venv/bin/python benchmarks/bench_train_throughput.py [--quick] [--threads 1] [--batch-sizes 64 256]

untwine: the step the training engine runs (untwine.train.engine), one optimisation step =
ObservationSampler batch of procedural dSprites -> conv64 VAE -> BetaVAE objective (beta 4) ->
fabric.backward -> Adam (lr 1e-4) -> float(KL) for the controller, on Lightning Fabric, CPU.
Options, each measured: fp32 baseline, channels_last, bf16 autocast (Fabric "bf16-mixed"),
torch.compile, and their best combination.

disent: BetaVae (beta 4, BCE, mean_sum reduction, Adam lr 1e-4) on the same network
(disentanglement_lib's conv encoder / deconv decoder) and batch size, run by
benchmarks/disent_train_step.py in .venv-disent in a subprocess, fed the same dSprites images
through its own DisentDataset + DataLoader; both as disent trains (lightning Trainer) and as a
bare training_step loop; disent's stock EncoderConv64 (a heavier encoder) for information.

Both sides use torch.set_num_threads(--threads) (default 1: the machine is a shared 2-core box).
Each figure is the median over --repeats blocks of --steps steps, after --warmup untimed steps.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, print_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DISENT_PYTHON = ROOT / ".venv-disent" / "bin" / "python"
BETA = 4.0

OPTIONS = {  # name -> (channels_last, precision, compile)
    "fp32": (False, "32-true", False),
    "channels_last": (True, "32-true", False),
    "bf16 autocast": (False, "bf16-mixed", False),
    "torch.compile": (False, "32-true", True),
    "channels_last + bf16": (True, "bf16-mixed", False),
    "compile + bf16": (False, "bf16-mixed", True),
}


def load_dsprites():
    """Procedural dSprites through the registry (or the class itself while the registry is absent)."""
    try:
        from untwine.data.registry import get_dataset
        return get_dataset("dsprites")
    except ImportError:
        from untwine.data.dsprites import DSprites
        return DSprites()


def build_objective():
    from untwine.objectives import build_objective as build
    return build("betavae", beta=BETA)


def _train_step_module(model, objective):
    """The engine's VAE + objective module (so that autocast covers the loss as it does there)."""
    try:
        from untwine.train.engine import _TrainStep
        return _TrainStep(model, objective)
    except ImportError:  # engine absent: the same two-line module
        class TrainStep(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.model, self.objective = model, objective

            def forward(self, x, beta, step):
                return self.objective(self.model, x, beta=beta, step=step)
        return TrainStep()


def untwine_throughput(data, batch_size: int, channels_last: bool, precision: str, compile_: bool,
                       steps: int, repeats: int, warmup: int, seed: int = 0) -> list[float]:
    """images/s per timed block of the engine's training step (src/untwine/train/engine.py, _Engine.run)."""
    from lightning.fabric import Fabric

    from untwine.data.samplers import ObservationSampler
    from untwine.nets import build_vae

    torch.manual_seed(seed)
    fabric = Fabric(accelerator="cpu", devices=1, precision=precision, loggers=[])
    model = build_vae("conv64", in_channels=1, latent_dim=10, likelihood="bernoulli")
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile_:  # as the engine does: in place, encoder and decoder
        model.encoder.compile()
        model.decoder.compile()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    step_module, optimizer = fabric.setup(_train_step_module(model, build_objective()), optimizer)
    sampler = ObservationSampler(data, batch_size=batch_size, seed=seed, device=fabric.device)

    def step(i: int) -> None:
        x = next(sampler).x
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = step_module(x, BETA, i)
        optimizer.zero_grad(set_to_none=True)
        fabric.backward(out.loss)
        optimizer.step()
        {k: float(v) for k, v in out.terms.items()}  # the engine reads the terms every step on the CPU

    for i in range(warmup):
        step(i)
    rates = []
    for r in range(repeats):
        t0 = time.perf_counter()
        for i in range(steps):
            step(warmup + r * steps + i)
        rates.append(steps * batch_size / (time.perf_counter() - t0))
    return rates


def engine_throughput(data, batch_size: int, channels_last: bool, precision: str, compile_: bool,
                      steps: int) -> float:
    """images/s as untwine.train.engine.train() reports it (its own warm-up of 10 steps excluded)."""
    from untwine.train.config import load_config
    from untwine.train.engine import train

    with tempfile.TemporaryDirectory() as run_dir:
        cfg = load_config("dsprites-betavae", [
            f"trainer.steps={steps + 10}", f"optim.batch_size={batch_size}", f"trainer.precision={precision}",
            f"trainer.channels_last={str(channels_last).lower()}", f"trainer.compile={str(compile_).lower()}",
            "trainer.eval_preset=none", "trainer.pictures=false", "trainer.progress=false",
            "trainer.log_every=1000000", "trainer.ckpt_every=1000000", "trainer.eval_every=0"])
        return train(cfg, run_dir=run_dir, data=data)["images_per_second"]


def disent_throughput(npz: Path, batch_size: int, arch: str, mode: str, threads: int,
                      steps: int, repeats: int, warmup: int, precision: str = "32-true") -> dict:
    cmd = [str(DISENT_PYTHON), str(ROOT / "benchmarks" / "disent_train_step.py"), "--npz", str(npz),
           "--batch-size", str(batch_size), "--arch", arch, "--mode", mode, "--threads", str(threads),
           "--precision", precision,
           "--steps", str(steps), "--repeats", str(repeats), "--warmup", str(warmup)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"disent run failed ({' '.join(cmd)}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def export_images(data, n: int, path: Path, seed: int = 0) -> None:
    """The same procedural dSprites images, uint8 (N, 64, 64, 1), for disent's DataLoader."""
    idx = np.random.default_rng(seed).integers(0, len(data), size=n)
    np.savez(path, images=data.images(idx))


def main() -> None:
    parser = argparse.ArgumentParser(description="beta-VAE training images/s: untwine vs disent")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--images-per-repeat", type=int, default=640,
                        help="images per timed block (steps = this / batch size, at least 2)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps (compile: 10 more)")
    parser.add_argument("--engine", nargs="*", default=["fp32", "bf16 autocast"], choices=list(OPTIONS),
                        help="options also run through the engine's train() (its images/s)")
    parser.add_argument("--options", nargs="+", default=list(OPTIONS), choices=list(OPTIONS))
    parser.add_argument("--no-stock", action="store_true", help="skip disent's stock EncoderConv64 row")
    parser.add_argument("--quick", action="store_true", help="2 repeats, fewer images: a smoke run")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.images_per_repeat, args.warmup = 2, 256, 2

    torch.set_num_threads(args.threads)
    print(f"machine: {machine()}; torch threads {args.threads} on both sides")
    data = load_dsprites()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / "dsprites_subset.npz"
        export_images(data, 8192, npz)
        for batch in args.batch_sizes:
            steps = max(2, args.images_per_repeat // batch)
            common = dict(steps=steps, repeats=args.repeats, warmup=args.warmup)
            disent_runs = [("disent Trainer", "dlib", "trainer", "32-true"),
                           ("disent bare loop", "dlib", "loop", "32-true"),
                           ("disent Trainer bf16", "dlib", "trainer", "bf16-mixed")]
            if not args.no_stock:
                disent_runs.append(("disent Trainer, stock EncoderConv64", "stock", "trainer", "32-true"))
            ref = {}
            for label, arch, mode, precision in disent_runs:
                out = disent_throughput(npz, batch, arch, mode, args.threads, precision=precision, **common)
                ref[label] = out["images_per_second"]
                results.append(dict(batch=batch, system=label, images_per_second=out["images_per_second"],
                                    spread=out["per_repeat"]))
                print(f"  batch {batch} {label}: {out['images_per_second']:.1f} img/s")
            for name in args.options:
                channels_last, precision, compile_ = OPTIONS[name]
                warm = args.warmup + (10 if compile_ else 0)  # compilation happens over the first steps
                rates = untwine_throughput(data, batch, channels_last, precision, compile_,
                                           steps=steps, repeats=args.repeats, warmup=warm)
                med = statistics.median(rates)
                results.append(dict(batch=batch, system=f"untwine {name}", images_per_second=med, spread=rates,
                                    vs_disent_trainer=med / ref["disent Trainer"],
                                    vs_disent_loop=med / ref["disent bare loop"]))
                print(f"  batch {batch} untwine {name}: {med:.1f} img/s")
            for name in args.engine:
                ips = engine_throughput(data, batch, *OPTIONS[name], steps=steps * args.repeats)
                results.append(dict(batch=batch, system=f"untwine train() {name}", images_per_second=ips,
                                    spread=[ips], vs_disent_trainer=ips / ref["disent Trainer"],
                                    vs_disent_loop=ips / ref["disent bare loop"]))
                print(f"  batch {batch} untwine train() {name}: {ips:.1f} img/s")

    base = {r["batch"]: r["images_per_second"] for r in results if r["system"] == "untwine fp32"}
    rows = []
    for r in results:
        lo, hi = min(r["spread"]), max(r["spread"])
        rows.append([r["batch"], r["system"], f"{r['images_per_second']:.1f}", f"{lo:.0f}-{hi:.0f}",
                     f"{r['images_per_second'] / base[r['batch']]:.2f}x" if r["batch"] in base else "",
                     f"{r['vs_disent_trainer']:.2f}x" if "vs_disent_trainer" in r else "",
                     f"{r['vs_disent_loop']:.2f}x" if "vs_disent_loop" in r else ""])
    md = print_table(f"beta-VAE training throughput, 64x64 dSprites, {args.threads} torch thread(s), "
                     f"median of {args.repeats}",
                     ["batch", "system", "images/s", "range", "vs untwine fp32", "vs disent Trainer",
                      "vs disent loop"], rows)
    print(md)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
