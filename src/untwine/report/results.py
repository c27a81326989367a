"""Metric records as HTML tables, for any shape of record.

A node of the record is a mapping. Its children that hold no mapping are metric results:
one row each in a scores table (headline score, other numbers), their per-factor lists gathered in
one per-factor table (rows: the factors named in _meta), their other lists and matrices in
collapsible tables. Children that hold mappings are sections (a multi-stage run's "stage1",
"combined"): a heading each, rendered the same way. Unknown keys are shown, never an error.
"""
from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

from untwine.report.console import NOT_APPLICABLE, better, number, protocol_note, stage_rows, stage_section
from untwine.report.html import details, esc, fmt, fmt_plain, table
from untwine.report.scores import headline_key, is_number


def _is_vector(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(is_number(v) for v in value)


def _is_matrix(value: Any) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) > 0 and all(_is_vector(r) for r in value)
            and len({len(r) for r in value}) == 1)


def _is_section(node: Mapping) -> bool:
    """A mapping of mappings (a stage's results); metric results hold numbers, lists and text only."""
    return "skipped" not in node and any(isinstance(v, Mapping) for k, v in node.items() if not str(k).startswith("_"))


def _labels(n: int, names: Sequence[str] | None, prefix: str) -> list[str]:
    return list(names) if names is not None and len(names) == n else [f"{prefix}{i}" for i in range(n)]


def _scores_table(results: Mapping[str, Mapping]) -> str:
    rows = []
    for name, res in results.items():
        if "skipped" in res:
            rows.append([name, None, "", f"skipped: {res['skipped']}"])
            continue
        head = headline_key(name, res)
        others = ", ".join(f"{k}={fmt_plain(v)}" for k, v in res.items()
                           if k != head and (is_number(v) or isinstance(v, (str, bool))))
        rows.append([name, res[head] if head else None, better(head) if head else "",
                     (f"({head}) " if head and head != name else "") + others])
    return table(["metric", "score", "better", "details"], rows, css="scores")


def is_stages(node: Any) -> bool:
    """A multi-stage evaluation: stage 1 and the combined model measured on the same images."""
    return isinstance(node, Mapping) and isinstance(node.get("stage1"), Mapping) and isinstance(
        node.get("combined"), Mapping)


def stage_table(stages: Mapping) -> str:
    """Stage 1 against the combined model, one row per measure (the console's table), the images'
    entropy (the BCE floor, the same for both) said once below."""
    rows = [[label, s1, comb, good] for label, s1, comb, good in stage_rows(stages)]
    parts = [table(["measure", "stage 1", "combined", "better"], rows, css="stages")] if rows else []
    floor = stage_section(stages, "stage1", "reconstruction").get("bce_floor")
    notes = []
    if is_number(floor):
        notes.append(f"BCE floor (the images' own entropy, the same for both): {number(floor)} nats/image"
                     + ("; binary images: the BCE above it is the BCE itself" if floor == 0 else ""))
    if stage_section(stages, "combined", "reconstruction").get("reconstruction_applicable") is False:
        notes.append("stage 2 is bijective (a flow): it reconstructs every image exactly by construction, so its "
                     + ", ".join(NOT_APPLICABLE[:-1]) + " and factor accuracy are not results")
    if is_number(stages.get("n")):
        notes.append(f"{number(stages['n'])} held-out images, seed {number(stages.get('seed', 0))}")
    if notes:
        parts.append('<p class="muted">' + "<br>".join(esc(n) for n in notes) + "</p>")
    return "".join(parts)


def _own_factors(res: Mapping, factors: Sequence[str] | None) -> Sequence[str] | None:
    """The factors a result's per-factor lists follow: its own factor_names (mig_sampling leaves
    dSprites' shape out) else the evaluation's."""
    own = res.get("factor_names")
    return [str(f) for f in own] if isinstance(own, list) and own else factors


def _is_per_factor(key: str, value: Any, names: Sequence[str] | None) -> bool:
    return names is not None and _is_vector(value) and len(value) == len(names) and key != "factors_used"


def _per_factor_table(results: Mapping[str, Mapping], factors: Sequence[str]) -> str:
    """Rows: the evaluation's factors; a column per per-factor list, aligned by factor name."""
    columns = []
    for name, res in results.items():
        names = _own_factors(res, factors)
        if not set(names) <= set(factors):
            continue
        for key, value in res.items():
            if _is_per_factor(key, value, names):
                columns.append((name, key, dict(zip(names, value))))
    if not columns:
        return ""
    header = ["factor"] + [f"{esc(name)}<br><small>{esc(key)}</small>" for name, key, _ in columns]
    rows = [[f] + [col.get(f) for _, _, col in columns] for f in factors]
    return "<h4>per factor</h4>" + table(header, rows, css="per-factor", raw_header=True, shade=True)


def _arrays(name: str, res: Mapping, factors: Sequence[str] | None) -> list[str]:
    """A metric's lists and matrices other than its per-factor lists, each in a collapsed table.
    A matrix side as long as the factor list is labelled by factor; the other side is the code
    (z0, z1, ...); a square matrix reads codes down, factors across (importance, SAP scores)."""
    out = []
    names = _own_factors(res, factors)
    for key, value in res.items():
        if _is_matrix(value):
            n_rows, n_cols = len(value), len(value[0])
            by_factor_rows = names is not None and n_rows == len(names) and n_cols != len(names)
            rows = _labels(n_rows, names if by_factor_rows else None, "z")
            header = [""] + _labels(n_cols, None if by_factor_rows else names, "z" if by_factor_rows else "#")
            body = table(header, [[r] + list(v) for r, v in zip(rows, value)], css="matrix", shade=True)
            out.append(details(f"{name}: {key} ({n_rows} x {n_cols})", body))
        elif _is_vector(value) and not _is_per_factor(key, value, names):
            header = [""] + _labels(len(value), None, "z" if key.endswith(("_per_code", "entropies")) else "#")
            out.append(details(f"{name}: {key} ({len(value)})", table(header, [[key] + list(value)], shade=True)))
        elif isinstance(value, (list, tuple)) and value and not _is_vector(value) and not _is_matrix(value):
            out.append(details(f"{name}: {key}", f"<pre>{esc(json.dumps(value, indent=1, default=str))}</pre>"))
    return out


def render_results(node: Mapping, factors: Sequence[str] | None = None, level: int = 3) -> str:
    """HTML for a metrics record or one of its sections."""
    meta = node.get("_meta") if isinstance(node.get("_meta"), Mapping) else {}
    own = meta.get("factors")
    factors = [str(f) for f in own] if isinstance(own, list) else factors
    children = {str(k): v for k, v in node.items() if isinstance(v, Mapping) and not str(k).startswith("_")}
    results = {k: v for k, v in children.items() if not _is_section(v)}
    sections = {k: v for k, v in children.items() if _is_section(v)}
    plain = [(str(k), v) for k, v in node.items()
             if not isinstance(v, Mapping) and not str(k).startswith("_") and str(k) != "step"]
    parts = []
    if "step" in node:
        parts.append(f'<p class="muted">at step {fmt(node["step"])}</p>')
    if results and protocol_note(meta):
        parts.append(f'<p class="muted protocol">{esc(protocol_note(meta))}</p>')
    if plain:
        parts.append(table(None, plain))
    if results:
        parts.append(_scores_table(results))
        if factors:
            parts.append(_per_factor_table(results, factors))
        extra = [a for name, res in results.items() for a in _arrays(name, res, factors)]
        if extra:
            parts.append('<div class="arrays">' + "".join(extra) + "</div>")
    h = min(level, 6)
    for name, sub in sections.items():
        if is_stages(sub):  # one compact table; every number the evaluation wrote, collapsed below it
            parts.append(f'<section class="sub"><h{h}>{esc(name)}: stage 1 against the combined model</h{h}>'
                         f'{stage_table(sub)}'
                         f'{details("every number of this evaluation", render_results(sub, factors, level + 1))}'
                         f'</section>')
            continue
        parts.append(f'<section class="sub"><h{h}>{esc(name)}</h{h}>{render_results(sub, factors, level + 1)}</section>')
    if meta:
        parts.append(details("evaluation details (_meta)", f"<pre>{esc(json.dumps(meta, indent=1, default=str))}</pre>"))
    if not parts:
        parts.append('<p class="muted">(empty)</p>')
    return "".join(parts)
