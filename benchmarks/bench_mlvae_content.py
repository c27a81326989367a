"""Grouped ML-VAE on procedural dSprites or Shapes3D: content and style probes on content combinations never
seen in training.

    .venv/bin/python benchmarks/bench_mlvae_content.py [--content position|shape-scale] [--minutes 10] [--seed 0]
    .venv/bin/python benchmarks/bench_mlvae_content.py --dataset shapes3d --content object [--lr 1e-3]

Training: the shipped preset `<dataset>-mlvae` (conv64, 10 latents of which --content-dim are content,
beta 1, 16 groups of 4 = 64 images a step, Adam --lr (preset 1e-4), precision=auto) through untwine.train.train,
with the groups' shared factors set by --content and batch.holdout_fraction (default 0.2): the
engine's GroupSampler draws every training group's content from the training part of
split_content_combinations(space, content, 0.2, holdout_seed) only, so the held-out content
combinations are never seen; the script checks that on the sampler's first batches. Training stops
after --minutes of wall time (trainer.max_seconds), one torch thread.

Evaluation: untwine.metrics.content_style.evaluate_content_style(model, data, config=cfg) on the final
weights, with the split rebuilt from the run's own config (content_split_from_config) and checked
against the content the run trained on (it refuses a split whose test content was trained on): probes
(logistic regression, a linear readout, and gradient-boosted trees, a nonlinear one) fitted on --groups groups of --members members with training content and
scored on as many groups with held-out content; group retrieval on the held-out groups; content
accuracy against the number of members accumulated (1..members), drawn with
viz.groups.plot_accuracy_vs_members; a swap grid of 8 held-out groups. One seed. Two chance levels
beside the "near chance" scores: the majority training class's rate (biased low on held-out content)
and the permutation baseline (the probe fitted on permuted training labels).
Outputs (small) go to --out: mlvae_content_<content>.json / .md, accuracy_vs_members_<content>[_gbt].png,
swap_grid_<content>.png, and the run's train.csv.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, print_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONTENTS = {"dsprites": {"position": ["posX", "posY"], "shape-scale": ["shape", "scale"]},
            "shapes3d": {"object": ["object_hue", "scale", "shape"], "hues": ["floor_hue", "wall_hue", "object_hue"]}}


def check_holdout_unseen(cfg, data, objective_batches: int = 50) -> int:
    """Draw the engine's first training batches and fail if any group's content is held out;
    returns the number of groups checked."""
    from untwine.metrics.content_style import split_content_combinations
    from untwine.train.batches import build_sampler
    from untwine.train.engine import build_objective_from

    b = cfg.batch
    split = split_content_combinations(data.factor_space, b.shared_factors, b.holdout_fraction, b.holdout_seed)
    sampler = build_sampler(cfg, data, build_objective_from(cfg, len(data)), cfg.trainer.seed, "cpu")
    held = {tuple(c) for c in split.test.tolist()}
    seen = 0
    for _ in range(objective_batches):
        content = next(sampler).classes[:, :, split.factors].numpy()  # (G, M, S)
        if not (content == content[:, :1]).all():
            raise AssertionError("members of a training group do not share their content")
        leaked = [tuple(c) for c in content[:, 0].tolist() if tuple(c) in held]
        if leaked:
            raise AssertionError(f"held-out content {leaked[0]} drawn for training")
        seen += len(content)
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description="ML-VAE content/style probes on held-out content combinations")
    parser.add_argument("--dataset", choices=list(CONTENTS), default="dsprites")
    parser.add_argument("--content", choices=sorted({c for d in CONTENTS.values() for c in d}), default=None,
                        help="shared factor set (dsprites: position, shape-scale; shapes3d: object, hues)")
    parser.add_argument("--lr", type=float, default=None, help="Adam learning rate (default: the preset's)")
    parser.add_argument("--content-dim", type=int, default=3)
    parser.add_argument("--minutes", type=float, default=10.0, help="wall-clock training budget")
    parser.add_argument("--holdout", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--groups", type=int, default=500, help="evaluation groups per side (train / held-out)")
    parser.add_argument("--members", type=int, default=5, help="members per evaluation group")
    parser.add_argument("--run-dir", type=Path, default=None,
                        help="keep the run here (a finished run there is scored again, not retrained); default: a "
                             "temporary directory")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "grouped")
    args = parser.parse_args()

    torch.set_num_threads(1)
    from untwine.data.registry import get_dataset
    from untwine.metrics.content_style import content_split_from_config, evaluate_content_style, \
        sample_groups_with_content
    from untwine.train.config import load_config
    from untwine.train.engine import train
    from untwine.train.run import load_run
    from untwine.viz.groups import plot_accuracy_vs_members, save_swap_grid

    args.content = args.content or next(iter(CONTENTS[args.dataset]))
    if args.content not in CONTENTS[args.dataset]:
        parser.error(f"--content {args.content} is not defined for {args.dataset}; "
                     f"choose from {sorted(CONTENTS[args.dataset])}")
    factors = CONTENTS[args.dataset][args.content]
    data = get_dataset(args.dataset)
    lr = [f"optim.lr={args.lr}"] if args.lr is not None else []
    cfg = load_config(f"{args.dataset}-mlvae", [*lr,
        f"batch.shared_factors=[{','.join(factors)}]", f"batch.holdout_fraction={args.holdout}",
        "batch.holdout_seed=0", f"objective.content_dim={args.content_dim}", f"trainer.seed={args.seed}",
        "trainer.steps=1000000", f"trainer.max_seconds={60 * args.minutes}", "trainer.precision=auto",
        "trainer.channels_last=true", "trainer.threads=1", "trainer.eval_preset=none", "trainer.eval_every=0",
        "trainer.pictures=true", "trainer.report=false", "trainer.progress=false", "trainer.log_every=50",
        "trainer.ckpt_every=1000000"])
    checked = check_holdout_unseen(cfg, data)
    split = content_split_from_config(cfg, data)   # the run's own split: what its sampler held out
    print(f"machine: {machine()}")
    print(f"content {factors}: {len(split.train)} training / {len(split.test)} held-out combinations; "
          f"{checked} training groups checked, none with held-out content")

    args.out.mkdir(parents=True, exist_ok=True)
    tag = args.content if args.dataset == "dsprites" else f"{args.dataset}_{args.content}"
    tag += "" if args.lr is None else f"_lr{args.lr:g}"
    tag += "" if args.content_dim == 3 else f"_c{args.content_dim}"
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.run_dir or Path(tmp) / "run"
        if (run_dir / "summary.json").is_file():
            summary = json.loads((run_dir / "summary.json").read_text())
            print(f"scoring the finished run {run_dir} again")
        else:
            summary = train(cfg, run_dir=run_dir, data=data)
        print(f"trained {summary['steps']} steps in {summary['wall_seconds']:.0f} s "
              f"({summary['images_per_second']:.0f} images/s, {summary['precision']}); final terms "
              f"{ {k: round(v, 2) for k, v in summary['final_terms'].items()} }", flush=True)
        model = load_run(run_dir, data=data).model
        t0 = time.perf_counter()
        scores = evaluate_content_style(model, data, split, args.content_dim, num_groups=args.groups,
                                        group_size=args.members, seed=args.seed, probes=("logistic", "gbt"),
                                        config=cfg)
        if scores["content_holdout"]["verified"] is not True:
            raise AssertionError(f"the test content was not checked as unseen: {scores['content_holdout']}")
        eval_seconds = time.perf_counter() - t0
        for probe, suffix in (("logistic", ""), ("gbt", "_gbt")):
            plot_accuracy_vs_members(scores["by_probe"][probe]["accuracy_vs_members"],
                                     args.out / f"accuracy_vs_members_{tag}{suffix}.png", chance=scores["chance_content"],
                                     title=f"content ({', '.join(factors)}), unseen groups, {probe}")
        rng = np.random.default_rng(args.seed + 1)
        classes = sample_groups_with_content(data.factor_space, split.test, split.factors, 8, 4, rng)
        g, m, k = classes.shape
        x = data.batch(data.factor_space.index_of(classes.reshape(g * m, k)))  # (G * M, C, H, W)
        save_swap_grid(model, x.reshape(g, m, *x.shape[1:]), args.content_dim, args.out / f"swap_grid_{tag}.png")
        shutil.copy(run_dir / "logs" / "train.csv", args.out / f"train_{tag}.csv")

    result = dict(machine=machine(), dataset=args.dataset, lr=cfg.optim.lr, content=factors, content_dim=args.content_dim, seed=args.seed,
                  holdout_fraction=args.holdout, train_combinations=len(split.train),
                  heldout_combinations=len(split.test), heldout_groups_checked=checked,
                  steps=summary["steps"], train_seconds=summary["wall_seconds"],
                  images_per_second=summary["images_per_second"], precision=summary["precision"],
                  final_terms=summary["final_terms"], eval_groups=args.groups, eval_members=args.members,
                  eval_seconds=eval_seconds, scores=scores)
    (args.out / f"mlvae_content_{tag}.json").write_text(json.dumps(result, indent=1))
    rows = []
    for prefix, s in (("", scores), ("gbt probe: ", scores["by_probe"]["gbt"])):
        rows += [[f"{prefix}{name}", s[key], s[f"chance_{kind}"], s[f"permutation_{kind}"], target,
                  " / ".join(f"{a:.3f}" for a in s[f"{key}_per_factor"])]
                 for name, key, kind, target in [
                     ("content from accumulated content code", "content_from_content", "content", ">= 0.95"),
                     ("content from style code", "content_from_style", "content", "near chance"),
                     ("style from style code", "style_from_style", "style", "high"),
                     ("style from content code", "style_from_content", "style", "near chance")]]
        if not prefix:
            rows.append(["group retrieval (nearest member's content)", scores["group_retrieval"]["retrieval"],
                         scores["group_retrieval"]["chance"], "", "high", ""])
        rows += [[f"{prefix}content accuracy, {mm} member(s) accumulated", a, s["chance_content"],
                  s["permutation_content"], "rising", ""]
                 for mm, a in zip(s["accuracy_vs_members"]["members"], s["accuracy_vs_members"]["accuracy"])]
    md = print_table(f"ML-VAE, content {factors}, held-out combinations ({len(split.test)} of "
                     f"{len(split.train) + len(split.test)}, checked unseen), {summary['steps']} steps, "
                     f"seed {args.seed}",
                     ["score", "value", "chance (majority)", "chance (permuted labels)", "target", "per factor"],
                     rows)
    print(md)
    (args.out / f"mlvae_content_{tag}.md").write_text(md + "\n")
    print(f"wrote {args.out}/mlvae_content_{tag}.json, .md, accuracy_vs_members_{tag}.png, swap_grid_{tag}.png "
          f"(evaluation {eval_seconds:.0f} s)")


if __name__ == "__main__":
    main()
