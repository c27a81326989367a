"""The `untwine` command.

Each area registers its own sub-commands from a small module (`untwine.<area>.commands`). Those
modules import torch, numpy or matplotlib through their packages (seconds), so the command
imports only the area of the command given: `untwine --help` and `--version` import none of them
(well under a second), `untwine train ...` imports the training area only. The one-line help of
each command lives in COMMANDS (checked against the areas' own by the tests).

Shell completion: `untwine completion bash` (or zsh, tcsh) prints a static script (shtab), so
pressing tab runs no Python at all.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from untwine import __version__
from untwine.errors import UntwineError

# command -> (the area module that registers it, its one-line help)
COMMANDS = {
    "data": ("untwine.data.commands", "look at a dataset, a ground-truth grid or a folder of your own images (show, info, render)"),
    "train": ("untwine.train.commands", "train a model from a preset or a YAML config, or resume a run"),
    "presets": ("untwine.train.commands", "list the training presets shipped with untwine"),
    "config": ("untwine.train.commands", "print the resolved config of a preset or YAML file with overrides, "
               "without training"),
    "demo": ("untwine.train.commands", "the headline in a few minutes: a disentangled stage 1 (beta-TCVAE) on "
             "procedural dSprites, then a stage-2 VAE that repairs its reconstructions; metrics, pictures, an "
             "HTML report"),
    "evaluate": ("untwine.metrics.commands", "score a representation with the disentanglement metrics"),
    "tabular": ("untwine.tabular.commands", "synthetic tables: fit, sample, evaluate"),
    "report": ("untwine.report.commands", "write the HTML report of a run, or of several runs side by side"),
    "study": ("untwine.study.commands", "run a study (many runs from one spec, on this machine or a Ray cluster); "
              "its table and report"),
    "runs": ("untwine.report.runs", "list the runs under a folder (preset, steps, status, headline scores), or "
             "compare runs"),
    "export": ("untwine.export", "write a run's encoder and decoder (and a multi-stage run's combined model) as "
               "TorchScript or ONNX, for use without untwine"),
    "completion": (__name__, "print a shell completion script: untwine completion bash > "
                   "~/.local/share/bash-completion/completions/untwine"),
}
SHELLS = ("bash", "zsh", "tcsh")


def register(subparsers) -> None:
    p = subparsers.add_parser("completion", help=COMMANDS["completion"][1],
                              description="Print a static completion script for SHELL (made by shtab from the "
                                          "full parser; tab completion then runs no Python).")
    p.add_argument("shell", choices=SHELLS)
    p.set_defaults(func=_completion)


def _completion(args) -> int:
    import shtab
    print(shtab.complete(build_parser(), shell=args.shell))
    return 0


def build_parser(command: str | None = "*") -> argparse.ArgumentParser:
    """The parser: with every area's sub-commands ("*", the default), or only `command`'s area
    loaded and the other commands as one-line stubs (None: stubs only, for `untwine --help`)."""
    parser = argparse.ArgumentParser(
        prog="untwine",
        description="Disentangled representation learning: train, evaluate, visualise.")
    parser.add_argument("--version", action="version", version=f"untwine {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    areas = {module for module, _ in COMMANDS.values()} if command == "*" else \
        {COMMANDS[command][0]} if command in COMMANDS else set()
    for name, (module, help_line) in COMMANDS.items():
        if name in sub.choices:
            continue  # registered with its area
        if module in areas:
            importlib.import_module(module).register(sub)
        else:
            sub.add_parser(name, help=help_line, add_help=False)
    return parser


def _command_of(argv: list[str]) -> str | None:
    """The sub-command named in argv (its first word that is not an option), if any."""
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_command_of(argv))
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except UntwineError as e:
        print(f"untwine: error: {e}", file=sys.stderr)
        return int(getattr(e, "exit_code", 2))  # 2; 130 / 143 for a run stopped by SIGINT / SIGTERM


if __name__ == "__main__":
    sys.exit(main())
