"""A small mixed-type table with known structure, for tests, examples and quick checks.

    df = demo_table(300, seed=0)

Columns: age (integer, bimodal), income (continuous, depends on age and job), job (categorical,
4 values, 'pilot' rare), city (categorical, 30 values: high cardinality for the size), member
(boolean), joined (datetime, seconds), score (continuous with missing values), grade (category
with missing values), country (constant). `income` and `job` carry a strong dependence, so a model
that ignores the correlations scores visibly lower on column-pair trends.
"""
from __future__ import annotations

import numpy as np
import pandas as pd


def demo_table(n: int = 300, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    young = rng.random(n) < 0.5
    age = np.where(young, rng.normal(25, 3, n), rng.normal(55, 6, n)).round().astype(np.int64)
    job = rng.choice(["clerk", "engineer", "teacher", "pilot"], size=n, p=[0.45, 0.3, 0.22, 0.03])
    base = {"clerk": 30_000.0, "engineer": 70_000.0, "teacher": 45_000.0, "pilot": 120_000.0}
    income = np.array([base[j] for j in job]) * (1 + 0.01 * (age - 40)) + rng.normal(0, 3_000, n)
    city = np.array([f"city_{i:02d}" for i in rng.integers(0, 30, n)], dtype=object)
    member = rng.random(n) < 0.3 + 0.4 * young
    joined = (pd.Timestamp("2020-01-01") + pd.to_timedelta(rng.integers(0, 3 * 365 * 86400, n), unit="s")
              ).to_numpy().astype("datetime64[s]")
    score = rng.normal(0.5, 0.2, n)
    score[rng.random(n) < 0.1] = np.nan
    grade = pd.Series(rng.choice(["A", "B", "C"], size=n), dtype=object)
    grade[rng.random(n) < 0.15] = None
    return pd.DataFrame({"age": age, "income": income, "job": job, "city": city, "member": member,
                         "joined": joined, "score": score, "grade": grade, "country": "NZ"})
