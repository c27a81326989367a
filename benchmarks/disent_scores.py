"""Score code arrays with disent's metrics. Runs inside .venv-disent (disent 0.8.0), never in .venv.

    .venv-disent/bin/python benchmarks/disent_scores.py IN.npz OUT.json

Called by benchmarks/bench_metrics_disent.py. IN.npz holds, for every representation NAME listed in
`names`:
  NAME/table   float32 (G, D)  the code of every grid point of the factor space (row-major order)
and, shared by all:
  factor_sizes int (K,), train_idx / test_idx int (N,) grid indices of the shared train/test samples,
  dci_train / dci_test int (2,) how many of them DCI uses, fvae int (3,) num_train, num_eval,
  num_variance_estimate for FactorVAE, seed int.
MIG, DCI and SAP use disent's array-level functions (_compute_mig, _compute_dci with sklearn GBT,
_compute_sap) on exactly those samples. FactorVAE samples its own batches, so it gets a disent
GroundTruthData whose observation of grid point i is the code table row i, and the identity as the
representation function; disent draws from numpy's global RNG, seeded with `seed`.
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np

from disent.dataset import DisentDataset
from disent.dataset.data import GroundTruthData
from disent.metrics._dci import _compute_dci
from disent.metrics._mig import _compute_mig
from disent.metrics._sap import _compute_sap
from disent.metrics import metric_factor_vae


class CodeTableData(GroundTruthData):
    """A disent ground-truth dataset whose observation of grid point i is codes[i] (a (D,) vector)."""

    def __init__(self, codes: np.ndarray, factor_sizes):
        self._codes = codes
        self._sizes = tuple(int(s) for s in factor_sizes)
        super().__init__()

    @property
    def factor_names(self):
        return tuple(f"f{i}" for i in range(len(self._sizes)))

    @property
    def factor_sizes(self):
        return self._sizes

    @property
    def img_shape(self):
        return (1, 1, self._codes.shape[1])

    def _get_observation(self, idx):
        return self._codes[idx]


def _float(d: dict) -> dict:
    return {k: float(v) for k, v in d.items()}


def main(argv) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    src = np.load(argv[1], allow_pickle=False)
    sizes = src["factor_sizes"]
    train_idx, test_idx = src["train_idx"], src["test_idx"]
    n_dci_train, n_dci_test = (int(x) for x in src["dci_train_test"])
    fv_train, fv_eval, fv_var = (int(x) for x in src["fvae"])
    seed = int(src["seed"])
    ys_train = np.array(np.unravel_index(train_idx, sizes))  # (K, N), disent's layout
    ys_test = np.array(np.unravel_index(test_idx, sizes))
    out = {}
    for name in [str(n) for n in src["names"]]:
        table = src[f"{name}/table"]
        mus_train, mus_test = table[train_idx].T.astype(np.float64), table[test_idx].T.astype(np.float64)
        res, sec = {}, {}
        t0 = time.perf_counter()
        res.update(_float(_compute_mig(mus_train, ys_train)))
        sec["mig"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        res.update(_float(_compute_sap(mus_train, ys_train, mus_test, ys_test, continuous_factors=False)))
        sec["sap"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        res.update(_float(_compute_dci(mus_train[:, :n_dci_train], ys_train[:, :n_dci_train],
                                       mus_test[:, :n_dci_test], ys_test[:, :n_dci_test])))
        sec["dci"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        np.random.seed(seed)
        dataset = DisentDataset(CodeTableData(table, sizes))
        res.update(_float(metric_factor_vae(dataset, lambda x: x, num_train=fv_train, num_eval=fv_eval,
                                            num_variance_estimate=fv_var)))
        sec["factor_vae"] = time.perf_counter() - t0
        out[name] = {"scores": res, "seconds": sec}
        print(f"disent: {name} done ({sum(sec.values()):.1f} s)", file=sys.stderr, flush=True)
    with open(argv[2], "w", encoding="utf-8") as fh:
        json.dump(out, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
