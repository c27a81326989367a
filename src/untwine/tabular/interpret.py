"""What the latents of a tabular model mean, and which stage carries what.

    table = traversal_table(model, steps=5)          # column summary as each z_j moves over [-2, 2]
    save_heatmap(traversal_effects(table), "traversal.png", "effect of each latent")
    mi = latent_column_mi(model, df)                 # mutual information (nats), latents x columns
    share = stage_variance(model, df)                # per column: variance explained by stage 1 / added by stage 2

A traversal moves one z_j from -2 to 2 with the others at 0 and decodes stage 1's row y(z) (the
mean: tanh alpha, softmax probabilities); a numeric column is summarised by its decoded value, a
categorical one by the probability of its most common category at z = 0. The heatmap shows each
latent's range of that summary, scaled per column (numeric: by the column's standard deviation;
categorical: the probability range itself).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from untwine.io import atomic_write


def _numbers(values: pd.Series, kind: str) -> np.ndarray:
    """A numeric column as float64 (datetimes, also as CSV text, in nanoseconds; missing -> NaN)."""
    if kind == "datetime":
        stamps = pd.to_datetime(values, format="mixed").astype("datetime64[ns]")
        return stamps.astype("int64").where(stamps.notna()).to_numpy(dtype=np.float64)
    return pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)


@torch.no_grad()
def traversal_table(model, steps: int = 5, span: float = 2.0, codes: np.ndarray | None = None) -> pd.DataFrame:
    """Rows (latent, z value); columns: each modelled column's summary of the decoded row.
    Without `codes`: z_j moves over [-span, span] with the others at 0 (the prior's view). With
    `codes` (encoder means of real rows, `model.encode(df)`): the others sit at the codes' median
    and z_j moves between its 2.5% and 97.5% quantiles, where the data are: with a weak KL and the
    fitted code prior the codes need not fill N(0, I), and a traversal through empty space decodes
    rows the model never makes."""
    model._check_fitted()
    tt, d = model.transformer, model.params["latent_dim"]
    if codes is None:
        centre_z = np.zeros(d)
        grids = [np.linspace(-span, span, steps)] * d
    else:
        codes = np.asarray(codes, dtype=np.float64)
        if codes.ndim != 2 or codes.shape[1] != d or len(codes) == 0:
            raise ValueError(f"codes must be (rows, {d}) encoder means, got shape {codes.shape}")
        centre_z = np.median(codes, axis=0)
        lo, hi = np.quantile(codes, [0.025, 0.975], axis=0)
        grids = [np.linspace(lo[j], hi[j], steps) for j in range(d)]
    z = torch.from_numpy(np.tile(centre_z, (d * steps, 1))).float()
    for j in range(d):
        z[j * steps:(j + 1) * steps, j] = torch.tensor(grids[j], dtype=torch.float32)
    y = model.decode(z).numpy()
    decoded = tt.inverse_transform(y)
    centre = tt.inverse_transform(model.decode(torch.from_numpy(centre_z[None]).float()).numpy())
    out = {"latent": np.repeat(np.arange(d), steps), "z": np.concatenate(grids)}
    for info in tt.columns:
        name = info["name"]
        if info["kind"] in ("constant", "id"):   # an id column is generated fresh: nothing to read
            continue
        if "categories" in info:
            s = next(s for s in tt.spans if s.name == f"{name}.category")
            top = info["categories"].index(centre[name].iloc[0]) if centre[name].iloc[0] in info["categories"] else 0
            out[f"P({name}={info['categories'][top]})"] = y[:, s.start + top]
        else:
            out[name] = _numbers(decoded[name], info["kind"])
    return pd.DataFrame(out)


def traversal_effects(table: pd.DataFrame, scales: dict[str, float] | None = None) -> pd.DataFrame:
    """(latent x column) range of each column's summary along each latent's traversal, divided by
    `scales[column]` where given."""
    cols = [c for c in table.columns if c not in ("latent", "z")]
    eff = table.groupby("latent")[cols].agg(lambda v: float(np.nanmax(v) - np.nanmin(v)))
    for c, s in (scales or {}).items():
        if c in eff and s > 0:
            eff[c] = eff[c] / s
    return eff


def numeric_scales(model, df: pd.DataFrame) -> dict[str, float]:
    """Standard deviation of every numeric column of `df` (datetimes in nanoseconds)."""
    out = {}
    for info in model.transformer.columns:
        if info["kind"] in ("continuous", "integer", "datetime"):
            out[info["name"]] = float(np.nanstd(_numbers(df[info["name"]], info["kind"]), ddof=1))
    return out


def save_heatmap(table: pd.DataFrame, path, title: str, per_column: bool = False, units: str = "") -> None:
    """A (latent x column) table as a heatmap with its values written in the cells: the traversal
    effects or the latent-column mutual information. `per_column`: each column coloured on its own
    scale (its largest value the brightest), for columns in different units (standard deviations
    beside probabilities); the cells keep their values. The title wraps to the figure's width."""
    import textwrap

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    values = table.to_numpy(dtype=float)
    shown = values
    if per_column:
        tops = np.nanmax(np.where(np.isfinite(values), np.abs(values), np.nan), axis=0)
        tops = np.where(np.isfinite(tops) & (tops > 0), tops, 1.0)
        shown = np.abs(values) / tops
    width = max(5.5, 1.8 + 0.75 * table.shape[1])
    lines = textwrap.wrap(title, width=max(30, int(width * 11)))
    fig, ax = plt.subplots(figsize=(width, 1.6 + 0.18 * len(lines) + 0.45 * table.shape[0]))
    im = ax.imshow(shown, cmap="viridis", aspect="auto", vmin=0 if per_column else None,
                   vmax=1 if per_column else None)
    ax.set_xticks(range(table.shape[1]), [str(c) for c in table.columns], rotation=40, ha="right",
                  rotation_mode="anchor", fontsize=8)
    ax.set_yticks(range(table.shape[0]), [j if str(j).startswith("z") else f"z{j}" for j in table.index])
    top = np.nanmax(shown) if np.isfinite(shown).any() else 0.0
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v):  # dark text on the bright cells, light on the dark ones
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                    color="black" if shown[i, j] > 0.6 * top else "white")
    ax.set_title("\n".join(lines), fontsize=9)
    bar = fig.colorbar(im, ax=ax, shrink=0.8)
    bar.set_label("share of the column's top" if per_column else units, fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=110))
    plt.close(fig)


def effect_labels(table: pd.DataFrame, scales: dict[str, float] | None = None) -> pd.DataFrame:
    """traversal_effects' columns named with their units: "age (SD)" for a numeric column divided
    by its standard deviation, "P(job=pilot)" (a probability) as it is."""
    scales = scales or {}
    return table.rename(columns={c: f"{c} (SD)" for c in table.columns if scales.get(c, 0) > 0})


def latent_column_mi(model, df: pd.DataFrame, seed: int = 0, max_rows: int = 5000) -> pd.DataFrame:
    """Mutual information (nats) between every latent and every non-constant column:
    mutual_info_classif for categorical/boolean columns, mutual_info_regression for numeric ones.
    The latent is one draw of q(z | x) per row, not the encoder mean: a collapsed latent's mean still
    varies a little with the row while its posterior noise drowns that out, and the (scale-free)
    k-NN estimator would report the mean's variation as information the decoder never receives."""
    from sklearn.feature_selection import mutual_info_classif, mutual_info_regression
    rng = np.random.default_rng(seed)
    if len(df) > max_rows:
        df = df.iloc[np.sort(rng.choice(len(df), max_rows, replace=False))]
    mean, sd = model.posterior(df)
    codes = mean + sd * rng.standard_normal(mean.shape)
    out = {}
    for info in model.transformer.columns:
        name, kind = info["name"], info["kind"]
        if kind in ("constant", "id"):
            continue
        col = df[name]
        ok = col.notna().to_numpy()
        if "categories" in info:
            labels = col[ok].astype(str).to_numpy()
            out[name] = mutual_info_classif(codes[ok], labels, random_state=seed)
        else:
            out[name] = mutual_info_regression(codes[ok], _numbers(col[ok], kind), random_state=seed)
    return pd.DataFrame(out, index=[f"z{j}" for j in range(codes.shape[1])])


def stage_variance(model, df: pd.DataFrame) -> pd.DataFrame:
    """Per modelled span: the share of the transformed data's variance that stage 1's decoded row
    explains (1 - Var(x - y) / Var(x)) and the share stage 2 adds on top (with its most probable
    residual): the columns' detail that the disentangled latents leave to stage 2."""
    tt = model.transformer
    x = tt.transform(df).astype(np.float64)
    y1 = model.reconstruct(df, stage2=False).astype(np.float64)
    y2 = model.reconstruct(df, stage2=True).astype(np.float64)
    rows = []
    for s in tt.spans:
        sl = slice(s.start, s.stop)
        total = x[:, sl].var(0).sum()
        if total <= 0:
            continue
        r1 = 1.0 - ((x[:, sl] - y1[:, sl]).var(0).sum() / total)
        r2 = 1.0 - ((x[:, sl] - y2[:, sl]).var(0).sum() / total)
        rows.append({"span": s.name, "column": s.column, "stage1": r1, "stage2_added": r2 - r1, "combined": r2})
    return pd.DataFrame(rows)


def span_label(span: str, column: str) -> str:
    """A reader's name for a transformed span: "age (value)" for age.alpha, "age (mode)",
    "score (missing?)", and the column itself for a category's one-hot."""
    part = span[len(column) + 1:] if span.startswith(column + ".") else span
    return {"alpha": f"{column} (value)", "mode": f"{column} (mode)", "missing": f"{column} (missing?)",
            "category": column}.get(part, f"{column} ({part})")


def save_stage_variance(table: pd.DataFrame, path) -> None:
    """Stacked bars per span: stage 1's share of the variance, stage 2's addition on top; the legend
    above the axes, never over the bars."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(max(5.0, 0.5 * len(table) + 1.5), 3.6))
    pos = np.arange(len(table))
    ax.bar(pos, table["stage1"].clip(lower=0), label="stage 1 (disentangled latents)")
    ax.bar(pos, table["stage2_added"].clip(lower=0), bottom=table["stage1"].clip(lower=0), label="added by stage 2")
    labels = [span_label(str(s), str(c)) for s, c in zip(table["span"], table["column"])] if "column" in table \
        else list(table["span"])
    ax.set_xticks(pos, labels, rotation=50, ha="right", rotation_mode="anchor", fontsize=7)
    ax.set_ylabel("share of variance explained")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.01), ncols=2, frameon=False)
    fig.tight_layout()
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=110))
    plt.close(fig)
