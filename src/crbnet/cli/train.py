"""``crbnet train``: train a CRB-informed network; writes RUN_DIR/{checkpoint.pt, metrics.csv,
loss.png, summary.json}. Runs data-parallel under ``torchrun --nproc_per_node N -m crbnet``."""

from __future__ import annotations

import argparse
from pathlib import Path

from crbnet.cli import _sizes
from crbnet.cli._common import (
    add_basis_argument,
    add_model_arguments,
    build_model,
    parse_assignments,
    read_basis,
    resolve_device,
    seed_value,
    sequence_line,
    split_assignments,
)
from crbnet.config import ModelTable, check_table, check_value
from crbnet.errors import InputError
from crbnet.learning import losses


def add_sampling_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--range", action="append", default=[], metavar="NAME=LOW:HIGH",
                   help="training range of a parameter (SI), repeatable")
    p.add_argument("--dist", action="append", default=[], metavar="NAME=DIST",
                   help="sampling distribution of a parameter: uniform or log-uniform")


def sampling_from_args(args: argparse.Namespace, base: dict | None = None) -> dict:
    """``[sampling]`` of the config file (``base``) updated by --range/--dist."""
    if getattr(args, "config", None) and base is None:
        from crbnet.learning.training_config import read_config_file

        base = read_config_file(args.config).get("sampling", {})
    check_value("sampling", dict[str, dict], base or {})
    spec = {k: dict(v) for k, v in (base or {}).items()}
    for item in args.range:
        name, sep, value = item.partition("=")
        lo, sep2, hi = value.partition(":")
        try:
            if not sep or not sep2:
                raise ValueError
            spec.setdefault(name.strip(), {})["range"] = [float(lo), float(hi)]
        except ValueError:
            raise InputError(f"--range expects NAME=LOW:HIGH, got {item!r}") from None
    for item in args.dist:
        name, sep, value = item.partition("=")
        if not sep:
            raise InputError(f"--dist expects NAME=uniform|log-uniform, got {item!r}")
        spec.setdefault(name.strip(), {})["distribution"] = value.strip()
    return spec


def parse_snr(text: str) -> float | list[float]:
    """'50' or a range '20:100'."""
    try:
        if ":" in text:
            lo, hi = text.split(":", 1)
            return [float(lo), float(hi)]
        return float(text)
    except ValueError:
        raise InputError(f"--snr expects a number or LOW:HIGH, got {text!r}") from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help=f"train a network (losses: {', '.join(losses.names())})",
                       description="Train a CRB-informed network. SNR = |M0|/sigma (sigma per "
                                   "real/imaginary part). Settings: defaults per model < "
                                   "--config FILE < command line.")
    add_model_arguments(p)
    p.add_argument("--loss", metavar="NAME",
                   help=f"training loss (default crb): {', '.join(losses.names())}, or a loss "
                        "of your own as FILE.py:NAME or package.module:NAME (docs/models.md)")
    p.add_argument("--loss-option", action="append", default=[], metavar="NAME=VALUE",
                   help="a setting the loss declares, repeatable (also [loss] options in the "
                        "config file)")
    p.add_argument("--snr", metavar="SNR", help="training SNR: a value or LOW:HIGH (default 50)")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="output directory")
    p.add_argument("--config", metavar="FILE", help="TOML config (JSON/YAML also read)")
    p.add_argument("--epochs", type=int, help="number of epochs")
    p.add_argument("--max-minutes", type=float, metavar="T",
                   help="stop at the first epoch end after T minutes")
    p.add_argument("--seed", type=seed_value, help="random seed (default 0)")
    p.add_argument("--device", default=None, help="cpu (default) or cuda[:i]")
    p.add_argument("--resume", action="store_true",
                   help="continue RUN_DIR/checkpoint.pt (give the same options)")
    p.add_argument("--init", metavar="CKPT",
                   help="start from this trained checkpoint (same model, sequence and input "
                        "representation), e.g. to fine-tune with --loss bias_reduced")
    p.add_argument("--dataset", metavar="FILE.h5", help="train offline on this dataset")
    p.add_argument("--batch-size", type=int, help="noisy samples per batch (and process)")
    p.add_argument("--lr", type=float, help="peak learning rate")
    add_sampling_arguments(p)
    add_basis_argument(p, "the network reads the K coefficients in this basis (as "
                          "reconstructed data come) and trains against their CRBs; the "
                          "checkpoint records it and refuses coefficients in another basis")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="any config value, e.g. net.width=128 or data.pool_size=4096")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def apply_model_table(args: argparse.Namespace, table: dict, config_path: Path) -> None:
    """Fold the config's [model] table into the model arguments (command line wins)."""
    check_table("model", ModelTable, table)
    if "name" in table and table["name"] != args.model:
        raise InputError(f"config is for model {table['name']!r} but --model is {args.model!r}")
    # New lists, not appends: the parser's default list must not change.
    cli_fixed = parse_assignments(args.fix, "--fix")
    args.fix = [*args.fix, *(f"{name}={value}" for name, value in
                             dict(table.get("fixed", {})).items() if name not in cli_fixed)]
    args.free = [*args.free, *(name for name in table.get("free", []) if name not in args.free)]
    if "sequence" in table and not args.sequence and not args.times:
        seq = Path(table["sequence"])
        args.sequence = str(seq if seq.is_absolute() else config_path.parent / seq)
    if "times" in table and not args.times and not args.sequence:
        args.times = ",".join(str(float(t)) for t in table["times"])
    cli_options = dict(split_assignments(args.model_option, "--model-option"))
    args.model_option = [*args.model_option, *(f"{name}={_option_text(value)}" for name, value
                                               in dict(table.get("options", {})).items()
                                               if name not in cli_options)]


def _option_text(value: object) -> str:
    """A TOML value as command-line text, so that one conversion (the model's declared type)
    serves both."""
    return str(value).lower() if isinstance(value, bool) else str(value)

def run(args: argparse.Namespace) -> int:
    from crbnet.cli._progress import terminal_bars, terminal_lines
    from crbnet.learning.trainer import Trainer
    from crbnet.learning.training_config import (
        TrainConfig,
        build_config,
        parse_set_option,
        read_config_file,
    )
    from crbnet.reporting.training import draw_loss_curves

    file_data: dict = {}
    if args.config:
        file_data = read_config_file(args.config)
        apply_model_table(args, file_data.get("model", {}), Path(args.config))
    model = build_model(args)
    overrides = parse_set_option(args.set)
    TrainConfig.check_types(overrides)   # before --epochs, --lr ... may replace a value

    def put(section: str, key: str, value: object) -> None:
        if value is not None:
            overrides.setdefault(section, {})[key] = value

    put("loss", "name", args.loss)
    if args.loss_option:
        put("loss", "options", dict(split_assignments(args.loss_option, "--loss-option")))
    put("data", "snr", None if args.snr is None else parse_snr(args.snr))
    put("optim", "epochs", args.epochs)
    put("optim", "lr", args.lr)
    put("data", "batch_size", args.batch_size)
    if args.dataset:
        put("data", "mode", "offline")
        put("data", "dataset", str(Path(args.dataset).resolve()))
    if args.seed is not None:
        overrides["seed"] = args.seed
    sampling = sampling_from_args(args, base=file_data.get("sampling", {}))
    file_data.pop("sampling", None)
    if sampling:
        overrides.setdefault("data", {}).setdefault("sampling", {}).update(sampling)
    config = build_config(model, file_data, overrides)
    device = resolve_device(args.device)
    _sizes.train(model, config, args.out, device)
    trainer = Trainer(model, config, args.out, device=device, max_minutes=args.max_minutes,
                      resume=args.resume, progress=None if args.no_progress else terminal_bars,
                      log=terminal_lines, init=args.init, basis=read_basis(args, model),
                      loss_figure=draw_loss_curves)
    summary = trainer.fit()
    if trainer.dist.is_main:
        per = ", ".join(f"{p} {v:.3g}" for p, v in summary["val_crb_loss"].items()
                        if v is not None)
        print(f"wrote {args.out}: {summary['epochs']} epochs, validation MSE/CRB mean "
              f"{summary['val_crb_loss_mean']:.4g} ({per}), {summary['wall_time_s']:.0f} s, "
              f"{summary['samples_per_s'] or 0:.0f} samples/s")
        print(sequence_line(model))
    return 0
