"""``crbnet compare``: MSE/CRB and speed of networks and classical methods on the same signals."""

from __future__ import annotations

import argparse

from crbnet import files
from crbnet.cli import _sizes
from crbnet.cli._common import (
    add_basis_argument,
    add_device_argument,
    add_model_arguments,
    build_model,
    check_positive,
    read_basis_for_estimators,
    resolve_device,
    seed_value,
)
from crbnet.errors import InputError
from crbnet.learning import losses

DEFAULT_SNR = 100.0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare", help="table of MSE/CRB per parameter and voxels/s for several estimators",
        description="Compare trained networks (checkpoint files or run directories) and the "
                    "classical methods 'nlls' and 'dictionary' on the same noisy test signals "
                    "drawn from the training distribution. Writes DIR/comparison.md, .json and "
                    ".png. SNR = |M0|/sigma with |M0| = 1.")
    p.add_argument("estimators", nargs="+", metavar="RUN_OR_METHOD",
                   help="checkpoint path, run directory (with checkpoint.pt), nlls or dictionary")
    add_model_arguments(p, required=False)
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--snr", type=float, default=None,
                   help=f"SNR = |M0|/sigma (default: the first network's training SNR, "
                        f"else {DEFAULT_SNR:g})")
    p.add_argument("--voxels", type=int, default=1000, metavar="N",
                   help="test voxels (default 1000; NLLS is the slow one)")
    p.add_argument("--seed", type=seed_value, default=0, help="seed of the test set")
    add_basis_argument(p, "test on the K coefficients in this basis, against their CRBs "
                          "(networks must have been trained in it)")
    p.add_argument("--losses", metavar="NAME,NAME", default="",
                   help="also report these registered losses on the test set "
                        f"({', '.join(single_draw_losses())})")
    p.add_argument("--bounds", choices=("physical", "training", "both"), default=None,
                   help="search box of nlls/dictionary: the model's physical bounds, the "
                        "networks' training ranges, or both side by side (default: nlls "
                        "physical, dictionary training); or write nlls@training")
    add_device_argument(p)
    p.set_defaults(func=run)


def single_draw_losses() -> list[str]:
    """Registered losses that score one noisy draw per voxel, then installed plugin losses
    (named, not loaded: a broken plugin must not break the parser)."""
    return ([n for n, loss in losses.REGISTRY.items() if not loss.repeated]
            + sorted(losses.PLUGINS.plugins()))


def expand_boxes(specs: list[str], bounds: str | None) -> list[str]:
    """Give plain method names the --bounds box (``both``: one entry per box)."""
    from crbnet.assessment.compare import BOXES
    from crbnet.estimators import METHODS

    if bounds is None:
        return list(specs)
    boxes = BOXES if bounds == "both" else (bounds,)
    out: list[str] = []
    for spec in specs:
        out += [f"{spec}@{b}" for b in boxes] if spec in METHODS else [spec]
    return out


def run(args: argparse.Namespace) -> int:
    files.check_output_folder(args.out)
    from crbnet.assessment.compare import compare, resolve_estimators, training_snr
    from crbnet.reporting.comparison import write_comparison

    device = resolve_device(args.device)
    if args.voxels < 1:
        raise InputError("--voxels must be >= 1")
    check_positive(args.snr, "--snr")
    model = build_model(args) if args.model else None
    specs = expand_boxes(args.estimators, args.bounds)
    basis = read_basis_for_estimators(args, model, args.estimators)
    model, estimators = resolve_estimators(specs, model=model, device=device, basis=basis)
    _sizes.compare(model, args.voxels, len(estimators))
    snr = args.snr
    if snr is None:
        snr = next((s for s in (training_snr(e) for _, e in estimators) if s), DEFAULT_SNR)
    names = [n.strip() for n in args.losses.split(",") if n.strip()]
    result = compare(estimators, model=model, n=args.voxels, snr=snr, seed=args.seed,
                     losses=names)
    paths = write_comparison(result, args.out)
    print(result.to_markdown())
    print(f"wrote {paths['md']}, {paths['json']} and {paths['png']}")
    return 0
