"""The study report: DIR/study.html, one self-contained page (the run report's CSS and picture
viewer, pictures as data URIs), its charts also written to DIR/plots/.

Sections: the runs' status (and every failed run's error); the medians over seeds per setting;
per metric, the distribution over seeds of each setting (Locatello et al.'s box plots);
reconstruction against disentanglement, each run a point; the Spearman rank correlation between
metrics over the runs ("do the metrics agree?"); UDR's ranking of the settings and its rank
correlation with the supervised metrics.
"""
from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from untwine.io import atomic_write_bytes
from untwine.metrics.protocol import HEADLINE
from untwine.report.console import better
from untwine.report.html import details, esc, figure, note, table
from untwine.report.page import CSS, SCRIPT
from untwine.study import plots
from untwine.study.orchestrate import INVOCATIONS, STUDY_YAML, read_study

REPORT_NAME = "study.html"
PLOTS_DIR = "plots"
RECON = "recon_eval"
#: scores that need no factor labels (the rest are the supervised metrics UDR is read against)
UNSUPERVISED_PREFIXES = ("udr", "unsupervised", RECON)


def headline_columns(frame) -> list[str]:
    """The table's column of each metric's headline score (the protocol's HEADLINE), in its order."""
    cols = []
    for metric, key in HEADLINE.items():
        for col in (metric if key == metric else f"{metric}.{key}", metric):
            if col in frame and frame[col].notna().any():
                cols.append(col)
                break
    return cols


def label(col: str) -> str:
    name = col.replace(".", " (", 1) + ")" if "." in col else col
    if col == RECON:
        name = "recon_eval (held-out NLL, nats)"
    return f"{name} (lower is better)" if _lower(col) else name


def short(col: str) -> str:
    """A column's name for a table header or a matrix axis: the metric's own name for a headline
    score (`dci` for dci.disentanglement), an arrow where lower is better."""
    metric, _, key = col.partition(".")
    name = {"modularity_explicitness": "modularity", "unsupervised": "gaussian_tc"}.get(metric, metric) \
        if key and HEADLINE.get(metric) == key else col
    return f"{name} \u2193" if _lower(col) else name


def _lower(col: str) -> bool:
    return col == RECON or better(col.rsplit(".", 1)[-1]) == "lower"


# the run report's style, with the study's wide tables set tighter (a laptop's width, no scroll bar)
STUDY_CSS = CSS + """
table.medians, table.ranking { font-size: .8rem; }
table.medians th, table.medians td, table.ranking th, table.ranking td { padding: .18rem .32rem; }
table.medians thead th, table.ranking thead th { overflow-wrap: anywhere; }
"""
KEY_NOTE = ("beta_vae, factor_vae: evaluation accuracy; dci: disentanglement; modularity: modularity of "
            "modularity_explicitness; gaussian_tc: the unsupervised Gaussian total correlation; recon_eval: "
            "held-out reconstruction NLL (nats); \u2193: lower is better")


def spearman_matrix(frame, cols: list[str]) -> np.ndarray:
    """Spearman rank correlation between columns over the rows where both are present."""
    from scipy.stats import spearmanr
    n = len(cols)
    out = np.full((n, n), np.nan)
    for i in range(n):
        for j in range(n):
            a, b = frame[cols[i]].to_numpy(float), frame[cols[j]].to_numpy(float)
            keep = np.isfinite(a) & np.isfinite(b)
            if keep.sum() >= 3 and np.ptp(a[keep]) > 0 and np.ptp(b[keep]) > 0:
                out[i, j] = spearmanr(a[keep], b[keep]).statistic
    return out


def _status(frame) -> str:
    counts = frame["status"].value_counts().to_dict()
    rows = [["runs", len(frame)]] + [[s, int(counts[s])] for s in ("done", "unfinished", "failed", "pending",
                                                                   "running") if s in counts]
    out = table(None, rows, css="facts")
    failed = frame[frame["status"] == "failed"]
    if len(failed):
        items = "".join(f"<li><strong>{esc(r.run)}</strong>: {esc(r.error)}</li>" for r in failed.itertuples())
        out += (f'<div class="problems"><strong>failed runs</strong> (`untwine study run` tries them again; '
                f'RUN/error.json holds the traceback)<ul>{items}</ul></div>')
    return out


def _invocations(study_dir: Path) -> str:
    path = study_dir / INVOCATIONS
    if not path.is_file():
        return ""
    rows = []
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        rows.append([r.get("started"), r.get("executor"), r.get("workers"), r.get("trained"), r.get("failed"),
                     r.get("skipped"), r.get("wall_seconds")])
    return details("invocations of `untwine study run` (wall seconds)",
                   table(["started", "executor", "workers", "trained", "failed", "skipped", "wall s"], rows))


def _medians(done, cols: list[str]) -> str:
    rows = [[setting, len(part)] + [part[c].median() for c in cols] for setting, part in
            done.groupby("setting", sort=False)]
    return table(["setting", "seeds"] + [short(c) for c in cols], rows, css="medians") + note(KEY_NOTE, "muted")


def _udr_section(done, supervised: list[str]) -> str:
    if "udr" not in done or not done["udr"].notna().any():
        return note("no UDR: it needs at least two finished runs of a setting (seeds) that are not stage-2 runs")
    parts = []
    ranking = (done.groupby("setting", sort=False)
               .agg(method=("method", "first"), udr=("udr", "median"), seeds=("udr", "count"))
               .sort_values("udr", ascending=False))
    sup = [c for c in supervised if c in done]
    med = done.groupby("setting", sort=False)[sup].median() if sup else None
    rows = [[s, int(r.seeds), r.udr] + ([med.loc[s, c] for c in sup] if sup else [])
            for s, r in ranking.iterrows()]
    parts.append("<h3>settings ranked by median UDR (no labels used), beside the supervised medians</h3>")
    parts.append(table(["setting", "runs", "udr"] + [short(c) for c in sup], rows, css="ranking"))
    if sup:
        from scipy.stats import spearmanr
        corr_rows = []
        for c in sup:
            both = done[["udr", c]].dropna()
            ok = len(both) >= 3 and both["udr"].nunique() > 1 and both[c].nunique() > 1
            rho = spearmanr(both["udr"], both[c]) if ok else None
            per = med.join(ranking["udr"]).dropna()
            ok = len(per) >= 3 and per["udr"].nunique() > 1 and per[c].nunique() > 1
            rho_s = spearmanr(per["udr"], per[c]).statistic if ok else None
            corr_rows.append([label(c), len(both), rho.statistic if rho else None, rho.pvalue if rho else None, rho_s])
        parts.append("<h3>rank correlation of UDR with the supervised metrics</h3>")
        parts.append(table(["metric", "runs", "Spearman rho over runs", "p-value", "rho over setting medians"],
                           corr_rows))
    return "".join(parts)


def render_study_report(study_dir: str | os.PathLike, frame=None) -> tuple[str, dict[str, bytes]]:
    """The page's HTML and its charts {file name: PNG bytes}."""
    from untwine import __version__
    from untwine.study.table import study_table
    study_dir = Path(study_dir)
    study = read_study(study_dir)
    frame = study_table(study_dir) if frame is None else frame
    done = frame[frame["status"] == "done"]
    heads = headline_columns(done)
    extra = [c for c in ("udr", "udr_lasso", "udr_spearman", RECON) if c in done and done[c].notna().any()]
    supervised = [c for c in heads if not c.startswith(UNSUPERVISED_PREFIXES)]
    shown = heads + extra
    labels = {c: label(c) for c in shown}
    pngs: dict[str, bytes] = {}
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    title = f"untwine study: {study.name}"
    body = [f"<header><h1>{esc(title)}</h1><p class=\"muted\">{esc(study.description)} written {esc(stamp)} by "
            f"untwine {esc(__version__)} from {esc(study_dir)}; click a picture to open it full size</p></header>"]
    body.append('<nav><a href="#status">runs</a> · <a href="#medians">medians</a> · <a href="#distributions">'
                'distributions</a> · <a href="#tradeoff">reconstruction vs disentanglement</a> · '
                '<a href="#agreement">do the metrics agree?</a> · <a href="#udr">UDR</a></nav>')
    body.append('<section id="status"><h2>runs</h2>' + _status(frame) + _invocations(study_dir))
    spec = (study_dir / STUDY_YAML).read_text() if (study_dir / STUDY_YAML).is_file() else ""
    body.append(details("the study's spec (study.yaml)", f"<pre>{esc(spec)}</pre>"))
    cols = [c for c in ["run", "status", "seed", *[k for k in frame.columns if k.startswith(("objective.", "data."))],
                        "steps", "train_seconds", "images_per_second", *shown] if c in frame]
    body.append(details("every run (study.csv has every column)",
                        table(cols, frame[cols].astype(object).where(frame[cols].notna(), None).values.tolist())))
    body.append("</section>")
    if not len(done):
        body.append(note("no run has finished yet: nothing to aggregate"))
    else:
        body.append('<section id="medians"><h2>medians over seeds</h2>' + _medians(done, shown) + "</section>")
        body.append('<section id="distributions"><h2>distribution over seeds, per method and hyper-parameter</h2>')
        pngs["distributions.png"] = plots.distributions_png(done, shown, labels)
        body.append(_fig(pngs["distributions.png"], "each box: the runs of one setting (seeds); each dot: a run"))
        body.append('</section><section id="tradeoff"><h2>reconstruction against disentanglement</h2>')
        pngs["tradeoff.png"] = plots.tradeoff_png(done, RECON, supervised + [c for c in extra if c != RECON], labels)
        body.append(_fig(pngs["tradeoff.png"], "each point a run: held-out reconstruction NLL (x) against each "
                                               "disentanglement score (y); colour = method, marker = setting"))
        body.append('</section><section id="agreement"><h2>do the metrics agree?</h2>')
        matrix = spearman_matrix(done, shown)
        pngs["rank_correlation.png"] = plots.correlation_png(matrix, [short(c) for c in shown])
        body.append(_fig(pngs["rank_correlation.png"], "Spearman rank correlation between the scores over the "
                                                       "finished runs (blank: fewer than 3 runs or a constant score)"))
        body.append('</section><section id="udr"><h2>unsupervised model selection (UDR, Duan et al. 2020)</h2>')
        body.append(note(f"UDR compares runs of one setting that differ only in seed ({study.udr['num_points']} "
                         f"held-out images, {study.udr['correlation']} similarity, dimensions with mean KL <= "
                         f"{study.udr['kl_threshold']} filtered); a run's UDR is the median over its pairs. "
                         f"Higher: the seeds agree on the axes, which Duan et al. find tracks disentanglement."))
        body.append(_udr_section(done, supervised) + "</section>")
    html_text = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
                 f'<meta name="viewport" content="width=device-width, initial-scale=1">'
                 f"<title>{esc(title)}</title><style>{STUDY_CSS}</style></head>"
                 f"<body><main>{''.join(body)}</main><script>{SCRIPT}</script></body></html>\n")
    return html_text, {k: v for k, v in pngs.items() if v}


def _fig(png: bytes | None, caption: str) -> str:
    return figure(png, "image/png", caption) if png else note(f"not drawn: no finished run has these scores ({caption})")


def write_study_report(study_dir: str | os.PathLike, out: str | os.PathLike | None = None, frame=None) -> Path:
    """Write DIR/study.html (or `out`) and DIR/plots/*.png; returns the page's path."""
    study_dir = Path(study_dir)
    page, pngs = render_study_report(study_dir, frame)
    for name, data in pngs.items():
        atomic_write_bytes(study_dir / PLOTS_DIR / name, data)
    return atomic_write_bytes(Path(out) if out is not None else study_dir / REPORT_NAME, page.encode("utf-8"))


__all__ = ["headline_columns", "render_study_report", "spearman_matrix", "write_study_report"]
