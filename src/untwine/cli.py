"""The `untwine` command.

Each area registers its own sub-commands from a small module (`untwine.<area>.commands`),
imported lazily so that `untwine --help` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from untwine import __version__
from untwine.errors import UntwineError

# area module -> it defines register(subparsers)
COMMAND_MODULES = [
    "untwine.data.commands",      # untwine data show|info
    "untwine.train.commands",     # untwine train, untwine demo
    "untwine.metrics.commands",   # untwine evaluate
    "untwine.tabular.commands",   # untwine tabular fit|sample|evaluate
    "untwine.report.commands",    # untwine report
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="untwine",
        description="Disentangled representation learning: train, evaluate, visualise.")
    parser.add_argument("--version", action="version", version=f"untwine {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod_name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as e:
            if e.name == mod_name:  # area not built yet
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except UntwineError as e:
        print(f"untwine: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
