"""A first reproduction table on procedural dSprites at a stated CPU budget.

    .venv/bin/python benchmarks/reproduce_dsprites.py [--steps 3500] [--methods betavae betatcvae controlvae dynamicvae]
    .venv/bin/python benchmarks/reproduce_dsprites.py --evaluate-only   # re-score finished runs

Trains beta-VAE (beta 4), beta-TCVAE (beta 6, MWS), ControlVAE and DynamicVAE through the real
engine (untwine.train.engine.train with the shipped dsprites-* presets), one after another, with
the same steps, batch size, seed and precision, then scores each final model the same way:
reconstruction loss and KL on 5,000 held-out images (z sampled, as in training), MIG,
FactorVAE score and DCI (disentanglement, completeness, informativeness).

The controllers' set-point schedules are compressed with time_scale = steps / 2,000,000, so a
short run follows the shape of the papers' 2-million-step schedule (C: 0.5 -> 20 (DynamicVAE) or
18 (ControlVAE) in 0.15-nat increments), then holds at the cap.

Runs live in runs/reproduce_dsprites/<method>/ (ignored by git); the small outputs (results.json,
each run's metrics and CSV log, traversal and curve PNGs) go to benchmarks/results/reproduce_dsprites/.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, print_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs" / "reproduce_dsprites"
RESULTS = ROOT / "benchmarks" / "results" / "reproduce_dsprites"
PAPER_STEPS = 2_000_000
ACTIVE_KL = 0.5  # nats: a latent dimension counts as active above this mean KL

METHODS = {  # name -> (preset, extra overrides)
    "betavae": ("dsprites-betavae", ["objective.beta=4"]),
    "betatcvae": ("dsprites-betatcvae", ["objective.beta=6"]),
    "controlvae": ("dsprites-controlvae", ["controller.c_max=18"]),
    "dynamicvae": ("dsprites-dynamicvae", ["controller.c_max=20"]),
}
CONTROLLED = ("controlvae", "dynamicvae")

# Protocol sizes: disentanglement_lib's for MIG (10,000 points); DCI on half its sizes and FactorVAE
# on a twentieth of its votes (each vote encodes 64 images; the full 10,000 + 5,000 votes are ~1M
# encoder passes per model), to fit the CPU budget: about a minute of scoring per model here.
EVAL_METRICS = {
    "mig": {"num_train": 10000},
    "factor_vae": {"num_train": 500, "num_eval": 250, "num_variance_estimate": 5000},
    "dci": {"num_train": 5000, "num_test": 2500, "mode": "fast"},
}


def overrides_for(method: str, args) -> list[str]:
    preset, extra = METHODS[method]
    out = [f"trainer.steps={args.steps}", f"trainer.seed={args.seed}", f"optim.batch_size={args.batch_size}",
           f"trainer.precision={args.precision}", "trainer.eval_preset=none", "trainer.eval_every=0",
           f"trainer.log_every={max(1, args.steps // 300)}", f"trainer.ckpt_every={args.steps}",
           "trainer.pictures=true", f"trainer.progress={'true' if args.progress else 'false'}", *extra]
    if method in CONTROLLED:
        out.append(f"controller.time_scale={args.steps / PAPER_STEPS:.8g}")
    return out


@torch.no_grad()
def heldout_elbo_terms(model, data, n: int = 5000, seed: int = 123, batch: int = 500) -> dict:
    """Reconstruction NLL (z sampled from q(z|x)) and KL, means over n held-out random images; per-dim KL."""
    idx = np.random.default_rng(seed).integers(0, len(data), size=n)
    gen = torch.Generator().manual_seed(seed)
    recon, kl = [], []
    for chunk in np.array_split(idx, max(1, n // batch)):
        x = data.batch(chunk)
        mu, logvar = model.encode(x)
        mu, logvar = mu.float(), logvar.float()
        z = mu + torch.randn(mu.shape, generator=gen) * torch.exp(0.5 * logvar)
        recon.append(model.likelihood.nll(model.decode(z), x))
        kl.append(0.5 * (mu.pow(2) + logvar.exp() - logvar - 1.0))
    kl_dims = torch.cat(kl).mean(0)
    return {"recon": float(torch.cat(recon).mean()), "kl": float(kl_dims.sum()),
            "kl_per_dim": [round(float(v), 4) for v in kl_dims],
            "active_dims": int((kl_dims > ACTIVE_KL).sum())}


def evaluate_run(run_dir: Path, data, precision: str) -> dict:
    from untwine.metrics import evaluate
    from untwine.train.run import load_run

    handle = load_run(run_dir, data=data)
    model = handle.model.float().eval()
    t0 = time.perf_counter()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed")

    def representation(x):
        with autocast:  # encoding is most of the scoring time; the codes come back as float32
            return model.representation(torch.as_tensor(x)).float()

    scores = evaluate(representation, data, metrics=EVAL_METRICS, seed=0)
    return {"step": handle.step, **heldout_elbo_terms(model, data), "metrics": scores,
            "eval_seconds": time.perf_counter() - t0}


def last_controller_values(csv_path: Path) -> dict:
    from untwine.viz import read_log
    log = read_log(csv_path)
    out = {}
    for name in ("beta", "set_point", "kl"):
        if name in log and log[name].notna().any():
            out[f"final_{name}"] = float(log[name].dropna().iloc[-1])
    return out


def keep_small_outputs(method: str, run_dir: Path) -> None:
    """Copy what is worth committing (no checkpoints): log CSV, config, pictures except the GIF."""
    dest = RESULTS / method
    dest.mkdir(parents=True, exist_ok=True)
    for src in [run_dir / "config.yaml", run_dir / "logs" / "train.csv", *sorted((run_dir / "pictures").glob("*.png"))]:
        if src.is_file():
            shutil.copy2(src, dest / src.name)


def headline(result: dict, metric: str, key: str) -> float:
    return float(result["metrics"].get(metric, {}).get(key, float("nan")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--precision", default="bf16-mixed", help="32-true or bf16-mixed (CPU autocast)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--evaluate-only", action="store_true", help="score the runs already in runs/")
    parser.add_argument("--progress", action="store_true", help="show the engine's live progress bar")
    parser.add_argument("--summary", action="store_true", help="only print the table of the results so far")
    args = parser.parse_args()
    if args.summary:
        print_summary()
        return

    torch.set_num_threads(args.threads)
    from untwine.data.registry import get_dataset
    from untwine.train.config import load_config
    from untwine.train.engine import train

    data = get_dataset("dsprites")
    # seed 0 is the table's run (with its pictures); other seeds add a results file each, for the spread
    suffix = "" if args.seed == 0 else f"-seed{args.seed}"
    results_path = RESULTS / f"results{suffix}.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    RESULTS.mkdir(parents=True, exist_ok=True)
    for method in args.methods:
        run_dir = RUNS / f"{method}{suffix}"
        entry = results.get(method, {}) if args.evaluate_only else {}
        if not args.evaluate_only:
            if run_dir.exists():
                shutil.rmtree(run_dir)
            preset, _ = METHODS[method]
            cfg = load_config(preset, overrides_for(method, args))
            print(f"[{time.strftime('%H:%M:%S')}] training {method}: {preset} {' '.join(overrides_for(method, args))}",
                  flush=True)
            summary = train(cfg, run_dir=run_dir, data=data)
            entry = {"preset": preset, "overrides": overrides_for(method, args),
                     "train_wall_seconds": summary["wall_seconds"], "images_per_second": summary["images_per_second"]}
        entry.update(evaluate_run(run_dir, data, args.precision))
        entry.update(last_controller_values(run_dir / "logs" / "train.csv"))
        # merge into the file as it is now, so that runs of other methods in parallel are kept
        results = json.loads(results_path.read_text()) if results_path.is_file() else {}
        results[method] = entry
        if not suffix:
            keep_small_outputs(method, run_dir)
        results["_meta"] = {"machine": machine(), "threads": args.threads, "steps": args.steps,
                            "batch_size": args.batch_size, "seed": args.seed, "precision": args.precision,
                            "eval_metrics": EVAL_METRICS}
        tmp = results_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(results, indent=1))
        os.replace(tmp, results_path)
        print(f"[{time.strftime('%H:%M:%S')}] {method}: recon {entry['recon']:.1f} KL {entry['kl']:.2f} "
              f"MIG {headline(entry, 'mig', 'mig'):.3f}", flush=True)

    print_summary()


def print_summary() -> None:
    """One row per method and seed, over every results*.json written so far."""
    rows = []
    files = sorted(RESULTS.glob("results*.json"), key=lambda p: json.loads(p.read_text())["_meta"]["seed"])
    for method in METHODS:
        for path in files:
            r = json.loads(path.read_text()).get(method)
            if r is None:
                continue
            seed = json.loads(path.read_text())["_meta"]["seed"]
            rows.append([method, seed, r["step"], f"{r.get('train_wall_seconds', float('nan')):.0f}",
                         f"{r['recon']:.1f}", f"{r['kl']:.2f}", sum(v > ACTIVE_KL for v in r["kl_per_dim"]),
                         f"{headline(r, 'mig', 'mig'):.3f}",
                         f"{headline(r, 'factor_vae', 'eval_accuracy'):.3f}",
                         f"{headline(r, 'dci', 'disentanglement'):.3f}", f"{headline(r, 'dci', 'completeness'):.3f}",
                         f"{headline(r, 'dci', 'informativeness_test'):.3f}",
                         f"{r['final_beta']:.3g}" if "final_beta" in r else "",
                         f"{r['final_set_point']:.2f}" if "final_set_point" in r else ""])
    print(print_table("procedural dSprites: final models of reproduce_dsprites.py",
                      ["method", "seed", "steps", "train s", "recon (nats)", "KL (nats)", "active dims", "MIG",
                       "FactorVAE", "DCI D", "DCI C", "DCI I", "final beta", "final C"], rows))
    means = []
    for method in METHODS:
        runs = [r for r in (json.loads(p.read_text()).get(method) for p in files) if r is not None]
        if not runs:
            continue
        cols = [[r["recon"] for r in runs], [r["kl"] for r in runs],
                [headline(r, "mig", "mig") for r in runs], [headline(r, "factor_vae", "eval_accuracy") for r in runs],
                [headline(r, "dci", "disentanglement") for r in runs],
                [headline(r, "dci", "informativeness_test") for r in runs]]
        means.append([method, len(runs)] + [f"{np.mean(c):.3g} +- {np.std(c):.2g}" for c in cols])
    print(print_table("mean +- std over seeds", ["method", "seeds", "recon (nats)", "KL (nats)", "MIG", "FactorVAE",
                                                   "DCI D", "DCI I"], means))


if __name__ == "__main__":
    main()
