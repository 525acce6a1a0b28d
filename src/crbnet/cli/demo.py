"""``crbnet demo``: train a CRB-loss and an MSE-loss network on the MT model, compare them
with NLLS in CRB units and write DIR/report.md (see :mod:`crbnet.reporting.demo`)."""

from __future__ import annotations

import argparse

from crbnet.cli._common import comma_list, seed_value
from crbnet.learning import losses


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the paper's finding end to end (~10 min on 2 CPU cores)",
                       description="Train a CRB-loss and an MSE-loss network on mt_hybrid_state, "
                                   "compare both and NLLS against the CRB, write a report.")
    p.add_argument("--out", default="demo_out", metavar="DIR",
                   help="output directory (default: demo_out)")
    p.add_argument("--minutes-per-net", type=float, metavar="T",
                   help="training budget of each network (default 3.5)")
    p.add_argument("--snr", type=float, help="training and test SNR |M0|/sigma (default 100)")
    p.add_argument("--seed", type=seed_value, help="random seed (default 0)")
    p.add_argument("--losses", metavar="NAME,NAME",
                   help="training losses, one network each (default crb,mse; registered: "
                        f"{', '.join(losses.names())})")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from crbnet.cli._progress import terminal_bars, terminal_lines
    from crbnet.reporting.demo import DemoConfig
    from crbnet.reporting.demo import run as run_demo
    from crbnet.errors import InputError

    cfg = DemoConfig()
    if args.minutes_per_net is not None:
        if not args.minutes_per_net > 0:
            raise InputError("--minutes-per-net must be positive")
        cfg.minutes_per_net = args.minutes_per_net
    if args.snr is not None:
        if not args.snr > 0:
            raise InputError("--snr must be positive")
        cfg.snr = args.snr
    if args.seed is not None:
        cfg.seed = args.seed
    if args.losses is not None:
        cfg.losses = tuple(comma_list(args.losses, "--losses"))
    run_demo(args.out, cfg, progress=None if args.no_progress else terminal_bars,
             log=terminal_lines)
    print(f"report: {args.out}/report.md")
    return 0
