"""Weakly supervised pairs (Locatello et al. 2020) against beta-VAE at the same beta, steps and seeds.

    .venv/bin/python benchmarks/bench_weak_pairs.py --dataset dsprites --seeds 0 1 2
    .venv/bin/python benchmarks/bench_weak_pairs.py --dataset shapes3d --seeds 0
    .venv/bin/python benchmarks/bench_weak_pairs.py --dataset dsprites --summarise   # the table from saved results

Per seed, through the real engine and the shipped presets (untwine.train.train), all at beta 1, the
same steps, batch (64 images: 32 pairs for the pair models), Adam learning rate and seed:
  betavae: `<dataset>-betavae` on single images (the unsupervised baseline);
  gvae, mlvae_pairs (k known: the number of changed factors read from the sampler),
  adagvae, adamlvae (k unknown: the adaptive threshold), each with batch.k=1 (one factor changes
  per pair) and batch.k=-1 (1 to latent_dim - 1 factors change, Locatello et al.'s default).
Scores on the final weights (encoder mean), smaller than the full protocol so that a run's scoring
costs about a minute and a half here: MIG (10,000 points), DCI (fast mode, 5,000 / 2,500), BetaVAE
score (500 / 250 votes of 64 pairs), FactorVAE score (300 / 150 votes of 64, variance from 5,000).
Runs live in runs/bench_weak_pairs/<dataset>/seed<k>/<model>/ (ignored by git) and are reused when
finished; per-seed JSON goes to benchmarks/results/weak_pairs/.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, print_table, train_once  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs" / "bench_weak_pairs"
RESULTS = ROOT / "benchmarks" / "results" / "weak_pairs"

MODELS = {  # name -> (preset, overrides); every one at beta 1
    "betavae": ("{ds}-betavae", ["objective.beta=1"]),
    **{f"{m} k={k}": (f"{{ds}}-{m.replace('_', '-')}", ["objective.beta=1", f"batch.k={k}"])
       for m in ("gvae", "mlvae_pairs", "adagvae", "adamlvae") for k in (1, -1)},
}
METRICS = {"mig": {"num_train": 10000},
           "dci": {"num_train": 5000, "num_test": 2500, "mode": "fast"},
           "beta_vae": {"num_train": 500, "num_eval": 250},
           "factor_vae": {"num_train": 300, "num_eval": 150, "num_variance_estimate": 5000}}
COLUMNS = [("mig", "mig", "mig"), ("dci_d", "dci", "disentanglement"), ("dci_c", "dci", "completeness"),
           ("dci_i", "dci", "informativeness_test"), ("betavae", "beta_vae", "eval_accuracy"),
           ("factorvae", "factor_vae", "eval_accuracy")]


def overrides(args, seed: int) -> list[str]:
    return [f"trainer.steps={args.steps}", f"trainer.seed={seed}", "optim.batch_size=64", f"optim.lr={args.lr}",
            "trainer.eval_preset=none", "trainer.eval_every=0", f"trainer.log_every={max(1, args.steps // 100)}",
            f"trainer.ckpt_every={args.steps}", "trainer.pictures=true", "trainer.report=false",
            "trainer.progress=false", "trainer.threads=1", "trainer.precision=auto", "trainer.channels_last=true"]


def score(run_dir: Path) -> dict:
    from untwine.metrics import evaluate
    from untwine.train import load_run
    run = load_run(run_dir)
    with torch.no_grad():
        scores = evaluate(run.model.representation, run.data, metrics=list(METRICS), seed=0, overrides=METRICS)
    summary = json.loads((run_dir / "summary.json").read_text())
    out = {name: float(scores[metric][key]) for name, metric, key in COLUMNS}
    out["train_img_s"] = float(summary["images_per_second"])
    out["final_terms"] = summary.get("final_terms")
    return out


def run_seed(args, seed: int) -> None:
    ds = args.dataset
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{ds}-seed{seed}.json"
    result = json.loads(path.read_text()) if path.is_file() else {
        "dataset": ds, "seed": seed, "steps": args.steps, "lr": args.lr, "machine": machine(), "models": {}}
    if result["steps"] != args.steps or result["lr"] != args.lr:
        raise SystemExit(f"{path} holds runs of {result['steps']} steps at lr {result['lr']}; move it away to "
                         f"measure {args.steps} steps at lr {args.lr}")
    for name in args.models or list(MODELS):
        if name in result["models"]:
            continue
        preset, extra = MODELS[name]
        run_dir = RUNS / ds / f"seed{seed}" / name.replace(" ", "_").replace("=", "")
        train_once(preset.format(ds=ds), overrides(args, seed) + extra, run_dir)
        torch.set_num_threads(1)
        result["models"][name] = score(run_dir)
        print(f"seed {seed} {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in result["models"][name].items()
                                                   if isinstance(v, float)), flush=True)
        # after each model (an interruption loses one), merged with what another process running other
        # --models of the same seed wrote meanwhile
        if path.is_file():
            result["models"] = {**json.loads(path.read_text())["models"], **result["models"]}
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(result, indent=1))
        os.replace(tmp, path)


def summarise(ds: str) -> None:
    files = sorted(RESULTS.glob(f"{ds}-seed*.json"))
    if not files:
        raise SystemExit(f"no results for {ds} in {RESULTS}")
    runs = [json.loads(f.read_text()) for f in files]
    names = [n for n in MODELS if any(n in r["models"] for r in runs)]
    cols = [c[0] for c in COLUMNS] + ["train_img_s"]
    rows = []
    for name in names:
        per_seed = [r["models"][name] for r in runs if name in r["models"]]
        cells = [name, str(len(per_seed))]
        for c in cols:
            vals = [p[c] for p in per_seed]
            cells.append(f"{np.mean(vals):.3f}" + (f" ± {np.std(vals):.3f}" if len(vals) > 1 else "")
                         if c != "train_img_s" else f"{np.mean(vals):.0f}")
        rows.append(cells)
    title = (f"weak pairs on procedural {ds}: beta 1, {runs[0]['steps']} steps of 64 images, Adam {runs[0]['lr']:g}, "
             f"seeds {sorted(r['seed'] for r in runs)}")
    md = print_table(title, ["model", "seeds", *cols], rows)
    (RESULTS / f"{ds}-table.md").write_text(f"{title}\n\nmachine: {runs[0]['machine']}\n\n{md}\n")
    print(f"wrote {RESULTS / f'{ds}-table.md'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="dsprites", choices=("dsprites", "shapes3d"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=None)
    p.add_argument("--summarise", action="store_true", help="only write the table of saved results")
    args = p.parse_args()
    if args.summarise:
        summarise(args.dataset)
        return
    torch.set_num_threads(1)
    for seed in args.seeds:
        run_seed(args, seed)
    summarise(args.dataset)


if __name__ == "__main__":
    main()
