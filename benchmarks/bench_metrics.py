"""The full metric suite: untwine's evaluate() against disentanglement_lib's per-metric protocol.

    .venv/bin/python benchmarks/bench_metrics.py            # default protocol (about 16 minutes here)
    .venv/bin/python benchmarks/bench_metrics.py --quick    # the same, 1/5 of the samples on both sides (~4 min)
    .venv/bin/python benchmarks/bench_metrics.py --encoder conv64   # the standard conv encoder as representation
    .venv/bin/python benchmarks/bench_metrics.py --encoder trained:RUN_DIR   # a trained run's encoder mean

A 10-dimensional representation of procedural dSprites, computed from the 64x64 images by a fixed
encoder (--encoder moments, the default: image moments for position, size and orientation, a tiny
fixed random conv net for nuisance features and noise; --encoder conv64: the encoder mean of an
untrained, seeded untwine.nets conv64 VAE, about ten times the per-image cost; --encoder
trained:RUN_DIR: the encoder mean of a finished dSprites run, the representation users score) is scored, in the same run,
- by untwine.metrics.evaluate (each needed image encoded once, codes shared across metrics, fast DCI),
- by benchmarks/dlib_reference.py (each metric sampling and encoding on its own, GBT for DCI).
Printed: seconds each, the speed-up, images through the encoder each, and the scores side by side.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dlib_reference  # noqa: E402
from common import machine, print_table  # noqa: E402

from untwine.data.base import GroundTruthData  # noqa: E402

METRIC_NAMES = ["beta_vae", "factor_vae", "mig", "dci", "sap", "modularity_explicitness"]
QUICK = {  # --quick: the same protocols, smaller (both sides get the same sizes)
    "beta_vae": dict(num_train=1000, num_eval=500),
    "factor_vae": dict(num_train=1000, num_eval=500, num_variance_estimate=2000),
    "mig": dict(num_train=2000),
    "dci": dict(num_train=2000, num_test=1000),
    "sap": dict(num_train=2000, num_test=1000),
    "modularity_explicitness": dict(num_train=2000, num_test=1000),
}


def load_dsprites() -> GroundTruthData:
    """Procedural dSprites from the data engine (composed on demand, nothing cached)."""
    from untwine.data.registry import get_dataset
    return get_dataset("dsprites")


# -- the representation: a fixed image encoder with real per-image cost --------------------------------
class MomentEncoder(nn.Module):
    """10 codes from a 64x64 binary image: mass (size), centroid x and y, an x/y mixture, the
    orientation of the second moments (cos, sin of twice the angle), and four features of a tiny
    fixed random conv net; each standardised code then gets 0.3 x another standardised conv feature
    (deterministic noise). Standardisation constants are fixed once by calibrate()."""

    def __init__(self, seed: int = 0, noise: float = 0.3):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = nn.Sequential(nn.Conv2d(1, 8, 4, stride=4), nn.ReLU(), nn.Conv2d(8, 8, 4, stride=4), nn.ReLU(),
                                  nn.Flatten(), nn.Linear(128, 14))
        for p in self.conv.parameters():
            p.data = torch.randn(p.shape, generator=g) * 0.3
        self.noise = noise
        grid = torch.arange(64, dtype=torch.float32) / 63.0
        self.register_buffer("gx", grid[None, None, None, :])
        self.register_buffer("gy", grid[None, None, :, None])
        self.register_buffer("mean", torch.zeros(20))
        self.register_buffer("std", torch.ones(20))

    def calibrate(self, x: torch.Tensor) -> "MomentEncoder":
        with torch.no_grad():
            f = self.features(x)
            self.mean.copy_(f.mean(0))
            self.std.copy_(f.std(0).clamp_min(1e-6))
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 20): the 10 code features (6 moment features, 4 conv features), then 10 conv features
        used as noise."""
        mass = x.sum(dim=(1, 2, 3)).clamp_min(1.0)
        cx = (x * self.gx).sum(dim=(1, 2, 3)) / mass
        cy = (x * self.gy).sum(dim=(1, 2, 3)) / mass
        dx, dy = self.gx - cx[:, None, None, None], self.gy - cy[:, None, None, None]
        mxx, myy, mxy = ((x * d).sum(dim=(1, 2, 3)) / mass for d in (dx * dx, dy * dy, dx * dy))
        norm = (mxx + myy).clamp_min(1e-9)
        h = self.conv(x)
        signal = torch.stack([mass.sqrt(), cx, cy, 0.8 * cx + 0.6 * cy, (mxx - myy) / norm, 2 * mxy / norm], dim=1)
        return torch.cat([signal, h], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = (self.features(x) - self.mean) / self.std
        return f[:, :10] + self.noise * f[:, 10:]


def conv64_encoder(seed: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The encoder mean of an untrained conv64 VAE (disentanglement_lib's conv_encoder), seeded."""
    from untwine.nets import build_vae
    torch.manual_seed(seed)
    return build_vae("conv64", in_channels=1, latent_dim=10).eval().representation


def trained_encoder(run_dir: str, data: GroundTruthData) -> Callable[[torch.Tensor], torch.Tensor]:
    """The encoder mean of a finished untwine run on dSprites (weights from its safetensors checkpoint)."""
    from untwine.train import load_run
    from untwine.train.config import load_config
    trained_on = load_config(Path(run_dir) / "config.yaml").data.name
    if trained_on != data.name:
        raise SystemExit(f"--encoder trained:{run_dir}: the run is on {trained_on!r}; this benchmark scores "
                         f"{data.name!r}")
    run = load_run(Path(run_dir), data=data)
    return run.model.eval().representation


def build_encoder(name: str, data: GroundTruthData, seed: int) -> Callable[[torch.Tensor], torch.Tensor]:
    if name == "conv64":
        return conv64_encoder(seed)
    if name.startswith("trained:"):
        return trained_encoder(name.split(":", 1)[1], data)
    calib = data.batch(np.random.default_rng(123).integers(0, len(data), 4096))
    return MomentEncoder(seed=seed).calibrate(calib).eval()


class Counted:
    """A representation function that counts the images it encodes."""

    def __init__(self, fn):
        self.fn, self.encoded = fn, 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.encoded += int(x.shape[0])
        with torch.no_grad():
            return self.fn(x)


# -- untwine's side -------------------------------------------------------------------------------------
def run_untwine(encoder, data, quick: bool, seed: int, dci_mode: str = "fast"):
    from untwine.metrics import evaluate
    rep = Counted(encoder)
    overrides = {k: dict(v) for k, v in (QUICK if quick else {m: {} for m in METRIC_NAMES}).items()}
    overrides["dci"]["mode"] = dci_mode
    t0 = time.perf_counter()
    scores = evaluate(rep, data, metrics=METRIC_NAMES, seed=seed, overrides=overrides)
    return scores, time.perf_counter() - t0, rep.encoded


# -- side-by-side table -----------------------------------------------------------------------------------
ROWS = [  # (label, reference metric, reference key, untwine metric, untwine key)
    ("BetaVAE eval accuracy", "beta_vae", "eval_accuracy", "beta_vae", "eval_accuracy"),
    ("FactorVAE eval accuracy", "factor_vae", "eval_accuracy", "factor_vae", "eval_accuracy"),
    ("MIG (20 bins)", "mig", "discrete_mig", "mig", "mig"),
    ("DCI disentanglement", "dci", "disentanglement", "dci", "disentanglement"),
    ("DCI completeness", "dci", "completeness", "dci", "completeness"),
    ("DCI informativeness (test)", "dci", "informativeness_test", "dci", "informativeness_test"),
    ("SAP", "sap", "SAP_score", "sap", "sap"),
    ("modularity", "modularity_explicitness", "modularity_score", "modularity_explicitness", "modularity"),
    ("explicitness (test)", "modularity_explicitness", "explicitness_score_test", "modularity_explicitness",
     "explicitness_test"),
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller protocol on both sides (a smoke run)")
    ap.add_argument("--dci-mode", choices=["fast", "reference"], default="fast",
                    help="untwine's DCI mode (reference = sklearn GBT on the shared codes)")
    ap.add_argument("--encoder", default="moments",
                    help="the representation: moments (the cheap moment encoder, default), conv64 (an "
                         "untrained conv64 VAE's encoder mean: encoding then dominates both sides' time) or "
                         "trained:RUN_DIR (a finished dSprites run's encoder mean)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    args = ap.parse_args(argv)
    if args.encoder not in ("moments", "conv64") and not args.encoder.startswith("trained:"):
        ap.error(f"--encoder {args.encoder!r}: expected moments, conv64 or trained:RUN_DIR")
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)  # both sides alike; the 2 shared cores make threading noisy

    print(f"machine: {machine()}")
    t0 = time.perf_counter()
    data = load_dsprites()
    print(f"data: {data.name} ready in {time.perf_counter() - t0:.1f} s (not counted below)")
    encoder = build_encoder(args.encoder, data, seed=0)
    print(f"representation: {args.encoder} encoder")

    from rich.console import Console
    console = Console()
    with console.status("untwine evaluate()"):
        u_scores, u_sec, u_enc = run_untwine(encoder, data, args.quick, args.seed, args.dci_mode)
    console.print(f"untwine: {u_sec:.1f} s, {u_enc:,} images encoded")

    with console.status("disentanglement_lib protocol") as status:
        ref = dlib_reference.evaluate_reference(
            data, encoder, metrics=METRIC_NAMES, seed=args.seed, overrides=QUICK if args.quick else None,
            progress=lambda name: status.update(f"disentanglement_lib protocol: {name}"))
    r_sec, r_enc = sum(ref.seconds.values()), sum(ref.encoded.values())
    console.print(f"reference: {r_sec:.1f} s, {r_enc:,} images encoded")

    timing_md = print_table(
        "full suite: seconds and encoder passes",
        ["protocol", "seconds", "images encoded"],
        [["untwine evaluate()", u_sec, u_enc]]
        + [[f"  untwine: {k}", v, ""] for k, v in u_scores["_meta"]["seconds"].items() if k != "total"]
        + [[f"reference: {m}", ref.seconds[m], ref.encoded[m]] for m in METRIC_NAMES]
        + [["reference: total", r_sec, r_enc], ["ratio reference / untwine", r_sec / u_sec, r_enc / max(u_enc, 1)]])
    rows = []
    for label, rm, rk, um, uk in ROWS:
        r = float(ref.scores[rm][rk])
        u = float(u_scores[um][uk])
        rows.append([label, u, r, abs(u - r)])
    scores_md = print_table("scores", ["score", "untwine", "disentanglement_lib protocol", "|diff|"], rows)
    if args.json:
        args.json.write_text(json.dumps({"untwine": u_scores, "reference": ref.scores, "seconds": [u_sec, r_sec],
                                         "encoded": [u_enc, r_enc]}, indent=1, default=float))
    print("\n" + timing_md + "\n\n" + scores_md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
