"""Training images/s of the pair and group models against single-image beta-VAE, same images per step.

    .venv/bin/python benchmarks/bench_grouping_overhead.py [--quick] [--mode both] [--repeats 3]
    .venv/bin/python benchmarks/bench_grouping_overhead.py --summary   # the tables of the saved results

Every model trains on procedural dSprites with the conv64 network at 64 images a step: beta-VAE 64
single images, the pair models (gvae, mlvae_pairs, adagvae, adamlvae) 32 pairs, the grouped ML-VAE
16 groups of 4 (`optim.batch_size` counts images for every batch kind). Each model is its shipped
preset (`dsprites-<model>`), so sampler, objective and network are exactly what `untwine train` runs.
Two precisions: fp32 (`trainer.precision=32-true`, contiguous) and the presets' default
`precision=auto` (bf16 autocast on a CPU with native bf16, channels-last).

Two measurements (--mode):
- step: the engine's step (untwine.train.engine: build_sampler -> _TrainStep under Fabric ->
  fabric.backward -> Adam -> every term read as a float), all 12 systems built once and warmed up,
  then --repeats rounds each run one block of every system in a rotating order; images/s = median
  over rounds, overhead = median over rounds of (beta-VAE's block rate / the model's) - 1 at the same
  precision, so each model is compared with a beta-VAE block run beside it under the same load.
- engine: untwine.train.train() itself, trainer.steps = --engine-steps (eval none, no pictures,
  no report), summary["images_per_second"] after the engine's own 10 warm-up steps; --repeats
  rounds of all 12 runs in a rotating order, overhead from per-round ratios as above.
One torch thread throughout (the machine is shared). The target: overhead under 10%.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, print_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BATCH = 64
BASELINE = "betavae"
MODELS = {  # label -> preset; batch layout at 64 images
    "betavae": ("dsprites-betavae", "64 images"),
    "gvae": ("dsprites-gvae", "32 pairs"),
    "mlvae_pairs": ("dsprites-mlvae-pairs", "32 pairs"),
    "adagvae": ("dsprites-adagvae", "32 pairs"),
    "adamlvae": ("dsprites-adamlvae", "32 pairs"),
    "mlvae": ("dsprites-mlvae", "16 groups of 4"),
}
PRECISIONS = {  # label -> config overrides
    "fp32": ["trainer.precision=32-true", "trainer.channels_last=false"],
    "auto": ["trainer.precision=auto", "trainer.channels_last=true"],
}
QUIET = ["trainer.eval_preset=none", "trainer.pictures=false", "trainer.report=false", "trainer.progress=false",
         "trainer.log_every=1000000", "trainer.ckpt_every=1000000", "trainer.eval_every=0", "trainer.threads=1"]


def config(model: str, precision: str, steps: int):
    from untwine.train.config import load_config
    return load_config(MODELS[model][0], [f"optim.batch_size={BATCH}", f"trainer.steps={steps}",
                                          *PRECISIONS[precision], *QUIET])


class EngineStep:
    """The engine's set-up and step (_Engine._setup / _Engine._step) for one config, timed in blocks."""

    def __init__(self, cfg, data, warmup: int):
        from lightning.fabric import Fabric

        from untwine.train.batches import batch_kind, build_sampler
        from untwine.train.engine import _TrainStep, build_model, build_objective_from, resolve_precision

        t = cfg.trainer
        self.fabric = Fabric(accelerator="cpu", devices=1, precision=resolve_precision(t.precision, "cpu"), loggers=[])
        torch.manual_seed(t.seed)
        model = build_model(cfg, data)
        objective = build_objective_from(cfg, len(data))
        if t.channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas))
        self.module, self.optimizer = self.fabric.setup(_TrainStep(model, objective), optimizer)
        self.kind = batch_kind(objective)
        self.sampler = build_sampler(cfg, data, objective, t.seed, self.fabric.device)
        self.channels_last, self.i = t.channels_last, 0
        for _ in range(warmup):
            self.step()

    def step(self) -> None:
        from untwine.train.batches import to_device_layout
        batch = next(self.sampler)
        if self.kind == "single" and not isinstance(batch, torch.Tensor):
            batch = batch.x
        batch = to_device_layout(batch, self.channels_last)
        out = self.module(batch, None, self.i)
        self.optimizer.zero_grad(set_to_none=True)
        self.fabric.backward(out.loss)
        self.optimizer.step()
        {k: float(v) for k, v in {"loss": out.loss, **out.terms}.items()}  # the engine reads them on the CPU
        self.i += 1

    def rate(self, steps: int) -> float:
        t0 = time.perf_counter()
        for _ in range(steps):
            self.step()
        return steps * BATCH / (time.perf_counter() - t0)


def engine_rate(model: str, precision: str, data, steps: int) -> float:
    from untwine.train.engine import train
    with tempfile.TemporaryDirectory() as run_dir:
        return train(config(model, precision, steps), run_dir=run_dir, data=data)["images_per_second"]


def interleaved(systems: dict, measure, repeats: int, label: str) -> dict[tuple[str, str], list[float]]:
    """`repeats` rounds of measure(key) for every key, in an order rotating by one each round."""
    keys = list(systems)
    rates = {k: [] for k in keys}
    for r in range(repeats):
        for k in keys[r % len(keys):] + keys[: r % len(keys)]:
            rates[k].append(measure(k))
        print(f"  {label}: round {r + 1}/{repeats} done", flush=True)
    return rates


def summarise(mode: str, rates: dict[tuple[str, str], list[float]]) -> list[dict]:
    rows = []
    for (model, precision), rs in rates.items():
        base = rates[(BASELINE, precision)]
        # per-round ratio: each block against the beta-VAE block of the same round
        overhead = statistics.median(b / m - 1.0 for b, m in zip(base, rs))
        rows.append(dict(mode=mode, model=model, batch=MODELS[model][1], precision=precision,
                         images_per_second=statistics.median(rs), rates=rs, overhead=overhead,
                         target_met=bool(model == BASELINE or overhead < 0.10)))
    return rows


def pivot(results: list[dict], auto: str) -> str:
    """One row per model: images/s and overhead per (measurement, precision), as markdown."""
    cols = list(dict.fromkeys((r["mode"], r["precision"]) for r in results))
    cell = {(r["model"], r["mode"], r["precision"]): r for r in results}
    rows = []
    for model in dict.fromkeys(r["model"] for r in results):
        row = [model, MODELS[model][1]]
        for mode, precision in cols:
            r = cell[(model, mode, precision)]
            row.append(f"{r['images_per_second']:.0f}" if model == BASELINE
                       else f"{r['images_per_second']:.0f} ({100 * r['overhead']:+.1f}%)")
        rows.append(row)
    names = [f"{mode}, {precision if precision == 'fp32' else 'auto (' + auto + ')'}" for mode, precision in cols]
    return print_table("images/s (overhead vs beta-VAE, median of per-round ratios)", ["model", "batch", *names], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description="pair/group model training overhead vs beta-VAE")
    parser.add_argument("--mode", choices=("step", "engine", "both"), default="both")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--block-steps", type=int, default=15, help="steps per timed block (step mode)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per system (step mode)")
    parser.add_argument("--engine-steps", type=int, default=60, help="trainer.steps per train() run")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--precisions", nargs="+", choices=list(PRECISIONS), default=list(PRECISIONS))
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 round, short blocks")
    parser.add_argument("--summary", action="store_true", help="print the tables of --out/overhead.json and exit")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "grouped",
                        help="writes overhead.json and overhead.md here")
    args = parser.parse_args()
    if args.summary:
        saved = json.loads((args.out / "overhead.json").read_text())
        print(pivot(saved["results"], saved["meta"]["auto_precision"]))
        return
    if args.quick:
        args.repeats, args.block_steps, args.warmup, args.engine_steps = 1, 3, 2, 15
    if BASELINE not in args.models:
        args.models.insert(0, BASELINE)

    torch.set_num_threads(1)
    from untwine.data.registry import get_dataset
    from untwine.train.engine import resolve_precision
    data = get_dataset("dsprites")
    auto = resolve_precision("auto", "cpu")
    print(f"machine: {machine()}; precision=auto resolves to {auto}")
    keys = {(m, p): None for p in args.precisions for m in args.models}
    results: list[dict] = []
    t0 = time.perf_counter()
    if args.mode in ("step", "both"):
        systems = {k: EngineStep(config(*k, steps=10**6), data, args.warmup) for k in keys}
        rates = interleaved(systems, lambda k: systems[k].rate(args.block_steps), args.repeats, "engine step")
        results += summarise("engine step", rates)
        del systems
    if args.mode in ("engine", "both"):
        rates = interleaved(keys, lambda k: engine_rate(*k, data, args.engine_steps), args.repeats, "train()")
        results += summarise("train()", rates)
    seconds = time.perf_counter() - t0

    rows = [[r["mode"], r["model"], r["batch"], r["precision"] if r["precision"] == "fp32" else f"auto ({auto})",
             f"{r['images_per_second']:.1f}", f"{min(r['rates']):.0f}-{max(r['rates']):.0f}",
             "" if r["model"] == BASELINE else f"{100 * r['overhead']:+.1f}%",
             "" if r["model"] == BASELINE else ("yes" if r["target_met"] else "no")] for r in results]
    md = print_table(f"training images/s at {BATCH} images a step, conv64, procedural dSprites, 1 torch thread, "
                     f"median of {args.repeats} interleaved rounds",
                     ["measured by", "model", "batch", "precision", "images/s", "range",
                      "overhead vs beta-VAE", "< 10%"], rows)
    print(md)
    md += "\n\n" + pivot(results, auto)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = dict(machine=machine(), auto_precision=auto, batch_images=BATCH, repeats=args.repeats,
                block_steps=args.block_steps, engine_steps=args.engine_steps, wall_seconds=seconds)
    (args.out / "overhead.json").write_text(json.dumps(dict(meta=meta, results=results), indent=1))
    (args.out / "overhead.md").write_text(md + "\n")
    print(f"wrote {args.out / 'overhead.json'} and overhead.md ({seconds:.0f} s)")


if __name__ == "__main__":
    main()
