"""The full metric suite: untwine's evaluate() against disentanglement_lib's per-metric protocol.

    .venv/bin/python benchmarks/bench_metrics.py            # default protocol (about 12 minutes here)
    .venv/bin/python benchmarks/bench_metrics.py --quick    # smaller protocol for both sides (< 1 minute)

A 10-dimensional representation of procedural dSprites, computed from the 64x64 images by a fixed
encoder (image moments for position, size and orientation, a tiny fixed random conv net for
nuisance features and noise) is scored, in the same run,
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

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dlib_reference  # noqa: E402
from common import machine, print_table  # noqa: E402

from untwine.data.base import GroundTruthData  # noqa: E402
from untwine.data.spaces import DSPRITES  # noqa: E402

METRIC_NAMES = ["beta_vae", "factor_vae", "mig", "dci", "sap", "modularity_explicitness"]
QUICK = {  # --quick: the same protocols, smaller (both sides get the same sizes)
    "beta_vae": dict(num_train=1000, num_eval=500),
    "factor_vae": dict(num_train=1000, num_eval=500, num_variance_estimate=2000),
    "mig": dict(num_train=2000),
    "dci": dict(num_train=2000, num_test=1000),
    "sap": dict(num_train=2000, num_test=1000),
    "modularity_explicitness": dict(num_train=2000, num_test=1000),
}


# -- data: the project's procedural dSprites, or a stand-in rendered here until it lands ---------------
class StandInDSprites(GroundTruthData):
    """dSprites-like binary 64x64 sprites rendered from the factors, a stand-in for
    untwine.data.registry.get_dataset("dsprites") while that is being written.

    The 3 x 6 x 40 (shape, scale, orientation) sprites are rendered once as 128x128 templates;
    position is an integer translation (posX/posY class + 16 pixels), so a batch is one gather."""

    name = "dsprites-standin"
    factor_space = DSPRITES
    image_shape = (1, 64, 64)

    def __init__(self):
        sizes = self.factor_space.sizes
        t = np.stack(np.meshgrid(*(np.arange(n) for n in sizes[:3]), indexing="ij"), -1).reshape(-1, 3)
        self._templates = self._render(self.factor_space.values_of(np.c_[t, np.zeros((len(t), 2), int)]))
        self._windows = np.lib.stride_tricks.sliding_window_view(self._templates, (64, 64), axis=(1, 2))

    @staticmethod
    def _render(values: np.ndarray) -> np.ndarray:
        v = torch.from_numpy(values).float()
        shape, scale, theta = (v[:, i, None, None] for i in range(3))
        grid = torch.arange(128, dtype=torch.float32) - 63.5
        dy, dx = grid[None, :, None], grid[None, None, :]
        c, sn, s = torch.cos(theta), torch.sin(theta), 11 * scale
        u, w = (c * dx + sn * dy) / s, (-sn * dx + c * dy) / s
        square = (u.abs() <= 0.8) & (w.abs() <= 0.8)
        ellipse = u ** 2 + (w / 0.5) ** 2 <= 1.0
        hu, hw = u * 1.15, -w * 1.15 + 0.25
        heart = (hu ** 2 + hw ** 2 - 1) ** 3 - hu ** 2 * hw ** 3 <= 0
        return torch.where(shape == 1, square, torch.where(shape == 2, ellipse, heart)).numpy().astype(np.uint8)

    def _gather(self, indices) -> np.ndarray:
        f = self.factor_space.classes_of(indices)
        template = (f[:, 0] * 6 + f[:, 1]) * 40 + f[:, 2]
        # the 64x64 window whose centre is the template's centre shifted by (posY + 16, posX + 16)
        return self._windows[template, 48 - f[:, 4], 48 - f[:, 3]]

    def images(self, indices: np.ndarray) -> np.ndarray:
        return (self._gather(indices) * 255)[..., None]

    def batch(self, indices, device=None) -> torch.Tensor:
        x = torch.from_numpy(self._gather(indices)).unsqueeze(1).float()
        return x.to(device) if device is not None else x


def load_dsprites() -> GroundTruthData:
    try:
        from untwine.data.registry import get_dataset
    except ImportError:
        print("untwine.data.registry not available yet: using the stand-in renderer")
        return StandInDSprites()
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
        """(N, 20): 10 signal features, then 10 conv features used as noise."""
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
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)  # both sides alike; the 2 shared cores make threading noisy

    print(f"machine: {machine()}")
    t0 = time.perf_counter()
    data = load_dsprites()
    print(f"data: {data.name} ready in {time.perf_counter() - t0:.1f} s (not counted below)")
    calib = data.batch(np.random.default_rng(123).integers(0, len(data), 4096))
    encoder = MomentEncoder(seed=0).calibrate(calib).eval()

    from rich.console import Console
    console = Console()
    with console.status("untwine evaluate()"):
        u_scores, u_sec, u_enc = run_untwine(encoder, data, args.quick, args.seed)
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
