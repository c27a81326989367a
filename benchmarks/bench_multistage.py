"""The multi-stage benchmark: stage 1 alone against stage 1 + each stage-2 variant, at one CPU budget.

    .venv/bin/python benchmarks/bench_multistage.py --dataset dsprites --seeds 0 1 2
    .venv/bin/python benchmarks/bench_multistage.py --dataset shapes3d --seeds 0 1 2 --steps 2000 --stage2-steps 2000 \
        --models betavae1 betavae4 betatcvae6 dynamicvae tcvae+vae tcvae+gmm
    .venv/bin/python benchmarks/bench_multistage.py --dataset shapes3d --seeds 0 --steps 2000 --stage2-steps 2000 \
        --models dynamicvae+vae tcvae+vae+consistency
    .venv/bin/python benchmarks/bench_multistage.py --dataset shapes3d --tag=-s6000 --seeds 0 --steps 6000 \
        --stage2-steps 2000 --models tcvae+vae                                   # a longer stage 1
    .venv/bin/python benchmarks/bench_multistage.py --dataset dsprites --summarise   # tables from saved results

Per seed, through the real engine and the shipped presets (untwine.train.train):
  stage 1: beta-VAE (beta 1: the reconstruction a penalty gives up), beta-VAE (beta 4), beta-TCVAE
  (beta 6), DynamicVAE (set point compressed into the budget);
  stage 2 on the beta-TCVAE: ms-vae, ms-gan, ms-flow, ms-gmm; and ms-vae on the DynamicVAE.
Every model is scored on the same held-out images: reconstruction BCE (nats/image) and the BCE
above the images' entropy (bce_excess: what a model can remove; equal to the BCE on binary dSprites,
thousands of nats below it on Shapes3D's grey levels), MSE, PSNR, SSIM; ELBO where defined;
Frechet distance and precision/recall of samples in the features of
untwine's factor classifier; factor fidelity (the classifier reads the input's true factors from
reconstructions); w-invariance (z fixed, w resampled: the share of predicted factors that change,
also on the factors stage 1 holds) and code invariance (the share of stage 1's code variance w moves
when stage 1 re-reads the combined images); MIG, DCI and the FactorVAE score of the
representation (stage 1's for a combined model: checked equal); training images/s of each run and
sampling images/s of each model.

Runs live in runs/bench_multistage/<dataset><tag>/seed<k>/<model>/ (ignored by git) and are reused
when finished; small results go to benchmarks/results/multistage/.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, print_table, train_once  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs" / "bench_multistage"
RESULTS = ROOT / "benchmarks" / "results" / "multistage"
PAPER_STEPS = 2_000_000

STAGE1 = {  # name -> (preset, overrides)
    "betavae1": ("{ds}-betavae", ["objective.beta=1"]),
    "betavae4": ("{ds}-betavae", ["objective.beta=4"]),
    "betatcvae6": ("{ds}-betatcvae", ["objective.beta=6"]),
    "dynamicvae": ("{ds}-dynamicvae", ["controller.c_max=20"]),
}
STAGE2 = {  # name -> (preset, stage-1 name, overrides)
    "tcvae+vae": ("ms-vae", "betatcvae6", []),
    "tcvae+gan": ("ms-gan", "betatcvae6", []),
    "tcvae+flow": ("ms-flow", "betatcvae6", []),
    "tcvae+gmm": ("ms-gmm", "betatcvae6", []),
    "dynamicvae+vae": ("ms-vae", "dynamicvae", []),
    # the code-consistency term (untwine.multistage.model): w may not move what stage 1 encodes
    "tcvae+vae+consistency": ("ms-vae", "betatcvae6", ["stage1.consistency={consistency}"]),
}
METRICS = {"mig": {"num_train": 10000},
           "dci": {"num_train": 5000, "num_test": 2500, "mode": "fast"},
           "factor_vae": {"num_train": 500, "num_eval": 250, "num_variance_estimate": 5000}}


def common_overrides(args, steps: int) -> list[str]:
    return [f"trainer.steps={steps}", f"trainer.seed={args.seed}", f"optim.batch_size={args.batch_size}",
            f"optim.lr={args.lr}", "trainer.eval_preset=none", "trainer.multistage_eval=none", "trainer.eval_every=0",
            f"trainer.log_every={max(1, steps // 100)}", f"trainer.ckpt_every={steps}", "trainer.pictures=true",
            "trainer.report=false", f"trainer.progress={'true' if args.progress else 'false'}",
            f"trainer.threads={args.threads}"]


@torch.no_grad()
def sampling_rate(model, n: int = 256, repeats: int = 3) -> float:
    times = []
    for r in range(repeats):
        g = torch.Generator().manual_seed(r)
        t0 = time.perf_counter()
        model.sample(n, generator=g) if hasattr(model, "stage2") else \
            model.likelihood.mean(model.decode(torch.randn(n, model.latent_dim, generator=g)))
        times.append(time.perf_counter() - t0)
    return n / statistics.median(times)


def score(run_dir: Path, classifier, args) -> dict:
    from untwine.metrics import evaluate
    from untwine.multistage import evaluation as ev
    from untwine.train import load_run
    run = load_run(run_dir)
    model, data = run.model, run.data
    out = {"train_images_per_second": json.loads((run_dir / "summary.json").read_text())["images_per_second"]}
    recon = ev.evaluate_reconstruction(model, data, n=args.n, seed=1000)
    fid = ev.factor_fidelity(model, data, classifier, n=args.n, seed=1000)
    combined = ev.is_combined(model)
    stage = "combined" if combined else "stage1"
    out["reconstruction"] = recon[stage]
    out["reconstruction_stage1"] = recon["stage1"]
    out["factor_accuracy"] = fid[stage]
    out["factor_accuracy_real"] = fid["real"]
    out["samples"] = ev.sample_quality(model, data, classifier, n=args.n, seed=1000, stage=stage)
    if combined:
        out["w_invariance"] = ev.w_invariance(model, data, classifier, n=min(args.n, 256), seed=1000)
        out["code_invariance"] = ev.code_invariance(model, data, n=min(args.n, 256), seed=1000)
    out["sampling_images_per_second"] = sampling_rate(model)
    with torch.no_grad():
        scores = evaluate(model.encode, data, metrics=METRICS, seed=0)
    out["metrics"] = {k: v for k, v in scores.items() if not k.startswith("_")}
    return out


def entropy_floor(ds: str, n: int) -> float:
    """The mean entropy (nats per image) of the n held-out images every model is scored on: the BCE
    no reconstruction gets below (0 on binary dSprites, thousands of nats on Shapes3D)."""
    from untwine.data.registry import get_dataset
    from untwine.multistage import evaluation as ev
    data = get_dataset(ds)
    x = data.batch(ev.evaluation_indices(data, n, 1000))   # 1,000 images: 50 MB, one pass
    return ev.reconstruction_metrics(x, x)["bce_floor"]


def fill_bce_excess(results: dict, floor) -> None:
    """Adds bce_floor / bce_excess to entries scored before reconstruction_metrics reported them
    (same images, so the same floor); `floor` is called only when some entry needs it."""
    value = None
    for entry in results["models"].values():
        for key in ("reconstruction", "reconstruction_stage1"):
            rec = entry.get(key) or {}
            if "bce" in rec and "bce_excess" not in rec:
                value = floor() if value is None else value
                rec["bce_floor"], rec["bce_excess"] = value, rec["bce"] - value


def headline(result: dict) -> dict:
    m = result["metrics"]
    rec = result["reconstruction"]
    # a bijective stage 2 (the flow) reconstructs exactly by construction: its reconstruction
    # numbers measure nothing learnt, so they are left out (n/a), not reported as a target met
    applicable = rec.get("reconstruction_applicable", True) is not False
    row = {"bce": rec.get("bce") if applicable else None, "bce_excess": rec.get("bce_excess") if applicable else None,
           "mse": rec.get("mse") if applicable else None, "psnr": rec.get("psnr") if applicable else None,
           "ssim": rec.get("ssim") if applicable else None,
           "elbo_at_means": rec.get("elbo"),   # results scored before the sampled bounds (not a bound)
           "elbo_sampled": rec.get("elbo_sampled"), "iwae": rec.get("iwae"),
           "log_p_x_given_y": rec.get("log_p_x_given_y"),
           "fd": result["samples"]["fd"], "precision": result["samples"]["precision"],
           "recall": result["samples"]["recall"],
           "fidelity": result["factor_accuracy"]["mean"] if applicable else None,
           "w_change": (result.get("w_invariance") or {}).get("overall"),
           "w_held": (result.get("w_invariance") or {}).get("held_overall"),
           "code_var": (result.get("code_invariance") or {}).get("overall"),
           "mig": _score(m.get("mig"), "mig"), "dci_d": _score(m.get("dci"), "disentanglement"),
           "factorvae": _score(m.get("factor_vae"), "eval_accuracy"), "train_img_s": result["train_images_per_second"],
           "sample_img_s": result["sampling_images_per_second"]}
    return row


def _score(entry, key: str):
    return None if entry is None else float(entry[key])


def run_seed(args) -> dict:
    from untwine.data.registry import get_dataset
    from untwine.multistage.classifier import get_factor_classifier
    ds = args.dataset
    base = RUNS / f"{ds}{args.tag}" / f"seed{args.seed}"
    s1_steps, s2_steps = args.steps, args.stage2_steps
    wanted = set(args.models or [*STAGE1, *STAGE2])
    if not args.score_only:
        for name, (preset, extra) in STAGE1.items():
            if name not in wanted and not any(STAGE2[m][1] == name for m in wanted if m in STAGE2):
                continue
            extra = list(extra)
            if name == "dynamicvae":
                extra.append(f"controller.time_scale={s1_steps / PAPER_STEPS:.8g}")
            train_once(preset.format(ds=ds), common_overrides(args, s1_steps) + extra, base / name)
        for name, (preset, s1, overrides) in STAGE2.items():
            if name not in wanted:
                continue
            extra = [f"stage1={base / s1}", *(o.format(consistency=args.consistency) for o in overrides)]
            train_once(preset, common_overrides(args, s2_steps) + extra, base / name)
    if args.train_only:
        return {}
    torch.set_num_threads(1)  # scoring shares the CPU with training runs
    classifier = get_factor_classifier(get_dataset(ds), progress=args.progress)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{ds}{args.tag}-seed{args.seed}.json"
    previous = json.loads(path.read_text())["models"] if path.is_file() else {}  # scored earlier: kept
    results = {"dataset": ds, "seed": args.seed, "stage1_steps": s1_steps, "stage2_steps": s2_steps,
               "batch_size": args.batch_size, "n": args.n, "machine": machine(),
               "classifier_accuracy": classifier.accuracy, "models": previous}
    fill_bce_excess(results, lambda: entropy_floor(ds, args.n))
    for name in [m for m in [*STAGE1, *STAGE2] if (base / m / "summary.json").is_file() and m in wanted
                 and not (args.score_only and m in results["models"])]:
        print(f"score {name}", flush=True)
        results["models"][name] = score(base / name, classifier, args)
        path.write_text(json.dumps(results, indent=1))  # after each model: an interruption loses one
    print(f"wrote {path}")
    return results


def summarise(ds: str, tag: str = "") -> None:
    files = sorted(RESULTS.glob(f"{ds}{tag}-seed*.json"))
    if not files:
        raise SystemExit(f"no results for {ds}{tag} in {RESULTS}")
    runs = [json.loads(f.read_text()) for f in files]
    for r in runs:
        fill_bce_excess(r, lambda r=r: entropy_floor(ds, r.get("n", 1000)))
    names = list(dict.fromkeys(n for r in runs for n in r["models"]))
    cols = ["bce", "bce_excess", "mse", "psnr", "ssim", "elbo_at_means", "elbo_sampled", "iwae", "log_p_x_given_y",
            "fd", "precision", "recall", "fidelity", "w_change",
            "w_held", "code_var", "mig", "dci_d", "factorvae", "train_img_s", "sample_img_s"]
    rows, means = [], {}
    for name in names:
        per_seed = [headline(r["models"][name]) for r in runs if name in r["models"]]
        cells, mean_row = [f"{name} ({len(per_seed)})"], {}
        for c in cols:
            vals = [p[c] for p in per_seed if p[c] is not None]
            if not vals:
                cells.append("-")
                continue
            m = float(np.mean(vals))
            mean_row[c] = m
            sd = float(np.std(vals)) if len(vals) > 1 else None
            cells.append(f"{m:.3g}" + (f" ± {sd:.2g}" if sd is not None else ""))
        rows.append(cells)
        means[name] = mean_row
    title = (f"multi-stage on procedural {ds}: {len(runs)} seed(s), stage 1 {runs[0]['stage1_steps']} steps, "
             f"stage 2 {runs[0]['stage2_steps']} steps, batch {runs[0]['batch_size']}")
    md = print_table(title, ["model (seeds)", *cols], rows)
    (RESULTS / f"{ds}{tag}-table.md").write_text(f"{title}\n\nmachine: {runs[0]['machine']}\n\n{md}\n")
    from untwine.viz.multistage import plot_tradeoff
    # Each combined model is joined to its own stage 1 averaged over the same seeds (a model run on
    # fewer seeds gets its own stage-1 point), so the line shows the gain at identical disentanglement.
    def mean_over(name, seeds):
        per_seed = [headline(r["models"][name]) for r in runs if r["seed"] in seeds and name in r["models"]]
        vals = {c: [p[c] for p in per_seed if p[c] is not None] for c in ("bce_excess", "mig")}
        return {c: float(np.mean(v)) for c, v in vals.items() if v}

    seeds_of = {name: [r["seed"] for r in runs if name in r["models"]] for name in names}
    pts, extra = [], {}
    for name in names:
        m = means[name]
        if "bce_excess" not in m or "mig" not in m:
            continue
        if "+" not in name:
            group = "beta-VAE(1)" if name == "betavae1" else "stage 1"
            pts.append({"name": name, "mig": m["mig"], "bce_excess": m["bce_excess"], "group": group})
            continue
        base = name.split("+")[0].replace("tcvae", "betatcvae6")
        anchor = base
        if base in seeds_of and seeds_of[base] != seeds_of[name]:
            anchor = f"{base} (seed {', '.join(map(str, seeds_of[name]))})"
            if anchor not in extra:
                extra[anchor] = {"name": anchor, **mean_over(base, seeds_of[name]), "group": "stage 1"}
        pts.append({"name": name, "mig": m["mig"], "bce_excess": m["bce_excess"], "group": "combined",
                    "pair": anchor if (anchor in extra or anchor in means) else None})
    pts = [p for p in pts if p["group"] != "combined"] + list(extra.values()) + \
        [p for p in pts if p["group"] == "combined"]
    plot_tradeoff(pts, RESULTS / f"{ds}{tag}-tradeoff.png", title=f"reconstruction against MIG ({ds}{tag})",
                  y_key="bce_excess")
    print(f"wrote {RESULTS / f'{ds}{tag}-table.md'} and {RESULTS / f'{ds}{tag}-tradeoff.png'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="dsprites", choices=("dsprites", "shapes3d"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--steps", type=int, default=3000, help="stage-1 steps")
    p.add_argument("--stage2-steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--n", type=int, default=1000, help="held-out images per score")
    p.add_argument("--consistency", type=float, default=1.0,
                   help="stage1.consistency of the tcvae+vae+consistency model")
    p.add_argument("--threads", default="auto")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--tag", default="", help="a suffix of the run and result names (e.g. -s6000 for another budget), "
                                             "so that budgets do not share runs or tables")
    p.add_argument("--summarise", action="store_true", help="only print the tables of saved results")
    p.add_argument("--train-only", action="store_true", help="train the runs, score nothing")
    p.add_argument("--score-only", action="store_true", help="score the finished runs, train nothing")
    p.add_argument("--models", nargs="+", choices=[*STAGE1, *STAGE2], default=None,
                   help="a subset of the models (default: all); a stage-2 model brings its stage 1")
    args = p.parse_args()
    if not args.summarise:
        for seed in args.seeds:
            args.seed = seed
            run_seed(args)
    if not args.train_only:
        summarise(args.dataset, args.tag)


if __name__ == "__main__":
    main()
