"""Argument helpers shared by the CLI commands."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import torch

from crbnet.errors import InputError
from crbnet.estimators import protocol as estimator
from crbnet.physics import models, sequences
from crbnet.physics.models.base import SignalModel


def add_model_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """--model, --model-option, --sequence, --times, --fix, --free."""
    parser.add_argument("--model", required=required, metavar="NAME",
                        help=f"signal model: {', '.join(models.names())}, or a model of your "
                             "own as FILE.py:CLASS or package.module:CLASS (docs/models.md)")
    parser.add_argument("--model-option", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting the model declares (e.g. max_order=30 for fisp_mrf; "
                             "`crbnet models` lists them), repeatable")
    parser.add_argument("--sequence", metavar="FILE",
                        help=f"sequence file: JSON; control-point CSV for "
                             f"{', '.join(_models_reading('read_csv'))}; MATLAB .mat (v5 or "
                             f"v7.3; alpha, TRF as pulses × segments, optional TR) for "
                             f"{', '.join(_models_reading('read_mat'))}")
    parser.add_argument("--times", metavar="T1,T2,...",
                        help=f"echo/inversion times in s for models with a times sequence "
                             f"({', '.join(times_models())})")
    parser.add_argument("--fix", action="append", default=[], metavar="NAME=VALUE",
                        help="hold a parameter fixed (SI), repeatable; B1=1 is fixed by default")
    parser.add_argument("--free", action="append", default=[], metavar="NAME",
                        help="estimate a parameter that is fixed by default (e.g. B1)")


def _models_reading(reader: str) -> list[str]:
    """Built-in models that play a sequence kind with ``reader`` ('read_csv', 'read_mat')."""
    return [n for n, cls in models.REGISTRY.items()
            if any(getattr(sequences.kind_of(k), reader) is not None
                   for k in cls.accepted_sequence_kinds())]


def times_models() -> list[str]:
    """Built-in models whose sequence is a list of times (``--times``)."""
    return [n for n, cls in models.REGISTRY.items() if cls.sequence_kind == "times"]


def add_estimator_arguments(parser: argparse.ArgumentParser, checkpoint_help: str) -> None:
    """--checkpoint CKPT | --method NAME (exactly one); the methods are the registered
    estimators built from the model alone."""
    how = parser.add_mutually_exclusive_group(required=True)
    how.add_argument("--checkpoint", metavar="CKPT", help=checkpoint_help)
    how.add_argument("--method", metavar="NAME",
                     help=f"estimator instead of a network (needs --model): {method_help()}")


def method_help() -> str:
    """``name (description); ...`` of the estimators built from the model alone, read from the
    registry (and installed plugins) when the parser is built, and how to name one's own."""
    registry = estimator.PLUGINS.registry()
    # Installed plugins are named, not loaded: a broken one must not break every command.
    listed = "; ".join(f"{n} ({registry[n].description})" if n in registry else n
                       for n in estimator.names(needs_checkpoint=False))
    # Kinds that also read a network (other than the network itself) take it as an option.
    with_network = "; ".join(f"{n} ({registry[n].description}: --option checkpoint=PATH)"
                             for n in estimator.names(needs_checkpoint=True)
                             if n != "network" and n in registry)
    listed = f"{listed}; {with_network}" if with_network else listed
    return f"{listed}; or an estimator of your own as FILE.py:NAME or package.module:NAME"


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="cpu (default), cuda, cuda:1 ...")


def add_output_folder_arguments(parser: argparse.ArgumentParser) -> None:
    """--out DIR (new or empty) and --overwrite."""
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (new or empty)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a non-empty output folder")


def check_positive(value: float | None, flag: str) -> None:
    """A clear error unless ``value`` (if given) is a positive finite number."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise InputError(f"{flag} must be a positive number")


def seed_value(text: str) -> int:
    """argparse type of ``--seed``: a whole number from 0 to 2^63 - 1 (the generators refuse
    negative seeds; a one-line argparse error instead of a failure halfway)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 0 <= value < 2 ** 63:
        raise argparse.ArgumentTypeError(f"a seed is a whole number from 0 to 2^63 - 1, got "
                                         f"{text!r}")
    return value


def comma_list(text: str, flag: str) -> list[str]:
    """``a,b,c`` as stripped non-empty items; an empty list is refused (InputError)."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise InputError(f"{flag} is empty; give at least one value")
    return items


def split_assignments(items: list[str], what: str) -> list[tuple[str, str]]:
    """Repeated ``NAME=VALUE`` strings as (name, value text) pairs; ``what`` names the flag in
    errors (malformed item, name given twice)."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise InputError(f"{what} expects NAME=VALUE, got {item!r}")
        if name in out:
            raise InputError(f"{what} {name} given twice")
        out[name] = value
    return list(out.items())


def parse_assignments(items: list[str], what: str = "--param") -> dict[str, float]:
    """Parse repeated ``name=value`` strings (SI units)."""
    out: dict[str, float] = {}
    for name, value in split_assignments(items, what):
        try:
            out[name] = float(value)
        except ValueError:
            raise InputError(f"{what} {name}: {value!r} is not a number") from None
    return out


def parse_options(items: list[str]) -> dict:
    """``--option NAME=VALUE`` strings to keyword arguments (int, float, true/false or text)."""
    out: dict = {}
    for name, value in split_assignments(items, "--option"):
        for convert in (int, float):
            try:
                out[name] = convert(value)
                break
            except ValueError:
                continue
        else:
            out[name] = {"true": True, "false": False}.get(value.lower(), value)
    return out


def parse_times(text: str) -> sequences.TimesSequence:
    items = comma_list(text, "--times")
    try:
        values = [float(t) for t in items]
    except ValueError:
        raise InputError(f"--times expects comma-separated numbers in s, got {text!r}") from None
    return sequences.from_times(values)


def build_model(args: argparse.Namespace) -> SignalModel:
    """The model the arguments describe."""
    name = args.model
    cls = models.resolve(name)
    seq: Any = None
    if getattr(args, "times", None) is not None:
        if cls.sequence_kind != "times":
            raise InputError(f"--times applies to models with a times sequence "
                             f"({', '.join(times_models())}), not {cls.name}")
        seq = parse_times(args.times)
    if getattr(args, "sequence", None) is not None:
        if seq is not None:
            raise InputError("give either --sequence or --times, not both")
        if not Path(args.sequence).is_file():
            raise InputError(f"sequence file not found: {args.sequence}")
        seq = args.sequence
    fixed = dict(cls.default_fixed)
    for p in getattr(args, "free", []) or []:
        if p not in {s.name for s in cls.specs}:
            raise InputError(f"unknown parameter {p!r} for model {name!r}")
        fixed.pop(p, None)
    fixed.update(parse_assignments(getattr(args, "fix", []) or [], "--fix"))
    options = parse_model_options(cls, getattr(args, "model_option", []) or [])
    model = models.get(name, sequence=seq, fixed=fixed, **options)
    warn_beyond_limits(model)
    return model


def parse_model_options(cls: type[SignalModel], items: list[str]) -> dict[str, Any]:
    """``--model-option NAME=VALUE`` strings to the model's keyword arguments, each converted
    with the type the model declares."""
    declared = {o.name: o for o in cls.options}
    out: dict[str, Any] = {}
    for name, text in split_assignments(items, "--model-option"):
        if name not in declared:
            raise InputError(f"model {cls.name!r} has no option {name!r}; declared: "
                             f"{', '.join(declared) or 'none'}")
        out[name] = declared[name].convert(text)
    return out


def warn_beyond_limits(model: SignalModel) -> None:
    """One line on stderr when the model's sequence exceeds the default 3 T hardware limits."""
    from crbnet.physics import hardware

    exceeded = hardware.violations(model.sequence)
    if exceeded:
        print(f"crbnet: warning: the {model.name} sequence exceeds 3 T hardware limits: "
              f"{'; '.join(exceeded)}", file=sys.stderr)


def sequence_line(model: SignalModel) -> str:
    """``sequence: <pulses, duration, peak B1, RF power>`` for command summaries."""
    from crbnet.physics import hardware

    return f"sequence: {hardware.describe(model.sequence)}"


def add_basis_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """--basis FILE and --basis-rank K: the user's subspace basis U [T, K] (every command where
    signals enter)."""
    parser.add_argument("--basis", metavar="FILE",
                        help="basis U with orthonormal columns, real or complex, stored T × K or "
                             "K × T (the side as long as the sequence is time; .npy, .h5 or "
                             f".mat v5/v7.3): {what}")
    parser.add_argument("--basis-rank", type=int, metavar="K",
                        help="use the first K columns of --basis (default: all of them)")


def _basis_request(args: argparse.Namespace) -> tuple[str | None, int | None]:
    """(--basis path or None, --basis-rank or None), checked together."""
    path, rank = getattr(args, "basis", None), getattr(args, "basis_rank", None)
    if rank is not None and not path:
        raise InputError("--basis-rank needs --basis")
    if rank is not None and rank < 1:
        raise InputError("--basis-rank must be >= 1")
    return path or None, rank


def read_basis(args: argparse.Namespace, model: SignalModel) -> torch.Tensor | None:
    """The ``--basis`` matrix (its first ``--basis-rank`` columns), checked against the model's
    time points (None without one)."""
    from crbnet.stats.subspace import load_basis

    path, rank = _basis_request(args)
    return None if path is None else load_basis(path, model.n_timepoints, rank=rank)


def read_basis_for_estimators(args: argparse.Namespace, model: SignalModel | None,
                              specs: list[str]) -> torch.Tensor | None:
    """``--basis`` checked against ``model``, or without one against the model of the first
    checkpoint among ``specs`` (paths or run directories; method names are skipped)."""
    path, _ = _basis_request(args)
    if path is None:
        return None
    if model is None:
        from crbnet.estimators.network import load

        paths = [s for s in specs if s and Path(s).exists()]
        if not paths:
            raise InputError("--basis needs --model or a checkpoint")
        model = load(paths[0]).model
    return read_basis(args, model)


def model_in_basis(args: argparse.Namespace, model: SignalModel) -> SignalModel:
    """``model`` as the data see it: its subspace coefficients with ``--basis``, else itself."""
    from crbnet.stats.projected import ProjectedModel

    basis = read_basis(args, model)
    return model if basis is None else ProjectedModel(model, basis)


def resolve_device(name: str | None) -> torch.device:
    """'cpu', 'cuda', 'cuda:1' or None (= cpu)."""
    name = name or "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise InputError(f"unknown device {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda requested but CUDA is not available")
    return dev
