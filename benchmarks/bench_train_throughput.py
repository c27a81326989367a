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
Every system is warmed up (--warmup steps; torch.compile 10 more), then --repeats rounds run one
block (--images-per-repeat images) of every system in a rotating order: images/s is the median
over rounds, and each ratio is the median of the per-round ratios, so a block of untwine is always
compared with disent blocks run beside it, under the same load of this shared machine. The
engine rows run untwine.train.engine.train() afterwards and report its own images/s.
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


class UntwineStep:
    """The engine's training step (src/untwine/train/engine.py, _Engine.run), timed in blocks."""

    def __init__(self, data, batch_size: int, channels_last: bool, precision: str, compile_: bool,
                 warmup: int, seed: int = 0):
        from lightning.fabric import Fabric

        from untwine.data.samplers import ObservationSampler
        from untwine.nets import build_vae

        torch.manual_seed(seed)
        self.fabric = Fabric(accelerator="cpu", devices=1, precision=precision, loggers=[])
        model = build_vae("conv64", in_channels=1, latent_dim=10, likelihood="bernoulli")
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        if compile_:  # as the engine does: in place, encoder and decoder
            model.encoder.compile()
            model.decoder.compile()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        self.module, self.optimizer = self.fabric.setup(_train_step_module(model, build_objective()), optimizer)
        self.sampler = ObservationSampler(data, batch_size=batch_size, seed=seed, device=self.fabric.device)
        self.channels_last, self.i = channels_last, 0
        for _ in range(warmup):
            self.step()

    def step(self) -> None:
        x = next(self.sampler).x
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = self.module(x, BETA, self.i)
        self.optimizer.zero_grad(set_to_none=True)
        self.fabric.backward(out.loss)
        self.optimizer.step()
        {k: float(v) for k, v in out.terms.items()}  # the engine reads the terms every step on the CPU
        self.i += 1

    def block(self, steps: int) -> float:
        t0 = time.perf_counter()
        for _ in range(steps):
            self.step()
        return time.perf_counter() - t0

    def close(self) -> None:
        pass


class DisentServer:
    """disent_train_step.py in .venv-disent, warmed up, running one block of steps per request."""

    def __init__(self, npz: Path, batch_size: int, arch: str, mode: str, precision: str, threads: int,
                 steps: int, warmup: int):
        cmd = [str(DISENT_PYTHON), str(ROOT / "benchmarks" / "disent_train_step.py"), "--npz", str(npz),
               "--batch-size", str(batch_size), "--arch", arch, "--mode", mode, "--precision", precision,
               "--threads", str(threads), "--steps", str(steps), "--warmup", str(warmup)]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, bufsize=1, env=env)
        self.cmd = cmd

    def _reply(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith("{"):
                return json.loads(line)
        raise RuntimeError(f"disent run ended ({' '.join(self.cmd)}):\n{self.proc.stderr.read()[-3000:]}")

    def wait_ready(self) -> None:
        self._reply()

    def block(self, steps: int) -> float:
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        return self._reply()["seconds"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("stop\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=120)


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
    parser.add_argument("--options", nargs="+", choices=list(OPTIONS),
                        default=["fp32", "channels_last", "bf16 autocast", "torch.compile", "channels_last + bf16"])
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
            disent_runs = [("disent Trainer", "dlib", "trainer", "32-true"),
                           ("disent bare loop", "dlib", "loop", "32-true"),
                           ("disent Trainer bf16", "dlib", "trainer", "bf16-mixed")]
            if not args.no_stock:
                disent_runs.append(("disent Trainer, stock EncoderConv64", "stock", "trainer", "32-true"))
            systems = {label: DisentServer(npz, batch, arch, mode, precision, args.threads, steps, args.warmup)
                       for label, arch, mode, precision in disent_runs}
            for server in systems.values():
                server.wait_ready()
            for name in args.options:
                channels_last, precision, compile_ = OPTIONS[name]
                warm = args.warmup + (10 if compile_ else 0)  # compilation happens over the first steps
                systems[f"untwine {name}"] = UntwineStep(data, batch, channels_last, precision, compile_, warm)
            # Rounds: every system runs one block per round, in a rotating order, so that each
            # untwine block has disent blocks beside it under the same machine load.
            seconds = {label: [] for label in systems}
            labels = list(systems)
            for r in range(args.repeats):
                for label in labels[r % len(labels):] + labels[: r % len(labels)]:
                    seconds[label].append(systems[label].block(steps))
                print(f"  batch {batch}: round {r + 1}/{args.repeats} done", flush=True)
            for system in systems.values():
                system.close()
            for label, times in seconds.items():
                rates = [steps * batch / t for t in times]
                row = dict(batch=batch, system=label, images_per_second=statistics.median(rates), spread=rates)
                if label.startswith("untwine"):
                    for ref, key in (("disent Trainer", "vs_disent_trainer"), ("disent bare loop", "vs_disent_loop"),
                                     ("disent Trainer bf16", "vs_disent_bf16")):
                        row[key] = statistics.median(d / u for u, d in zip(times, seconds[ref]))
                results.append(row)
            ref_rate = {r["system"]: r["images_per_second"] for r in results if r["batch"] == batch}
            for name in args.engine:
                ips = engine_throughput(data, batch, *OPTIONS[name], steps=steps * args.repeats)
                results.append(dict(batch=batch, system=f"untwine train() {name}", images_per_second=ips,
                                    spread=[ips], vs_disent_trainer=ips / ref_rate["disent Trainer"],
                                    vs_disent_loop=ips / ref_rate["disent bare loop"],
                                    vs_disent_bf16=ips / ref_rate["disent Trainer bf16"]))
                print(f"  batch {batch} untwine train() {name}: {ips:.1f} img/s", flush=True)

    base = {r["batch"]: r["images_per_second"] for r in results if r["system"] == "untwine fp32"}
    rows = []
    for r in results:
        lo, hi = min(r["spread"]), max(r["spread"])
        rows.append([r["batch"], r["system"], f"{r['images_per_second']:.1f}", f"{lo:.0f}-{hi:.0f}",
                     f"{r['images_per_second'] / base[r['batch']]:.2f}x" if r["batch"] in base else "",
                     f"{r['vs_disent_trainer']:.2f}x" if "vs_disent_trainer" in r else "",
                     f"{r['vs_disent_loop']:.2f}x" if "vs_disent_loop" in r else "",
                     f"{r['vs_disent_bf16']:.2f}x" if "vs_disent_bf16" in r else ""])
    md = print_table(f"beta-VAE training throughput, 64x64 dSprites, {args.threads} torch thread(s), "
                     f"median of {args.repeats} interleaved rounds",
                     ["batch", "system", "images/s", "range", "vs untwine fp32", "vs disent Trainer",
                      "vs disent loop", "vs disent bf16"], rows)
    print(md)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
