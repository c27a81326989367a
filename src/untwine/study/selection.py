"""Unsupervised model selection over a study's runs: UDR (untwine.metrics.udr) within each setting
(the runs that differ only in seed), and the held-out reconstruction error it is read against.

Every finished single-stage run of a setting encodes the same `num_points` images, drawn with the
spec's udr.seed from the dataset's evaluation split (held out of training; a uniform sample of the
grid, as disentanglement_lib's whole-grid sampling is): the encoder's means are the codes, the
mean KL per dimension over those images is the active-dimension filter, and the decoder's negative
log-likelihood of each image from its mean code is `recon_eval`. Codes are cached per run and
checkpoint step in DIR/selection/<run>.npz, so that `study table` after a finished study only reads.
A stage-2 run is left out: its representation is its stage 1's, exactly (its UDR is its stage 1's).
"""
from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from untwine.metrics.udr import CORRELATIONS, gaussian_kl_per_dim, udr
from untwine.study.spec import RunPlan, Study, run_dir

SELECTION_DIR = "selection"
ENCODE_BATCH = 64


def _images(data, num_points: int, seed: int) -> np.ndarray:
    """The shared images UDR reads: from the dataset's held-out split (a factor grid's, or an image
    set's own), or from all of it when it holds too few out (tests' toy grids)."""
    from untwine.data.split import held_out_pool
    pool = held_out_pool(data, at_least=num_points)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(pool, size=min(num_points, len(pool)), replace=False))


def encode_run(path: str | os.PathLike, num_points: int, seed: int) -> dict[str, np.ndarray]:
    """{"mean", "logvar" (N, D), "nll" (N,), "step"} of a run's model on the shared images."""
    import torch

    from untwine.train.run import load_run
    run = load_run(path)
    idx = _images(run.data, num_points, seed)
    means, logvars, nlls = [], [], []
    with torch.no_grad():
        for s in range(0, len(idx), ENCODE_BATCH):
            x = run.data.batch(idx[s:s + ENCODE_BATCH])
            mu, logvar = run.model.encode(x)
            means.append(mu.double().numpy())
            logvars.append(logvar.double().numpy())
            nlls.append(run.model.likelihood.nll(run.model.decode(mu), x).double().numpy())
    return {"mean": np.concatenate(means), "logvar": np.concatenate(logvars), "nll": np.concatenate(nlls),
            "step": np.int64(run.step)}


def cached_codes(study_dir: Path, plan: RunPlan, step: int, num_points: int, seed: int) -> dict[str, np.ndarray]:
    cache = Path(study_dir) / SELECTION_DIR / f"{plan.name}.npz"
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            if int(z["step"]) == step and int(z["num_points"]) == num_points and int(z["seed"]) == seed:
                return {k: z[k] for k in z.files}
    codes = encode_run(run_dir(study_dir, plan.name), num_points, seed)
    codes.update(num_points=np.int64(num_points), seed=np.int64(seed))
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f".{cache.stem}.{os.getpid()}.npz")
    np.savez(tmp, **codes)
    os.replace(tmp, cache)
    return codes


def study_selection(study_dir: str | os.PathLike, study: Study, steps: dict[str, int]) -> dict[str, dict]:
    """{run: {"recon_eval", "udr", "udr_<other correlation>", "udr_active_dims"}} for the finished
    single-stage runs (`steps`: run -> its checkpoint step). UDR is nan for a setting with one run."""
    study_dir = Path(study_dir)
    p = study.udr
    other = next(c for c in CORRELATIONS if c != p["correlation"])
    codes, out = {}, {}
    for plan in study.runs:
        if plan.name in steps and not plan.needs:
            codes[plan.name] = cached_codes(study_dir, plan, steps[plan.name], int(p["num_points"]), int(p["seed"]))
            out[plan.name] = {"recon_eval": float(codes[plan.name]["nll"].mean()), "udr": float("nan"),
                              f"udr_{other}": float("nan"), "udr_active_dims": float("nan")}
    by_setting: dict[str, list[str]] = defaultdict(list)
    for plan in study.runs:
        if plan.name in codes:
            by_setting[plan.setting].append(plan.name)
    for names in by_setting.values():
        if len(names) < 2:
            continue
        reps = [codes[n]["mean"] for n in names]
        kls = [gaussian_kl_per_dim(codes[n]["mean"], codes[n]["logvar"]) for n in names]
        for key, corr in (("udr", p["correlation"]), (f"udr_{other}", other)):
            scores = udr(reps, kls, correlation=corr, kl_threshold=float(p["kl_threshold"]))
            for n, s in zip(names, scores["model_scores"]):
                out[n][key] = s
                out[n]["udr_active_dims"] = float(scores["active_dims"][names.index(n)])
    return out


__all__ = ["encode_run", "study_selection"]
