"""Command-line interface: ``crbnet <command> ...`` (also ``python -m crbnet``).

Each command lives in ``crbnet/cli/<name>.py`` with ``register(subparsers)``; this file
only assembles them and holds the one error boundary of every command (:func:`run_command`):

* bad input (:class:`~crbnet.errors.InputError`, a missing input file, text that is not
  UTF-8) → one line on stderr, exit code 2;
* the environment refuses (:class:`OSError`: permission denied, disk full, a folder where a
  file goes, ...) → one line naming the path and the reason, exit code 1;
* anything else is a bug → one line naming it, exit code 1.

No traceback is printed unless ``--debug`` (before or after the command name) or the
environment variable ``CRBNET_DEBUG=1`` asks for it; then the exception propagates.

Around every command the boundary also: holds the lock of each output the command names
(``--out``, ``--m0-out``; :mod:`crbnet.locks`), so a second run writing the same output is
refused with one line naming the first; holds library warnings back until the command ends, so
that none precedes an error line (they are shown after a success, dropped after a failure
unless ``--debug``); and turns argparse's usage block into one line (usage with ``--help``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys
import warnings
from typing import Callable, NoReturn

from crbnet import __version__
from crbnet.errors import ComputationError, InputError, OutputError, describe_os_error

# Order = order in ``crbnet --help``. A module that fails to import is a bug, not optional.
COMMANDS = ["demo", "models", "simulate", "crb", "design", "dataset", "train", "fit", "evaluate",
            "compare", "phantom", "apply", "basis"]


#: Arguments that name outputs: each is locked while its command runs (crbnet.locks).
OUTPUT_ARGUMENTS = ("out", "m0_out")


class OneLineParser(argparse.ArgumentParser):
    """argparse with its errors as one line, ``crbnet: error: ...`` (exit code 2); the usage
    block is for ``--help``. Sub-command parsers are of the same class (argparse's default)."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.split(" ", 1)[1] if " " in self.prog else ""
        where = f"{command}: " if command else ""
        _say(f"error: {where}{message} (see {self.prog} --help)")
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="crbnet",
        description="Cramér–Rao bound-informed neural networks for quantitative MRI. "
                    "All values in SI units (s, 1/s, rad) unless a command says otherwise.")
    parser.add_argument("--version", action="version", version=f"crbnet {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show Python tracebacks (also: environment CRBNET_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"crbnet.cli.{name}").register(sub)
    for command_parser in sub.choices.values():
        # SUPPRESS: an absent sub-command flag must not reset a --debug given before it.
        command_parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                    help="show Python tracebacks")
    return parser


def debug_requested(args: argparse.Namespace | None = None) -> bool:
    """Whether tracebacks are wanted (``--debug`` or ``CRBNET_DEBUG`` set to a true value)."""
    env = os.environ.get("CRBNET_DEBUG", "").strip().lower()
    return bool(getattr(args, "debug", False)) or env not in ("", "0", "false", "no")


def _say(text: str) -> None:
    print("crbnet: " + " ".join(text.split()), file=sys.stderr)


def run_command(func: Callable[[], object], debug: bool = False,
                outputs: list[str] | None = None, command: str | None = None) -> int:
    """Run one command; every failure becomes one line on stderr and an exit code.
    ``outputs``: paths the command writes, locked while it runs (crbnet.locks) by ``command``
    (the command line, named to a second run that is refused)."""
    from crbnet import locks

    held: list[warnings.WarningMessage] = []
    code = 0
    try:
        with warnings.catch_warnings(record=True) as held:
            with locks.hold(outputs or [], command):
                code = int(func() or 0)
    except KeyboardInterrupt:
        _say("interrupted")
        return 130
    except Exception as exc:
        if debug:
            _show(held)
            raise
        code, text = describe_failure(exc)
        _say(text)
        return code
    _show(held)
    return code


def _show(held: list[warnings.WarningMessage]) -> None:
    """Warnings held back during a command, shown now (through the warnings filters)."""
    for w in held:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)


def output_paths(args: argparse.Namespace) -> list[str]:
    """The outputs a parsed command line names (see OUTPUT_ARGUMENTS); none on the processes
    of a data-parallel run other than rank 0 (which alone writes)."""
    if os.environ.get("RANK", "0") not in ("", "0"):
        return []
    return [str(v) for v in (getattr(args, a, None) for a in OUTPUT_ARGUMENTS) if v]


def describe_failure(exc: BaseException) -> tuple[int, str]:
    """(exit code, one-line message) for an exception that ends a command."""
    if isinstance(exc, InputError):
        return 2, f"error: {exc}"
    if isinstance(exc, UnicodeDecodeError):
        return 2, f"error: a text input is not UTF-8 ({exc.reason} at byte {exc.start})"
    if isinstance(exc, FileNotFoundError) and exc.filename is not None and \
            not isinstance(exc, OutputError):
        return 2, f"error: no such file: {exc.filename}"
    if isinstance(exc, OSError):
        return 1, f"error: {describe_os_error(exc)}"
    if isinstance(exc, ComputationError):
        return 1, f"error: {exc}"
    if isinstance(exc, MemoryError):
        return 1, "error: out of memory (use smaller blocks or batches)"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return 1, (f"internal error: {type(exc).__name__}: {first[:300]} (a bug; run with --debug "
               "for the traceback)")


def main(argv: list[str] | None = None) -> int:
    from crbnet.cli import _logging

    _logging.configure()
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    return run_command(lambda: args.func(args), debug=debug_requested(args),
                       outputs=output_paths(args), command=shlex.join(["crbnet", *argv]))


if __name__ == "__main__":
    sys.exit(main())
