"""Command-line interface: ``crbnet <command> ...`` (also ``python -m crbnet``).

Each command lives in ``crbnet/commands/<name>.py`` with ``register(subparsers)``; this file
only assembles them and turns bad input into one clear line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .errors import InputError

# Order = order in ``crbnet --help``. A module that fails to import is a bug, not optional.
COMMANDS = ["demo", "models", "simulate", "crb", "design", "dataset", "train", "fit", "evaluate",
            "compare", "phantom", "apply"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crbnet",
        description="Cramér–Rao bound-informed neural networks for quantitative MRI. "
                    "All values in SI units (s, 1/s, rad) unless a command says otherwise.")
    parser.add_argument("--version", action="version", version=f"crbnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"crbnet.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except InputError as exc:
        print(f"crbnet: error: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"crbnet: error: no such file: {exc.filename}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("crbnet: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
