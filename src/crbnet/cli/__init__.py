"""Command-line interface: one module per ``crbnet`` command, each with ``register(subparsers)``;
:mod:`crbnet.cli.app` builds the parser and runs a command."""

from crbnet.cli.app import main

__all__ = ["main"]
