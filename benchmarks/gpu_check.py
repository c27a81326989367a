"""The GPU check: one command, under 10 minutes on one GPU, one table (issue 23, GPU readiness).

    .venv/bin/python benchmarks/gpu_check.py                 # on a machine with a CUDA GPU
    .venv/bin/python benchmarks/gpu_check.py --device cpu --quick   # the same rows, tiny, on this CPU

Every row trains through the real engine (untwine.train.train) on procedural dSprites, so the
numbers are what a user's run gets, data sampling and Fabric included:
  - conv64 beta-VAE training images/s at batch 64 and 256, in fp32, bf16 autocast, and bf16 +
    torch.compile (channels-last on), with the peak GPU memory of each run;
  - a stage-2 VAE and a stage-2 GAN step (ms-vae, ms-gan on a short beta-TCVAE stage 1);
  - encoding images/s for the metrics (the representation on 10,000 images, eval batch);
  - exact resume: 200 steps straight against 100 + 100 resumed, the largest weight difference (0 on
    a CPU; a GPU's non-deterministic kernels may leave a small one, reported, not hidden).
Writes benchmarks/results/gpu_check-<device>.json beside the printed table.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, print_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _quiet(steps: int, accelerator: str) -> list[str]:
    return [f"trainer.steps={steps}", f"trainer.accelerator={accelerator}", "trainer.devices=1",
            "trainer.eval_preset=none", "trainer.pictures=false", "trainer.report=false", "trainer.progress=false",
            f"trainer.log_every={max(1, steps // 4)}", f"trainer.ckpt_every={steps}", "trainer.threads=null"]


def _peak_reset(cuda: bool) -> None:
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak(cuda: bool) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if cuda else None


def _train(preset: str, overrides: list[str], run_dir: Path, cuda: bool) -> dict:
    from untwine.train import load_config, train
    _peak_reset(cuda)
    t0 = time.perf_counter()
    summary = train(load_config(preset, overrides), run_dir=run_dir)
    return {"images_per_second": summary["images_per_second"], "wall_s": time.perf_counter() - t0,
            "peak_gib": _peak(cuda), "precision": summary["precision"]}


def _max_weight_difference(a: Path, b: Path) -> float:
    from safetensors.torch import load_file
    wa = load_file(str(a / "checkpoints" / "last" / "model.safetensors"))
    wb = load_file(str(b / "checkpoints" / "last" / "model.safetensors"))
    return max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--quick", action="store_true", help="a few steps per row (checks the script, times nothing)")
    p.add_argument("--steps", type=int, default=None, help="steps per throughput row (default 400, quick 6)")
    args = p.parse_args()
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        print("no CUDA device here: run with --device cpu --quick to check the script", file=sys.stderr)
        return 2
    accelerator = "gpu" if cuda else "cpu"
    steps = args.steps or (6 if args.quick else 400)
    name = torch.cuda.get_device_name(0) if cuda else machine()
    rows, results = [], {"device": name, "torch": torch.__version__, "steps": steps, "rows": {}}
    work = Path(tempfile.mkdtemp(prefix="gpu_check-"))
    options = {"fp32": ["trainer.precision=32-true"],
               "bf16": ["trainer.precision=bf16-mixed", "trainer.channels_last=true"],
               "bf16 + compile": ["trainer.precision=bf16-mixed", "trainer.channels_last=true",
                                  "trainer.compile=true"]}
    batches = (64, 256) if not args.quick else (8,)
    for batch in batches:
        for option, extra in options.items():
            if option.endswith("compile") and not cuda and args.quick:
                continue  # compiling on this CPU takes minutes; the GPU run measures it
            key = f"conv64 beta-VAE, batch {batch}, {option}"
            r = _train("dsprites-betavae", [*_quiet(steps, accelerator), f"optim.batch_size={batch}", *extra],
                       work / f"b{batch}-{option.replace(' ', '')}", cuda)
            results["rows"][key] = r
            rows.append([key, f"{r['images_per_second']:,.0f}", f"{r['peak_gib']:.2f}" if cuda else "-",
                         f"{r['wall_s']:.0f}"])
    # stage 2 on a short stage 1
    batch = 8 if args.quick else 64
    stage1 = work / "stage1"
    _train("dsprites-betatcvae", [*_quiet(max(steps // 4, 2), accelerator), f"optim.batch_size={batch}",
                                  "trainer.precision=bf16-mixed"], stage1, cuda)
    for variant in ("ms-vae", "ms-gan"):
        key = f"{variant} stage 2, batch {batch}, bf16"
        r = _train(variant, [*_quiet(steps, accelerator), f"stage1={stage1}", f"optim.batch_size={batch}",
                             "trainer.precision=bf16-mixed", "trainer.multistage_eval=none"],
                   work / variant, cuda)
        results["rows"][key] = r
        rows.append([key, f"{r['images_per_second']:,.0f}", f"{r['peak_gib']:.2f}" if cuda else "-",
                     f"{r['wall_s']:.0f}"])
    # encoding for the metrics
    from untwine.metrics.protocol import default_encode_batch_size
    from untwine.train import load_run
    run = load_run(stage1)
    model = run.model.to(args.device).eval()
    n = 1000 if args.quick else 10_000
    enc_batch = default_encode_batch_size(torch.device(args.device))
    idx = torch.randperm(len(run.data))[:n].numpy()
    with torch.no_grad():
        _peak_reset(cuda)
        t0 = time.perf_counter()
        for start in range(0, n, enc_batch):
            model.encode(run.data.batch(idx[start:start + enc_batch], device=args.device))
        if cuda:
            torch.cuda.synchronize()
        rate = n / (time.perf_counter() - t0)
    key = f"encode for the metrics, batch {enc_batch}"
    results["rows"][key] = {"images_per_second": rate, "peak_gib": _peak(cuda)}
    rows.append([key, f"{rate:,.0f}", f"{_peak(cuda):.2f}" if cuda else "-", "-"])
    # exact resume
    total = 20 if args.quick else 200
    resume = ["trainer.precision=32-true", f"optim.batch_size={batch}"]
    from untwine.train import load_config, train
    straight, split = work / "straight", work / "split"
    train(load_config("dsprites-betavae", [*_quiet(total, accelerator), *resume]), run_dir=straight)
    half = [*_quiet(total // 2, accelerator), *resume, f"trainer.ckpt_every={total // 2}"]
    train(load_config("dsprites-betavae", half), run_dir=split)
    train(load_config(split / "config.yaml", [f"trainer.steps={total}"]), run_dir=split, resume=True)
    diff = _max_weight_difference(straight, split)
    results["rows"][f"resume {total // 2} + {total // 2} vs {total} straight"] = {"max_weight_difference": diff}
    rows.append([f"resume {total // 2} + {total // 2} vs {total} straight, fp32", f"max |dw| {diff:.3g}", "-", "-"])

    print_table(f"GPU check on {name} (torch {torch.__version__}; {steps} steps a throughput row, warm-up "
                f"excluded)", ["row", "images/s", "peak GiB", "wall s"], rows)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"gpu_check-{args.device}{'-quick' if args.quick else ''}.json"
    out.write_text(json.dumps(results, indent=1))
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
