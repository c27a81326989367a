"""Headline scores out of a metrics record of any depth.

metrics.json is {"step": N, "<metric>": {...}, "_meta": {...}} for one model, and may nest sections
for a multi-stage run: {"stage1": {"mig": {...}}, "combined": {...}}. Scores are named by their path
("combined/mig"); a section this module does not know is walked, never rejected.
"""
from __future__ import annotations

from typing import Any, Mapping

NOT_SCORES = ("step",)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def headline_key(metric: str, result: Mapping) -> str | None:
    """The key of a metric result's headline number: the protocol's choice, else the metric's own name."""
    from untwine.metrics.protocol import HEADLINE
    for key in (HEADLINE.get(metric), metric):
        if key is not None and is_number(result.get(key)):
            return key
    return None


def metric_scores(record: Mapping | None, prefix: str = "") -> dict[str, float]:
    """{metric path: headline score}; skipped metrics and private keys ("_meta") are left out; a result
    without a headline contributes each of its numbers ("recon/psnr")."""
    out: dict[str, float] = {}
    for key, value in (record or {}).items():
        key = str(key)
        if key.startswith("_") or key in NOT_SCORES:
            continue
        path = prefix + key
        if is_number(value):
            out[path] = float(value)
        elif isinstance(value, Mapping) and "skipped" not in value:
            head = headline_key(key, value)
            if head is not None:
                out[path] = float(value[head])
            else:
                out.update(metric_scores(value, path + "/"))
    return out
