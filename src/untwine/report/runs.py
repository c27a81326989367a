"""`untwine runs [DIR]` and `untwine runs compare A B [C ...]`: run directories in the terminal.

    untwine runs runs/                  # every run under runs/ (recursive): preset, method, steps,
                                        # status, headline scores
    untwine runs compare runs/a runs/b  # the numbers a reader compares, one column per run

The comparison rows are the HTML report's (`comparison_rows`, shared with report.page), read by
report.rundir and report.scores; a table when the output is a terminal, plain aligned text when
it is piped. No torch, no matplotlib.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from untwine.errors import CheckpointError, ConfigError
from untwine.report.console import better, number, protocol_of, stage_rows, stage_section
from untwine.report.rundir import RunRecord, read_run
from untwine.report.scores import headline_key, metric_scores

RUN_MARKER = "config.yaml"
#: headline scores `untwine runs` shows, in this order, where any listed run has them
LIST_SCORES = ("mig", "dci", "factor_vae", "beta_vae", "sap", "mig_sampling", "modularity_explicitness", "factor_r2")
MAX_SCORE_COLUMNS = 4
#: a run with nothing but its config this long after it was written did not start training
ABANDONED_SECONDS = 600


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "runs", help="list the runs under a folder (preset, steps, status, headline scores), or compare runs",
        description="untwine runs [DIR]: every run directory under DIR (default ./runs, searched recursively)\n"
                    "untwine runs compare RUN_A RUN_B [RUN ...]: the numbers a reader compares, side by side\n"
                    "(`untwine report RUN_A RUN_B` writes the same comparison as HTML, with pictures and curves)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("args", nargs="*", metavar="DIR | compare RUN ...",
                   help="a folder to list (default runs), or `compare` then two or more run directories")
    p.set_defaults(func=_runs)


def _runs(args) -> int:
    words = list(args.args)
    if words[:1] == ["compare"]:
        if len(words) < 3:
            raise ConfigError("untwine runs compare needs two or more run directories, e.g. "
                              "`untwine runs compare runs/a runs/b` (see `untwine runs` for the runs there are)")
        print_comparison([read_run(p) for p in words[1:]])
        return 0
    if len(words) > 1:
        raise ConfigError(f"untwine runs takes one folder; got {words}. To compare runs: "
                          f"`untwine runs compare {' '.join(words)}`")
    print_runs(words[0] if words else "runs")
    return 0


# -- finding and reading runs --------------------------------------------------------------------
def find_runs(root: str | os.PathLike) -> list[Path]:
    """Run directories under root (root itself included), sorted: folders holding config.yaml. A
    run's own subfolders are not searched (a multi-stage run keeps a copy of stage 1's config)."""
    root = Path(root)
    if not root.is_dir():
        raise CheckpointError(f"{str(root)!r} is not a folder; give the folder your runs are in (default ./runs, "
                              f"where `untwine train` writes them)")
    found = []
    for folder, dirs, files in os.walk(root):
        if RUN_MARKER in files:
            found.append(Path(folder))
            dirs[:] = []
        else:
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    return sorted(found)


def _checkpoint_step(path: Path) -> int | None:
    for name in ("last", "last.prev"):  # last.prev: a swap interrupted (train.checkpoint)
        try:
            return int(json.loads((path / "checkpoints" / name / "state.json").read_text())["step"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def _total_steps(run: RunRecord) -> int | None:
    """trainer.steps of the run now: config.yaml's, or the last resume's change (config.history.yaml)."""
    steps = run.section("trainer").get("steps")
    try:
        history = yaml.safe_load((run.path / "config.history.yaml").read_text()) or []
    except (OSError, yaml.YAMLError):
        history = []
    for entry in history if isinstance(history, list) else []:
        changed = entry.get("changed") if isinstance(entry, dict) else None
        if isinstance(changed, dict) and "trainer.steps" in changed:
            steps = changed["trainer.steps"]
    return int(steps) if isinstance(steps, (int, float)) else None


def _newest_write(path: Path) -> float:
    return max((p.stat().st_mtime for p in path.rglob("*") if p.is_file()), default=path.stat().st_mtime)


@dataclass
class RunState:
    """Where a run stands: steps done of the total, and a status a person reads."""
    done: int | None
    total: int | None
    status: str
    updated: float  # the newest file's modification time (seconds since the epoch)


def _failure(path: Path) -> dict | None:
    """RUN/failure.json, which the engine writes when a run stops unfinished (None when absent,
    unreadable, or older than the run's summary: a later attempt finished)."""
    import json
    f = path / "failure.json"
    try:
        record = json.loads(f.read_text())
    except (OSError, ValueError):
        return None
    summary = path / "summary.json"
    if summary.is_file() and summary.stat().st_mtime >= f.stat().st_mtime:
        return None
    return record if isinstance(record, dict) else None


def run_state(run: RunRecord) -> RunState:
    """finished: the run wrote its summary at trainer.steps; stopped (time budget): its summary came
    earlier (trainer.max_seconds); evaluating: trained to the end, no summary yet, written to within
    ABANDONED_SECONDS; unfinished: checkpoints or logs but no summary (running, or stopped by a signal
    or the NaN guard: resumable); failed: nothing but its config, long after it began. A run that
    stopped and said why (RUN/failure.json, newer than any summary) shows that: interrupted
    (resumable), diverged (NaN guard) or failed, with the error's type. A process killed outright
    (SIGKILL, a lost node) writes nothing and reads as unfinished: `updated` tells."""
    summary_steps = (run.summary or {}).get("steps")
    candidates = [s for s in (summary_steps if isinstance(summary_steps, (int, float)) else None,
                              _checkpoint_step(run.path), run.steps) if s is not None]
    done = int(max(candidates)) if candidates else None
    total = _total_steps(run)
    updated = _newest_write(run.path)
    recent = time.time() - updated < ABANDONED_SECONDS
    failure = _failure(run.path)
    if failure is not None:
        kind = failure.get("kind")
        status = ("interrupted (resumable)" if kind == "interrupted" and failure.get("kept") else
                  "diverged (NaN guard)" if kind == "diverged" else
                  "interrupted" if kind == "interrupted" else f"failed ({failure.get('error', 'error')})")
    elif run.summary is not None and done is not None and summary_steps == done:
        status = "finished" if total is None or done >= total else "stopped (time budget)"
    elif done is not None and total is not None and done >= total:
        # trained: the final evaluation writes the summary (minutes), unless the run was stopped in it
        status = "evaluating" if recent else "unfinished (no summary)"
    elif done is not None or run.log:
        status = "unfinished"
    elif not recent:
        status = "failed (config only)"
    else:
        status = "starting"
    return RunState(done, total, status, updated)


def headline_scores(run: RunRecord) -> dict[str, float]:
    """A run's top-level disentanglement scores (a multi-stage run's are its stage 1's); the stage
    comparison has its own rows."""
    return {k: v for k, v in metric_scores(run.metrics).items() if "/" not in k}


def section_text(section: dict) -> str:
    """'betavae (beta=4)' from a config section with a name and parameters."""
    name = section.get("name", "?")
    rest = ", ".join(f"{k}={v}" for k, v in section.items() if k != "name")
    return f"{name} ({rest})" if rest else str(name)


def what_trains(run: RunRecord, brief: bool = False) -> str:
    """'betavae (beta=4)' (brief: the objective and its controller, 'betavae + dynamicvae'), or for a
    multi-stage run 'stage 2 (vae, w_dim 16) on RUN'."""
    if run.is_multistage:
        stage2 = run.section("stage2")
        stage1 = Path(str(run.section("stage1").get("run", "?"))).name
        w_dim = f", w_dim {stage2['w_dim']}" if "w_dim" in stage2 else ""
        return f"stage 2 ({stage2.get('name', '?')}{w_dim}) on {stage1}"
    if not run.config.get("objective"):
        return "?"
    if brief:
        return run.objective + (f" + {run.controller}" if run.controller != "none" else "")
    return section_text(run.section("objective"))


def _held_out_bce(run: RunRecord) -> tuple[Any, Any]:
    """(stage 1's, the combined model's) held-out reconstruction BCE where an evaluation measured it."""
    stages = (run.metrics or {}).get("multistage")
    if isinstance(stages, dict):
        return (stage_section(stages, "stage1", "reconstruction").get("bce"),
                stage_section(stages, "combined", "reconstruction").get("bce"))
    own = (run.metrics or {}).get("reconstruction")
    return ((own or {}).get("bce") if isinstance(own, dict) else None), None


# -- the comparison (shared with the HTML report) ------------------------------------------------------
def comparison_rows(runs: list[RunRecord]) -> list[list]:
    """[label, value per run] rows: what trains, its length, the final training terms, the metrics
    protocol and every headline score any run has. Values are raw (numbers, text, None)."""
    scores = [headline_scores(r) for r in runs]
    names = sorted({m for s in scores for m in s})
    kl_z = [None if r.is_multistage else r.final_term("kl") for r in runs]
    kl_w = [r.final_term("kl") if r.is_multistage else None for r in runs]
    rows = [["config name"] + [r.label for r in runs],
            ["model"] + [what_trains(r) for r in runs],
            ["controller"] + [r.controller for r in runs],
            ["steps"] + [r.steps for r in runs],
            ["final loss (lower is better)"] + [r.final_term("loss") for r in runs],
            ["final recon (lower is better)"] + [r.final_term("recon") for r in runs],
            ["final KL of z (stage 1)"] + kl_z]
    if any(v is not None for v in kl_w):
        rows.append(["final KL of w (stage 2)"] + kl_w)
    if names:
        protocols = [protocol_of((r.metrics or {}).get("_meta")) for r in runs]
        rows.append(["metrics protocol"] + [p or "-" for p in protocols])
        for m in names:
            key = headline_key(m, (runs[[m in s for s in scores].index(True)].metrics or {}).get(m, {})) or m
            label = f"{m} ({key})" if key != m else m
            rows.append([label + (" (lower is better)" if better(key) == "lower" else "")] + [s.get(m) for s in scores])
    return rows


# -- the terminal ------------------------------------------------------------------------------------
def table_console(piped_width: int = 200):
    """A rich console for tables (here and `untwine presets`): the terminal's, or when the output is
    piped a wide one (no squeezing into 80 columns) without colour codes."""
    from rich.console import Console
    console = Console()
    return console if console.is_terminal else Console(width=piped_width, no_color=True, highlight=False)


def _table(console, title: str, columns: list[str], right: set[str] = frozenset()):
    """A rich table; plain aligned columns (no box, no title decoration) when piped."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table
    plain = not console.is_terminal
    table = Table(title=None if plain else escape(title), box=None if plain else box.SIMPLE_HEAVY,
                  show_edge=not plain, pad_edge=False, header_style="" if plain else "bold")
    for col in columns:
        table.add_column(escape(col), justify="right" if col in right else "left", overflow="fold")
    if plain:
        console.print(title, markup=False)
    return table


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return "just now"


def print_runs(root: str | os.PathLike, console=None) -> list[Path]:
    """The table of `untwine runs ROOT`; returns the runs listed."""
    from rich.markup import escape
    console = console or table_console()
    root = Path(root)
    paths = find_runs(root)
    if not paths:
        console.print(f"no runs under {root} (a run directory holds config.yaml; `untwine train PRESET` writes "
                      f"one under ./runs)", markup=False)
        return []
    runs = [read_run(p) for p in paths]
    states = [run_state(r) for r in runs]
    scores = [headline_scores(r) for r in runs]
    shown = [m for m in LIST_SCORES if any(m in s for s in scores)][:MAX_SCORE_COLUMNS]
    bce = [_held_out_bce(r) for r in runs]
    has_bce = any(b != (None, None) for b in bce)
    columns = ["run", "preset", "method", "steps", "status", "updated", *shown,
               *(["BCE held-out (lower)"] if has_bce else []), "recon (train, lower)"]
    table = _table(console, f"runs under {root}", columns, right={"steps", *shown, "BCE held-out (lower)",
                                                                  "recon (train, lower)"})
    now = time.time()
    for path, run, state, s, (bce1, bce2) in zip(paths, runs, states, scores, bce):
        name = str(path.relative_to(root)) if path != root else str(path)
        steps = f"{number(state.done)}/{number(state.total)}" if state.total is not None else number(state.done)
        held = [(f"{number(bce1)} -> {number(bce2)}" if bce2 is not None else number(bce1))] if has_bce else []
        table.add_row(*(escape(str(c)) for c in (
            name, run.label or "-", what_trains(run, brief=True), steps, state.status, _age(now - state.updated),
            *(number(s.get(m)) for m in shown), *held, number(run.final_term("recon")))))
    console.print(table)
    notes = []
    if any(r.is_multistage for r in runs) and (shown or has_bce):
        notes.append("a stage-2 run's scores are its stage 1's" + ("; its held-out BCE reads stage 1 -> combined"
                                                                   if has_bce else ""))
    if shown:
        protocols = sorted({p for p in (protocol_of((r.metrics or {}).get("_meta")) for r in runs) if p})
        notes.append(f"scores: the final evaluation's headline numbers ({' / '.join(protocols) or 'unknown'} "
                     f"protocol); `untwine runs compare RUN RUN` puts runs side by side")
    for n in notes:
        console.print(n, markup=False, style="dim")
    return paths


def print_comparison(runs: list[RunRecord], console=None) -> None:
    """`untwine runs compare`: the report's comparison rows, then stage 1 against the combined model
    for each multi-stage run."""
    from rich.markup import escape
    console = console or table_console()
    names = [r.name for r in runs]
    if len(set(names)) < len(names):  # runs in folders of the same name: their full paths
        names = [str(r.path) for r in runs]
    table = _table(console, "runs compared", ["", *names], right=set(names))
    for label, *values in comparison_rows(runs):
        table.add_row(escape(str(label)), *(escape(number(v)) for v in values))
    console.print(table)
    for run, name in zip(runs, names):
        stages = (run.metrics or {}).get("multistage")
        rows = stage_rows(stages) if isinstance(stages, dict) else []
        if rows:
            table = _table(console, f"{name}: stage 1 against the combined model (held-out images)",
                           ["measure", "stage 1", "combined", "better"], right={"stage 1", "combined"})
            for label, s1, comb, good in rows:
                table.add_row(escape(label), escape(number(s1)), escape(number(comb)), good)
            console.print(table)
    if any(r.is_multistage for r in runs):
        console.print("a stage-2 run's disentanglement scores are its stage 1's, exactly: stage 2 keeps stage 1's code",
                      markup=False, style="dim")
