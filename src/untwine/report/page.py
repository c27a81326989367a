"""The HTML run report: one self-contained page (CSS inline, pictures as data URIs, no external URL).

    write_report(["runs/a"])                       # -> runs/a/report.html
    write_report(["runs/a", "runs/b"], "cmp.html")  # several runs side by side

A run's section: facts, the resolved config (collapsed), training curves drawn from logs/train.csv,
the final metrics with per-factor tables, metrics over training (metrics.jsonl), every picture in
pictures/. Several runs add a comparison: a table (one row per run) and charts (scores per metric,
recon and KL of all runs overlaid). Whatever is missing is said on the page.
"""
from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from untwine.errors import ConfigError
from untwine.io import atomic_write_bytes
from untwine.report import plots
from untwine.report.html import details, esc, figure, note, table
from untwine.report.console import protocol_of
from untwine.report.results import is_stages, render_results, stage_table
from untwine.report.rundir import PICTURE_TYPES, RunRecord, read_run
from untwine.report.runs import comparison_rows, headline_scores, section_text
from untwine.report.scores import metric_scores

REPORT_NAME = "report.html"
FINAL_TERMS = ("loss", "recon", "kl")
SMALL_PICTURE = 400  # px: narrower pictures are shown at twice their size, pixels kept sharp

CSS = """
:root { --fg: #1d232a; --muted: #5f6b76; --line: #d5dbe1; --bg: #ffffff; --band: #f3f5f7; --accent: #2171b5; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       color: var(--fg); background: var(--bg); }
main { max-width: 1180px; margin: 0 auto; padding: 1.2rem 1.5rem 4rem; }
header { border-bottom: 2px solid var(--accent); margin-bottom: 1rem; }
h1 { font-size: 1.6rem; margin: .2rem 0 .3rem; }
h2 { font-size: 1.35rem; margin: 2.2rem 0 .6rem; padding-bottom: .2rem; border-bottom: 1px solid var(--line); }
h3 { font-size: 1.1rem; margin: 1.6rem 0 .5rem; }
h4, h5, h6 { font-size: 1rem; margin: 1rem 0 .4rem; }
.muted, figcaption { color: var(--muted); font-size: .9rem; }
nav ul { margin: .3rem 0; padding-left: 1.2rem; }
a { color: var(--accent); }
.scroll { overflow-x: auto; max-width: 100%; margin: .4rem 0 .8rem; }
table { border-collapse: collapse; font-size: .88rem; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid var(--line); padding: .22rem .55rem; text-align: left; vertical-align: top; }
thead th { background: var(--band); position: sticky; top: 0; }
td.num { text-align: right; white-space: nowrap; }
tbody th { font-weight: 600; white-space: nowrap; background: #fafbfc; }
table.facts th { width: 12rem; }
table.facts td.num { text-align: left; }
table.side { min-width: 60%; }
table.side thead th { overflow-wrap: anywhere; }
table.side tbody th { white-space: normal; min-width: 12rem; }
table.side td { overflow-wrap: anywhere; }
table.stages td.num { min-width: 6rem; }
table.scores td:last-child { color: var(--muted); font-size: .82rem; min-width: 18rem; }
small { font-weight: normal; color: var(--muted); }
details { margin: .35rem 0; border: 1px solid var(--line); border-radius: 4px; padding: .25rem .6rem; }
details > summary { cursor: pointer; font-weight: 600; }
pre { overflow: auto; max-height: 32rem; background: var(--band); padding: .6rem .8rem; font-size: .82rem;
      border-radius: 4px; }
.problems { background: #fff6e0; border: 1px solid #e8c66a; border-radius: 4px; padding: .5rem .9rem; }
.problems ul { margin: .2rem 0; }
.note { background: var(--band); border-left: 4px solid #9aa7b2; padding: .4rem .8rem; }
.pictures { display: flex; flex-direction: column; gap: 1rem; }
figure { margin: 0; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); cursor: zoom-in; background: #fff; }
img.pixel { image-rendering: pixelated; }
section.sub { margin-left: .6rem; padding-left: .8rem; border-left: 3px solid var(--band); }
#lightbox { position: fixed; inset: 0; background: rgba(20, 24, 28, .88); overflow: auto; z-index: 10;
            display: flex; cursor: zoom-out; }
#lightbox[hidden] { display: none; }
#lightbox img { margin: auto; max-width: none; image-rendering: pixelated; background: #fff; }
"""

# click a picture: show it at full size over the page; click again or Escape to close
SCRIPT = """
(function () {
  var box = document.createElement('div');
  box.id = 'lightbox';
  box.hidden = true;
  var big = document.createElement('img');
  big.alt = 'full size';
  box.appendChild(big);
  document.body.appendChild(box);
  function close() { box.hidden = true; big.removeAttribute('src'); }
  document.addEventListener('click', function (e) {
    var img = e.target.closest ? e.target.closest('img.zoomable') : null;
    if (img) { big.src = img.src; box.hidden = false; box.scrollTo(0, 0); return; }
    if (!box.hidden) { close(); }
  });
  document.addEventListener('keydown', function (e) { if (e.key === 'Escape') { close(); } });
})();
"""


def _facts(run: RunRecord) -> str:
    c, s = run.config, run.summary or {}
    data, model, optim, trainer = (run.section(k) for k in ("data", "model", "optim", "trainer"))
    rows = [("directory", str(run.path)), ("config name (run.name)", run.label),
            ("dataset", data.get("name")),
            ("model", ", ".join(f"{k}={model[k]}" for k in ("arch", "latent_dim", "likelihood") if k in model) or None),
            ("objective", section_text(run.section("objective")) if "objective" in c else None),
            ("controller", section_text(run.section("controller")) if "controller" in c else None),
            ("optimiser", f"batch {optim.get('batch_size')}, lr {optim.get('lr')}" if optim else None),
            ("steps", run.steps), ("seed", trainer.get("seed")),
            ("resumed from step", s.get("start_step") or None),
            ("device", ", ".join(str(v) for v in (s.get("device"), s.get("precision"),
                                                  f"{s['cpu_threads']} CPU threads" if s.get("cpu_threads") else None)
                                 if v) or None),
            ("training time", f"{s['wall_seconds']:.1f} s" if isinstance(s.get("wall_seconds"), (int, float)) else None),
            ("rows per second" if run.is_table else "images per second", s.get("images_per_second"))]
    rows += [(f"final {t}", run.final_term(t)) for t in FINAL_TERMS]
    return table(None, [r for r in rows if r[1] is not None], css="facts")


def _picture(path: Path, base: Path) -> str:
    data = path.read_bytes()
    caption = str(path.relative_to(base))
    mime = PICTURE_TYPES[path.suffix.lower()]
    css = ""
    if mime in ("image/png", "image/gif"):
        try:
            from PIL import Image
            with Image.open(path) as im:
                width = im.size[0]
        except (OSError, ValueError):
            return note(f"{caption} is not a readable picture; left out")
        if width < SMALL_PICTURE:
            # show the (tiny) image tiles at twice their size
            return figure(data, mime, caption, css="pixel", width=2 * width)
        css = "pixel" if path.stem in ("reconstructions", "traversals", "side_by_side") else ""
    return figure(data, mime, caption, css=css)


def _evaluations(run: RunRecord) -> str:
    scores = [(e.get("step"), metric_scores(e)) for e in run.evaluations]
    names = sorted({m for _, s in scores for m in s})
    protocols = sorted({p for p in (protocol_of(e.get("_meta")) for e in run.evaluations) if p})
    said = f'<p class="muted">{esc(" / ".join(protocols))} protocol</p>' if protocols else ""
    return said + table(["step"] + names, [[step] + [s.get(m) for m in names] for step, s in scores], css="evals")


def _run_section(run: RunRecord, anchor: str) -> str:
    parts = [f'<section class="run" id="{esc(anchor)}"><h2>{esc(run.name)}</h2>']
    if run.problems:
        items = "".join(f"<li>{esc(p)}</li>" for p in run.problems)
        parts.append(f'<div class="problems"><strong>missing or unreadable</strong><ul>{items}</ul></div>')
    parts.append(_facts(run))
    parts.append("<h3>configuration</h3>")
    parts.append(details("resolved config (config.yaml)", f"<pre>{esc(run.config_text)}</pre>"))
    if run.history_text:
        parts.append(details("resumed with changes (config.history.yaml: the step each resume started at and "
                             "what it changed; config.yaml is the run's start)", f"<pre>{esc(run.history_text)}</pre>"))

    parts.append("<h3>training curves</h3>")
    png = plots.training_curves_png(run.log) if run.log else None
    parts.append(figure(png, "image/png", "training terms from logs/train.csv, one panel per term")
                 if png else note("no training curves: logs/train.csv is missing or has no rows"))

    parts.append("<h3>final metrics</h3>")
    parts.append(render_results(run.metrics) if run.metrics else
                 note("no final metrics: metrics.json is missing (trainer.eval_preset=none, or the run "
                      "has not finished); score the run with `untwine evaluate RUN_DIR`"))
    if run.evaluations:
        parts.append("<h3>metrics during training</h3>")
        parts.append(_evaluations(run))

    parts.append("<h3>pictures</h3>")
    if run.pictures:
        parts.append('<div class="pictures">' + "".join(_picture(p, run.path / "pictures") for p in run.pictures)
                     + "</div>")
    else:
        parts.append(note("no pictures: pictures/ is missing or empty (trainer.pictures=false?)"))
    parts.append("</section>")
    return "".join(parts)


def _side_by_side(runs: list[RunRecord]) -> str:
    """One column per run, one row per thing compared (report.runs.comparison_rows, which
    `untwine runs compare` prints too): narrow enough for a laptop however many metrics there are."""
    rows = comparison_rows(runs)
    names = {m for r in runs for m in headline_scores(r)}
    out = table([""] + [r.name for r in runs], rows, css="comparison side")
    if any(r.is_multistage for r in runs) and names:
        out += note("a stage-2 run's disentanglement scores are its stage 1's, exactly: stage 2 keeps stage 1's code")
    return out


def _comparison(runs: list[RunRecord]) -> str:
    parts = ['<section id="comparison"><h2>comparison</h2>', _side_by_side(runs)]
    for r in runs:
        stages = (r.metrics or {}).get("multistage")
        if is_stages(stages):
            parts.append(f"<h3>{esc(r.name)}: stage 1 against the combined model</h3>{stage_table(stages)}")
    scores = [headline_scores(r) for r in runs]
    differ = {m: [s.get(m) for s in scores] for m in {m for s in scores for m in s}}
    differ = {m: v for m, v in differ.items() if len({x for x in v if x is not None}) > 1}
    if differ:
        bars = plots.score_bars_png([r.name for r in runs], [{m: s[m] for m in differ if m in s} for s in scores])
        parts.append(figure(bars, "image/png", "headline score of each metric that differs between runs, per run"))
    curves = plots.compare_curves_png(runs)
    parts.append(figure(curves, "image/png", "reconstruction and KL of every run (a stage-2 run's KL is of w)")
                 if curves else note("no run has a training log to compare"))
    parts.append("</section>")
    return "".join(parts)


def _unique_names(runs: list[RunRecord]) -> None:
    """Runs in folders of the same name are told apart by their full path."""
    names = [r.name for r in runs]
    for r in runs:
        if names.count(r.name) > 1:
            r.name = str(r.path)


def render_report(runs: list[RunRecord], title: str | None = None) -> str:
    from untwine import __version__
    if title is None:
        title = f"untwine report: {runs[0].name}" if len(runs) == 1 else f"untwine report: {len(runs)} runs"
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    anchors = [f"run-{i}" for i in range(len(runs))]
    body = [f"<header><h1>{esc(title)}</h1><p class=\"muted\">written {esc(stamp)} by untwine "
            f"{esc(__version__)}; click a picture to open it full size</p></header>"]
    if len(runs) > 1:
        links = "".join(f'<li><a href="#{a}">{esc(r.name)}</a></li>' for a, r in zip(anchors, runs))
        body.append(f'<nav><a href="#comparison">comparison</a><ul>{links}</ul></nav>')
        body.append(_comparison(runs))
    body += [_run_section(r, a) for r, a in zip(runs, anchors)]
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head>"
            f"<body><main>{''.join(body)}</main><script>{SCRIPT}</script></body></html>\n")


def write_report(run_dirs: "Sequence[Path | str] | Path | str", out: "Path | str | None" = None,
                 title: str | None = None, names: "Sequence[str] | None" = None) -> Path:
    """Write one self-contained report.html for one or several runs; returns its path.

    Default out: RUN_DIR/report.html for one run, ./report.html for several. `title`: the page's
    (default "untwine report: RUN" or "N runs"); `names`: each run's heading (default its folder's
    name). A path that is not a run directory raises CheckpointError naming it."""
    if isinstance(run_dirs, (str, os.PathLike)):
        run_dirs = [run_dirs]
    run_dirs = list(run_dirs)
    if not run_dirs:
        raise ConfigError("write_report needs at least one run directory; e.g. write_report(['runs/a'])")
    runs = [read_run(d) for d in run_dirs]
    if names is not None:
        for run, name in zip(runs, names):
            run.name = str(name)
    _unique_names(runs)
    if out is None:
        out = runs[0].path / REPORT_NAME if len(runs) == 1 else Path(REPORT_NAME)
    out = Path(out)
    if out.is_dir():
        out = out / REPORT_NAME
    return atomic_write_bytes(out, render_report(runs, title).encode("utf-8"))
