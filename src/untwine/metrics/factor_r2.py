"""Factor R2: how linearly each ground-truth factor can be read from the code.

Each factor (classes, standardised on the train set) is regressed by least squares on the whole code
(with intercept) and scored by R2 on the test set; the score is the mean over factors. This measures
explicitness/informativeness, so it is invariant to any invertible linear map of the code (a rotation
of the factors scores like the factors themselves, by design). `factor_r2_single` is the
disentanglement-sensitive variant: for each factor the best R2 of a single code dimension.
"""
from __future__ import annotations

import numpy as np

from untwine.metrics._common import check_train_test, to_floats


def _r2(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    ss_res = ((target - pred) ** 2).sum(axis=0)
    ss_tot = ((target - target.mean(axis=0)) ** 2).sum(axis=0)
    return 1.0 - ss_res / np.where(ss_tot > 0, ss_tot, 1.0)


def factor_r2(codes_train, factors_train, codes_test, factors_test) -> dict:
    ct, ft, cs, fs = check_train_test(codes_train, factors_train, codes_test, factors_test)
    mean, std = ft.mean(axis=0), ft.std(axis=0)
    yt, ys = (ft - mean) / std, (fs - mean) / std
    mu, sd = ct.mean(axis=0), ct.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)                 # constant dims carry nothing; keep them finite
    xt, xs = (ct - mu) / sd, (cs - mu) / sd
    design = np.column_stack([xt, np.ones(len(xt))])
    coef = np.linalg.lstsq(design, yt, rcond=None)[0]
    per_factor = _r2(np.column_stack([xs, np.ones(len(xs))]) @ coef, ys)
    # single-dimension fits, all (dim, factor) pairs at once: slope = cov / var on the train set
    var = (xt ** 2).mean(axis=0)
    slope = np.where(var[:, None] > 0, (xt.T @ yt) / len(xt) / np.where(var > 0, var, 1.0)[:, None], 0.0)
    pred = xs[:, :, None] * slope[None] + yt.mean(axis=0)[None, None, :]      # (N, D, K)
    ss_res = ((ys[:, None, :] - pred) ** 2).sum(axis=0)
    ss_tot = ((ys - ys.mean(axis=0)) ** 2).sum(axis=0)
    single = (1.0 - ss_res / np.where(ss_tot > 0, ss_tot, 1.0)).max(axis=0)
    return {"factor_r2": float(per_factor.mean()), "factor_r2_per_factor": to_floats(per_factor),
            "factor_r2_single": float(single.mean()), "factor_r2_single_per_factor": to_floats(single)}
