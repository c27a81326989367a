"""Scores as a person reads them, in the console and on the report page alike.

    number(512) == "512"; number(0.000123) == "0.000123"; number(0.12345) == "0.1235"
    better("bce") == "lower"; better("mig") == "higher"
    protocol_of(metrics["_meta"])          # "fast", "standard", "full" or "custom"
    score_rows(metrics)                    # [(metric, headline, better, details)], stage 1's for a multi-stage run
    stage_rows(metrics["multistage"])      # [(measure, stage 1, combined, better)]
    print_evaluation(metrics)              # both tables, with the protocol in the title

Integers print as integers, floats with 4 significant digits (never cut to "0.000"), and every score
where lower is better says so. No torch, no matplotlib: the CLI imports this after a run.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

from untwine.report.scores import headline_key, is_number

#: keys (a metric's headline or a measure) where a lower value is the better one
LOWER = {"bce", "bce_excess", "sse", "mse", "fd", "w_change", "w_change_held", "code_change",
         "gaussian_total_correlation", "gaussian_wasserstein_correlation", "gaussian_wasserstein_correlation_norm",
         "loss", "recon"}
#: keys that are neither better nor worse: sizes, seeds, the data's own entropy
NEUTRAL = {"n", "seed", "iwae_samples", "bce_floor", "step", "resamples", "num_active_dims", "num_train",
           "num_test", "num_samples", "num_encoded", "reconstruction_applicable"}


def number(value: Any, digits: int = 4) -> str:
    """A value's text: integers (and integral floats) whole, floats to `digits` significant digits
    (0.000123, 1.2e-07: never "0.000"), None as a dash, booleans as yes/no."""
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "inf" if value > 0 else "-inf" if value < 0 else "nan"
        if value.is_integer() and abs(value) < 1e9:
            return str(int(value))
        if 100 <= abs(value) < 1e6:  # nats, FD: one decimal, not -629.96 cut to "-630"
            return f"{value:.1f}"
        return f"{value:.{digits}g}"
    return str(value)


def better(key: str) -> str:
    """'lower', 'higher' or '' (a size or a seed) for a score's key or path ("multistage/fd_ratio")."""
    key = str(key).rsplit("/", 1)[-1]
    if key in NEUTRAL:
        return ""
    if key in LOWER or key.endswith("_ratio"):
        return "lower"
    return "higher"


def arrow(key: str) -> str:
    """'(lower is better)' where it is, else '' (higher is the default a reader assumes)."""
    return "(lower is better)" if better(key) == "lower" else ""


def protocol_of(meta: Mapping | None) -> str | None:
    """The protocol scores were measured under: _meta["protocol"], else inferred from _meta["params"]
    (files written before the protocol was recorded), else None."""
    meta = meta if isinstance(meta, Mapping) else {}
    if isinstance(meta.get("protocol"), str):
        return meta["protocol"]
    params = meta.get("params")
    if isinstance(params, Mapping) and params:
        from untwine.metrics.protocol import protocol_name
        try:
            return protocol_name(plan=params)
        except Exception:  # noqa: BLE001 - an unknown metric in an old file: not one of ours
            return "custom"
    return None


def protocol_note(meta: Mapping | None) -> str:
    """'fast protocol: smaller samples ...' or 'custom protocol: mig (num_train 2000), ...'."""
    name = protocol_of(meta)
    if name is None:
        return ""
    from untwine.metrics.protocol import PRESET_NOTES
    if name in PRESET_NOTES:
        return f"{name} protocol: {PRESET_NOTES[name]}"
    params = (meta or {}).get("params") if isinstance(meta, Mapping) else None
    if isinstance(params, Mapping):
        sizes = []
        for metric, p in params.items():
            shown = ", ".join(f"{k} {number(v)}" for k, v in (p or {}).items() if str(k).startswith("num_"))
            sizes.append(f"{metric} ({shown})" if shown else str(metric))
        return f"{name} protocol: " + "; ".join(sizes)
    return f"{name} protocol"


def score_rows(metrics: Mapping) -> list[tuple[str, str, str, str]]:
    """(metric, headline score, better, other numbers) per metric result of a record; sections
    (multistage) and bookkeeping (_meta, step) are left out."""
    rows = []
    for name, res in metrics.items():
        name = str(name)
        if name.startswith("_") or name in ("step", "multistage") or not isinstance(res, Mapping):
            continue
        if "skipped" in res:
            rows.append((name, "-", "", f"skipped: {res['skipped']}"))
            continue
        head = headline_key(name, res)
        others = ", ".join(f"{k} {number(v)}" for k, v in res.items()
                           if k != head and (is_number(v) or isinstance(v, bool)))
        label = f"{name} ({head})" if head and head != name else name
        rows.append((label, number(res[head]) if head else "-", better(head or name) if head else "", others))
    return rows


# measure, section of a stage, key: the multi-stage comparison, in reading order
STAGE_MEASURES = (
    ("reconstruction BCE (nats/image)", "reconstruction", "bce"),
    ("BCE above the images' entropy", "reconstruction", "bce_excess"),
    ("reconstruction SSE", "reconstruction", "sse"),
    ("reconstruction MSE", "reconstruction", "mse"),
    ("PSNR (dB)", "reconstruction", "psnr"),
    ("SSIM", "reconstruction", "ssim"),
    ("ELBO, sampled (nats)", "reconstruction", "elbo_sampled"),
    ("IWAE bound (nats)", "reconstruction", "iwae"),
    ("log p2(x | y), stage 2 given y (nats)", "reconstruction", "log_p_x_given_y"),
    ("samples: Frechet distance", "samples", "fd"),
    ("samples: precision", "samples", "precision"),
    ("samples: recall", "samples", "recall"),
    ("factor accuracy (mean)", "factor_accuracy", "mean"),
    ("  the classifier's own held-out accuracy", "classifier_accuracy", "mean"),
)
# what a bijective stage 2 (the flow) gets exactly by construction: not a result
NOT_APPLICABLE = ("bce", "bce_excess", "sse", "mse", "psnr", "ssim", "mean")
# the combined model's own measures and the summary's ratios: one value each
SUMMARY_MEASURES = (
    ("BCE ratio, combined / stage 1", "summary", "bce_ratio"),
    ("excess-BCE ratio, combined / stage 1", "summary", "bce_excess_ratio"),
    ("SSE ratio, combined / stage 1", "summary", "sse_ratio"),
    ("FD ratio, combined / stage 1", "summary", "fd_ratio"),
    ("w changes factor predictions (share)", "summary", "w_change"),
    ("  on the factors stage 1 holds", "summary", "w_change_held"),
    ("w moves stage 1's code (variance share)", "summary", "code_change"),
)


def stage_section(stages: Mapping, stage: str, section: str) -> Mapping:
    """stages[stage][section]; a reconstruction-only evaluation keeps its numbers in stages[stage] itself."""
    node = stages.get(stage) if isinstance(stages.get(stage), Mapping) else {}
    if section == "reconstruction" and "reconstruction" not in node:
        return node
    value = node.get(section)
    return value if isinstance(value, Mapping) else {}


def stage_rows(stages: Mapping) -> list[tuple[str, Any, Any, str]]:
    """(measure, stage 1's value, the combined model's, better) for every measure either has; the
    summary's ratios and w's effect as (measure, "", value, better): one value for both. A bijective stage 2 (the flow)
    shows its reconstruction as not applicable (None) and no ratios."""
    rows = []
    applicable = stage_section(stages, "combined", "reconstruction").get("reconstruction_applicable", True)
    # binary images (dSprites) have no entropy to subtract: the excess BCE is the BCE, said once
    same = all(stage_section(stages, st, "reconstruction").get("bce_floor") == 0
               for st in ("stage1", "combined") if st in stages)
    skip = {"bce_excess", "bce_excess_ratio"} if same else set()
    for label, section, key in STAGE_MEASURES:
        if key in skip:
            continue
        s1 = stage_section(stages, "stage1", section).get(key)
        comb = stage_section(stages, "combined", section).get(key)
        if s1 is None and comb is None:
            continue
        if applicable is False and key in NOT_APPLICABLE:
            comb = "n/a (bijective)"
        rows.append((label, s1, comb, better(key)))
    summary = stages.get("summary") if isinstance(stages.get("summary"), Mapping) else {}
    for label, _, key in SUMMARY_MEASURES:
        if key in summary and key not in skip:
            value = summary[key]
            if value is None and key.endswith("_ratio") and summary.get("reconstruction_applicable") is False:
                value = "n/a (bijective)"
            if value is not None:
                rows.append((label, "", value, better(key)))
    return rows


def print_evaluation(metrics: Mapping, console=None, title: str = "evaluation") -> None:
    """The end-of-run (and `untwine evaluate`) tables: disentanglement scores with their protocol,
    then stage 1 against the combined model for a multi-stage run."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console()
    meta = metrics.get("_meta") if isinstance(metrics.get("_meta"), Mapping) else {}
    rows = score_rows(metrics)
    if rows:
        protocol = protocol_of(meta)
        table = Table(title=escape(f"{title}: disentanglement" + (f", {protocol} protocol" if protocol else "")),
                      caption=escape(protocol_note(meta)) or None)
        table.add_column("metric")
        table.add_column("score", justify="right")
        table.add_column("better")
        table.add_column("details")
        for name, score, good, others in rows:
            table.add_row(escape(name), score, good, escape(others))
        console.print(table)
    stages = metrics.get("multistage")
    if isinstance(stages, Mapping):
        srows = stage_rows(stages)
        if srows:
            n = stages.get("n")
            table = Table(title=escape(f"{title}: stage 1 against the combined model"
                                       + (f" ({number(n)} held-out images)" if n is not None else "")),
                          caption="the disentanglement scores above are stage 1's: stage 2 keeps its code")
            table.add_column("measure")
            table.add_column("stage 1", justify="right")
            table.add_column("combined", justify="right")
            table.add_column("better")
            for label, s1, comb, good in srows:
                table.add_row(escape(label), number(s1), escape(number(comb)), good)
            console.print(table)
