"""`untwine train`, `untwine presets`, `untwine demo`."""
from __future__ import annotations

import argparse
from pathlib import Path

from untwine.errors import ConfigError

DEMO_STAGES = ("demo-stage1", "demo-stage2")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a model from a preset or a YAML config, or resume a run",
        description="untwine train PRESET|CONFIG.yaml [section.key=value ...] [--run-dir DIR]\n"
                    "untwine train --resume RUN_DIR [section.key=value ...]",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("items", nargs="*", metavar="PRESET|CONFIG.yaml key=value",
                   help="a preset name (see `untwine presets`) or a YAML file, then dotted overrides such as "
                        "trainer.steps=3000 objective.beta=4")
    p.add_argument("--run-dir", help="the run directory (default: run.dir, else runs/<name>-<UTC time>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    p.add_argument("--no-eval", action="store_true",
                   help="no evaluation, periodic or final: trainer.eval_preset=none (and trainer.multistage_eval=none "
                        "for a multi-stage run)")
    p.set_defaults(func=_train)

    p = subparsers.add_parser(
        "config", help="print the resolved config of a preset or YAML file with overrides, without training",
        description="untwine config PRESET|CONFIG.yaml [section.key=value ...]\n"
                    "Prints the config `untwine train` would run with (YAML: every key, defaults filled in), after "
                    "the same checks; a wrong key, value or preset is the same error as train's.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("items", nargs="*", metavar="PRESET|CONFIG.yaml key=value",
                   help="as for `untwine train`: a preset or a YAML file, then dotted overrides")
    p.add_argument("--no-eval", action="store_true",
                   help="as for `untwine train`: trainer.eval_preset=none trainer.multistage_eval=none")
    p.set_defaults(func=_config)

    p = subparsers.add_parser("presets", help="list the training presets shipped with untwine",
                              description="untwine presets: a table of the presets with a description of each\n"
                                          "untwine presets show NAME: the preset's resolved config (YAML)",
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=_presets)
    show = p.add_subparsers(dest="presets_command", metavar="show").add_parser(
        "show", help="print a preset's resolved config (YAML: its base presets merged, defaults filled in)")
    show.add_argument("name", metavar="NAME", help="a preset name (see `untwine presets`)")
    show.set_defaults(func=_presets_show)

    p = subparsers.add_parser(
        "demo", help="the headline in a few minutes: a disentangled stage 1 (beta-TCVAE) on procedural dSprites, "
                     "then a stage-2 VAE that repairs its reconstructions; metrics, pictures, an HTML report",
        description="The README's demo (under 10 minutes on a 2-core CPU): trains presets demo-stage1 and "
                    "demo-stage2 into RUN_DIR/stage1 and RUN_DIR/stage2, writes RUN_DIR/report.html comparing "
                    "them and prints where everything is.")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted overrides applied to both stages (e.g. trainer.steps=500)")
    p.add_argument("--run-dir", help="the demo's directory (default: runs/demo-<UTC time>)")
    p.set_defaults(func=_demo)


def _split_overrides(items: list[str]) -> list[str]:
    bad = [s for s in items if "=" not in s]
    if bad:
        raise ConfigError(f"expected section.key=value overrides, got {bad}; e.g. trainer.steps=3000")
    return items


# no metrics, and for a multi-stage run no stage-1-against-combined measures either (whose first run
# on a dataset trains a factor classifier for minutes): --no-eval means no evaluation at all
NO_EVAL = ("trainer.eval_preset=none", "trainer.multistage_eval=none")


def _overrides(items: list[str], no_eval: bool) -> list[str]:
    """The dotted overrides of the command line; --no-eval is the last one (it wins)."""
    return [*_split_overrides(items), *(NO_EVAL if no_eval else ())]


def _config_of(args):
    """The config that `items` (a preset or YAML file, then overrides) name."""
    from untwine.train.config import load_config
    if not args.items or "=" in args.items[0]:
        from untwine.train.config import list_presets
        raise ConfigError(f"give a preset or a YAML config first; the presets are: {', '.join(list_presets())}")
    return load_config(args.items[0], _overrides(args.items[1:], args.no_eval))


def _train(args) -> int:
    from untwine.train.config import load_config
    from untwine.train.session import train

    if args.resume:
        run_dir = Path(args.resume)
        if args.run_dir and Path(args.run_dir) != run_dir:
            raise ConfigError("--resume RUN_DIR continues that directory; leave out --run-dir")
        overrides = _overrides(args.items, args.no_eval)
        from untwine.train.resume import run_config
        cfg = load_config(run_config(run_dir), overrides)  # the run's config with its resumes' changes
        summary = train(cfg, run_dir=run_dir, resume=True)
    else:
        summary = train(_config_of(args), run_dir=args.run_dir)
    _print_summary(summary)
    return 0


def _config(args) -> int:
    """What train checks before it writes anything, then the config it would record."""
    from untwine.train.config import check_trainable, dump_config
    from untwine.train.factory import build_data, task_kind

    cfg = _config_of(args)
    check_trainable(cfg)
    kind = task_kind(cfg)
    cfg = kind.resolve_config(cfg, None, False)  # a multi-stage config: the stage-1 run read and checked
    data = build_data(cfg)
    kind.build_task(cfg, data)                   # the objective's, controller's and stage 2's parameters
    if getattr(data, "factor_space", None) is not None and cfg.trainer.eval_preset not in ("none", "", None, {}):
        from untwine.metrics import resolve_metrics
        resolve_metrics(cfg.trainer.eval_preset)
    print(dump_config(cfg), end="")
    return 0


def _presets(args) -> int:
    from rich.markup import escape
    from rich.table import Table

    from untwine.report.console import number
    from untwine.report.runs import table_console
    from untwine.train.config import load_config, list_presets, preset_description
    table = Table(title=escape("untwine presets (untwine train NAME [key=value ...]; untwine presets show NAME)"))
    for col in ("preset", "objective", "controller", "steps", "batch", "device"):
        table.add_column(col, no_wrap=True, justify="right" if col in ("steps", "batch") else "left")
    table.add_column("description", ratio=1, min_width=30)
    for name in list_presets():
        c = load_config(name)
        # a controlled objective's own beta is not used: show the name only
        shown = {} if c.controller.name != "none" else c.objective.params
        obj = " ".join([c.objective.name, *(f"{k}={v}" for k, v in shown.items())])
        table.add_row(name, escape(obj), c.controller.name, f"{c.trainer.steps:,}", number(c.optim.batch_size),
                      c.trainer.accelerator, escape(preset_description(name) or "-"))
    table_console().print(table)
    return 0


def _presets_show(args) -> int:
    from untwine.train.config import dump_config, load_config, preset_description
    description = preset_description(args.name)  # an unknown name: the error naming the presets
    if description:
        print(f"# {args.name}: {description}")
    print(dump_config(load_config(args.name)), end="")
    return 0


def _demo(args) -> int:
    from datetime import datetime, timezone

    from untwine.report import write_report
    from untwine.train.config import load_config
    from untwine.train.session import train

    overrides = _split_overrides(args.overrides)
    root = Path(args.run_dir) if args.run_dir else \
        Path("runs") / f"demo-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}"
    first, second = root / "stage1", root / "stage2"
    print(f"demo 1/2: stage 1, a beta-TCVAE on procedural dSprites -> {first}", flush=True)
    s1 = train(load_config(DEMO_STAGES[0], overrides), run_dir=first)
    _print_summary(s1)
    print(f"demo 2/2: stage 2, a conditional VAE on the frozen stage 1 -> {second}", flush=True)
    s2 = train(load_config(DEMO_STAGES[1], [*overrides, f"stage1={first}"]), run_dir=second)
    _print_summary(s2)
    report = write_report([first, second], out=root / "report.html")
    print(f"report (both stages side by side): {report}")
    return 0


def _print_summary(summary: dict) -> None:
    from rich.console import Console

    console = Console(soft_wrap=True)  # paths stay on one line, to be copied
    run_dir = Path(summary["run_dir"])
    terms = summary.get("final_terms") or {}
    ips = summary.get("images_per_second")
    console.print(f"[bold]done:[/] {summary['steps']} steps in {summary['wall_seconds']:.0f} s"
                  + (f", {ips:.0f} images/s" if ips else "")
                  + ("; final " + ", ".join(f"{k} {v:.4g}" for k, v in terms.items()) if terms else ""))
    metrics = summary.get("metrics")
    if metrics:  # the protocol named, stage 1 against the combined model for a multi-stage run
        from untwine.report.console import print_evaluation
        print_evaluation(metrics, console)
    console.print(f"[bold]run directory:[/] {run_dir}")
    for p in summary.get("pictures") or []:
        console.print(f"  picture: {p}")
    for name in ("report.html", "metrics.json", "logs/train.csv", "logs/tensorboard", "checkpoints/last"):
        if (run_dir / name).exists():
            console.print(f"  {name}: {run_dir / name}")
    console.print(f"  resume: untwine train --resume {run_dir} trainer.steps=N")
