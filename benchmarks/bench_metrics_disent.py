"""Cross-check: the same codes scored by untwine's metrics and by disent 0.8.0's (an independent port
of disentanglement_lib), disent running in its own environment (.venv-disent) in a subprocess.

    bash benchmarks/setup_disent_venv.sh                          # once: creates .venv-disent
    .venv/bin/python benchmarks/bench_metrics_disent.py           # panel of 6 representations (~8 min here)
    .venv/bin/python benchmarks/bench_metrics_disent.py --quick   # 2 representations, small samples

Every representation is a code table over the whole dSprites grid (737,280 x 10, float32): the
factors themselves, permuted and rescaled, rotated, noisy, partially entangled, and the codes of the
image encoder of bench_metrics.py. MIG, SAP and DCI are computed by both libraries on exactly the
same train/test samples (written to one .npz); FactorVAE draws its own fixed-factor batches in each
library (same protocol, different random numbers), from the same table.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dlib_reference  # noqa: E402
from common import machine, print_table  # noqa: E402

from untwine.data.base import GroundTruthData  # noqa: E402
from untwine.data.spaces import DSPRITES  # noqa: E402
from untwine.errors import DataError  # noqa: E402
from untwine.metrics import dci, evaluate, mig, sap  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DISENT_PYTHON = ROOT / ".venv-disent" / "bin" / "python"


# -- the panel: code tables over the whole grid ---------------------------------------------------------
def panel(names, seed: int = 0) -> dict[str, np.ndarray]:
    space = DSPRITES
    classes = space.classes_of(np.arange(len(space)))
    z = (classes - classes.mean(0)) / classes.std(0)  # standardised factor classes (G, 5)
    rng = np.random.default_rng(seed)

    def noise(d):
        return rng.standard_normal((len(space), d))

    identity = np.c_[z + 0.05 * noise(5), noise(5)]
    tables = {}
    for name in names:
        if name == "identity":
            t = identity
        elif name == "permuted_rescaled":
            t = identity[:, rng.permutation(10)] * np.geomspace(0.1, 10, 10)
        elif name == "rotation":
            q, _ = np.linalg.qr(rng.standard_normal((5, 5)))
            t = np.c_[identity[:, :5] @ q, identity[:, 5:]]
        elif name == "noisy":
            t = np.c_[z + 0.7 * noise(5), noise(5)]
        elif name == "entangled":
            mix = np.eye(5) + 0.4 * rng.uniform(-1, 1, (5, 5)) * (1 - np.eye(5))
            t = np.c_[z @ mix + 0.1 * noise(5), noise(5)]
        elif name == "encoder":
            t = encoder_table()
        else:
            raise DataError(f"unknown representation {name!r}")
        tables[name] = np.ascontiguousarray(t, dtype=np.float32)
    return tables


def encoder_table(batch: int = 1024) -> np.ndarray:
    """The codes of bench_metrics.py's image encoder for every dSprites image."""
    from bench_metrics import MomentEncoder, load_dsprites
    from rich.progress import Progress
    data = load_dsprites()
    enc = MomentEncoder(seed=0).calibrate(data.batch(np.random.default_rng(123).integers(0, len(data), 4096))).eval()
    out = np.empty((len(data), 10), np.float32)
    with torch.no_grad(), Progress(transient=True) as progress:
        task = progress.add_task("encoding all dSprites images", total=len(data))
        for s in range(0, len(data), batch):
            idx = np.arange(s, min(len(data), s + batch))
            out[idx] = enc(data.batch(idx)).numpy()
            progress.advance(task, len(idx))
    return out


class CodeTableData(GroundTruthData):
    """untwine's view of a code table: the 'observation' of grid point i is its code, shaped (D, 1, 1),
    so that evaluate() with a flattening representation scores the table with its own sampling."""

    name = "code-table"
    factor_space = DSPRITES

    def __init__(self, table: np.ndarray):
        self.table = table
        self.image_shape = (table.shape[1], 1, 1)

    def images(self, indices):
        raise DataError("a code table has no images; use batch()")

    def batch(self, indices, device=None):
        x = torch.from_numpy(self.table[np.asarray(indices)]).view(len(indices), -1, 1, 1)
        return x.to(device) if device is not None else x


# -- untwine's side -------------------------------------------------------------------------------------
def untwine_scores(table, train_idx, test_idx, n_dci, fvae, seed):
    space = DSPRITES
    ct, cs = table[train_idx].astype(np.float64), table[test_idx].astype(np.float64)
    ft, fs = space.classes_of(train_idx), space.classes_of(test_idx)
    res, sec = {}, {}
    t0 = time.perf_counter()
    res["mig"] = mig(ct, ft)["mig"]
    sec["mig"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    res["sap"] = sap(ct, ft, cs, fs)["sap"]
    sec["sap"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    d = dci(ct[:n_dci[0]], ft[:n_dci[0]], cs[:n_dci[1]], fs[:n_dci[1]], mode="fast")
    res.update({f"dci_{k}": d[k] for k in ("disentanglement", "completeness", "informativeness_test")})
    sec["dci"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    fv = evaluate(lambda x: x.flatten(1), CodeTableData(table), seed=seed,
                  metrics={"factor_vae": dict(num_train=fvae[0], num_eval=fvae[1], num_variance_estimate=fvae[2])})
    res["factor_vae"] = fv["factor_vae"]["eval_accuracy"]
    sec["factor_vae"] = time.perf_counter() - t0
    # benchmarks/dlib_reference.py on the same arrays: validates the reference against disent's port
    ref = {"mig": dlib_reference.mig_from_codes(ct.T, ft.T),
           "sap": dlib_reference.sap_from_codes(ct.T, ft.T, cs.T, fs.T)}
    return res, sec, ref


ROWS = [  # (label, untwine key, disent key)
    ("MIG", "mig", "mig.discrete_score"),
    ("SAP", "sap", "sap.score"),
    ("DCI disentanglement", "dci_disentanglement", "dci.disentanglement"),
    ("DCI completeness", "dci_completeness", "dci.completeness"),
    ("DCI informativeness (test)", "dci_informativeness_test", "dci.informativeness_test"),
    ("FactorVAE eval accuracy", "factor_vae", "factor_vae.eval_accuracy"),
]
PANEL = ["identity", "permuted_rescaled", "rotation", "noisy", "entangled", "encoder"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="identity and rotation only, small DCI and FactorVAE samples")
    ap.add_argument("--reps", default=None, help=f"comma-separated subset of {','.join(PANEL)}")
    ap.add_argument("--num-train", type=int, default=10000)
    ap.add_argument("--num-test", type=int, default=5000)
    ap.add_argument("--dci-train", type=int, default=None,
                    help="DCI train points (default 1000; 500 with --quick): sklearn's GBT is minutes at 10000")
    ap.add_argument("--dci-test", type=int, default=None)
    ap.add_argument("--fvae", default=None, help="FactorVAE num_train,num_eval,num_variance_estimate "
                                                 "(default 10000,5000,10000; 1000,500,2000 with --quick)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if not DISENT_PYTHON.exists():
        print(f"error: {DISENT_PYTHON} not found; create it with: bash benchmarks/setup_disent_venv.sh",
              file=sys.stderr)
        return 1
    names = args.reps.split(",") if args.reps else (["identity", "rotation"] if args.quick else PANEL)
    n_dci = (args.dci_train or (500 if args.quick else 1000), args.dci_test or (250 if args.quick else 500))
    fvae = tuple(int(x) for x in args.fvae.split(",")) if args.fvae else \
        ((1000, 500, 2000) if args.quick else (10000, 5000, 10000))

    print(f"machine: {machine()}")
    tables = panel(names, args.seed)
    rng = np.random.default_rng(args.seed)
    train_idx = rng.integers(0, len(DSPRITES), args.num_train)
    test_idx = rng.integers(0, len(DSPRITES), args.num_test)

    with tempfile.TemporaryDirectory() as tmp:
        npz, out = Path(tmp) / "codes.npz", Path(tmp) / "disent.json"
        np.savez(npz, names=np.array(names), factor_sizes=np.array(DSPRITES.sizes), train_idx=train_idx,
                 test_idx=test_idx, dci_train_test=np.array(n_dci), fvae=np.array(fvae), seed=np.array(args.seed),
                 **{f"{n}/table": t for n, t in tables.items()})
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        proc = subprocess.Popen([str(DISENT_PYTHON), str(Path(__file__).with_name("disent_scores.py")),
                                 str(npz), str(out)], env=env)
        # untwine's side meanwhile on the other core
        ours = {}
        for n in names:
            ours[n] = untwine_scores(tables[n], train_idx, test_idx, n_dci, fvae, args.seed)
            print(f"untwine: {n} done ({sum(ours[n][1].values()):.1f} s)", flush=True)
        if proc.wait() != 0:
            print(f"error: disent_scores.py failed with exit code {proc.returncode}", file=sys.stderr)
            return 1
        theirs = json.loads(out.read_text())

    rows, worst = [], 0.0
    for n in names:
        for label, uk, dk in ROWS:
            u, d = float(ours[n][0][uk]), float(theirs[n]["scores"][dk])
            worst = max(worst, abs(u - d))
            rows.append([n, label, u, d, u - d, "*" if abs(u - d) > 0.02 else "", ours[n][2].get(uk, "")])
    md = print_table(f"untwine vs disent 0.8.0 (MIG/SAP on {args.num_train}/{args.num_test}, DCI on "
                     f"{n_dci[0]}/{n_dci[1]}, FactorVAE {fvae[0]}/{fvae[1]}/{fvae[2]}; * = |diff| > 0.02)",
                     ["representation", "score", "untwine", "disent", "diff", "", "dlib_reference.py"], rows)
    sec_rows = [[n, sum(ours[n][1].values()), sum(theirs[n]["seconds"].values())] for n in names]
    sec_md = print_table("seconds per representation (MIG+SAP+DCI+FactorVAE)", ["representation", "untwine", "disent"],
                         sec_rows)
    if args.json:
        args.json.write_text(json.dumps({"untwine": {n: {"scores": o[0], "seconds": o[1], "dlib_reference": o[2]} for n, o in ours.items()},
                                         "disent": theirs}, indent=1, default=float))
    print(f"\nlargest |diff|: {worst:.4f}\n\n{md}\n\n{sec_md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
