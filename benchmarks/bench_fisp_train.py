"""fisp_mrf CRB-net training end to end, this checkout against the code before issue 13.

``crbnet train --model fisp_mrf`` runs as a fresh process (wall time from start to exit:
imports, set-up, every epoch, validation, files) with this checkout's ``src`` and with the
``src`` of ``--before`` (default 9b2b98a, the commit before the exact-EPG / compiled-kernel
work), checked out in a temporary ``git worktree``. The old code's default kept 26 EPG states;
it is given the exact number here, ``(T + 1) // 2`` (its ``max_order`` is set to
``(T + 1) // 2 − 1`` before the CLI runs), so both train on the same exact signals and CRBs.

Same everything else: seed, epochs, threads (``torch.set_num_threads`` and
``OMP_NUM_THREADS``), and a small configuration that keeps the default fisp_mrf settings'
proportions (:data:`SETTINGS`: the pool, its refresh, the validation set and the batches per
epoch all divided by 8, so each epoch still refreshes 2.56 CRBs per network step; network,
batch size, loss, subspace fit and learning rate are the defaults) and the training ranges of
the current code (T1 0.1–5 s, T2 0.01–2.5 s; the old code's defaults were narrower). One
untimed warm-up run of this checkout fills numba's disk cache (a once-per-machine compile);
then the timed runs alternate (after, before, before, after, ...) so that both see the same
load.
``os.getloadavg()`` is recorded around every run.

Usage::

    python benchmarks/bench_fisp_train.py [--threads 1] [--epochs 4] [--repeats 2]
        [--before 9b2b98a] [--out-dir benchmarks/results] [--quick] [--default-settings]
        [--warm-before]

Writes ``<out-dir>/bench_fisp_train.json`` and ``.png``; target: speed-up ≥ 2 (ratio of the
median wall times).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = 2.0
# The default fisp_mrf data settings (pool 8192, refresh 1024, validation 1024, 400 batches
# per epoch) divided by 8.
SETTINGS = ("data.pool_size=1024", "data.pool_refresh=128", "data.val_size=128",
            "data.batches_per_epoch=50")
RANGES = ("T1=0.1:5", "T2=0.01:2.5")


def checkout(rev: str, into: Path) -> Path:
    """A detached ``git worktree`` of ``rev`` at ``into``; returns its ``src``."""
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(into), rev],
                   check=True, capture_output=True)
    return into / "src"


def remove_checkout(into: Path) -> None:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(into)],
                   capture_output=True)


def train_command(run_dir: Path, args: argparse.Namespace) -> list[str]:
    cli = ["train", "--model", "fisp_mrf", "--out", str(run_dir), "--epochs", str(args.epochs),
           "--seed", str(args.seed), "--no-progress"]
    for setting in () if getattr(args, "default_settings", False) else SETTINGS:
        cli += ["--set", setting]
    for spec in RANGES:
        cli += ["--range", spec]
    return cli


def launcher(cli: list[str], threads: int, max_order: int | None) -> str:
    """Python code that sets the thread count, (old code) the EPG order, and runs the CLI."""
    patch = ""
    if max_order is not None:
        patch = ("from crbnet.physics.models.fisp_mrf import FISPMRF\n"
                 "FISPMRF.__init__.__defaults__ = (None, None, %d)\n"
                 "assert FISPMRF().max_order == %d\n" % (max_order, max_order))
    return (f"import sys, torch\ntorch.set_num_threads({threads})\n{patch}"
            f"from crbnet.cli.app import main\nsys.exit(main({cli!r}))\n")


def train_once(src: Path, run_dir: Path, max_order: int | None,
               args: argparse.Namespace) -> dict:
    """One ``crbnet train`` in a fresh process with package ``src``: wall time and summary."""
    code = launcher(train_command(run_dir, args), args.threads, max_order)
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS=str(args.threads))
    load_before = list(os.getloadavg())
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"training with {src} failed:\n{proc.stderr[-3000:]}")
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"wall_s": wall, "load_before": load_before, "load_after": list(os.getloadavg()),
            "in_process_wall_s": summary.get("wall_time_s"),
            "setup_s": summary.get("setup_time_s"), "train_s": summary.get("train_time_s"),
            "samples": summary.get("samples"), "epochs": summary.get("epochs"),
            "val_crb_loss_mean": summary.get("val_crb_loss_mean"),
            "subspace_k": (summary.get("subspace") or {}).get("k")}


def compare(args: argparse.Namespace, exact_max_order: int, log=print) -> dict:
    """Warm-up, then ``args.repeats`` timed runs per side, alternating; returns the record."""
    runs: dict[str, list[dict]] = {"after": [], "before": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        before_src = checkout(args.before, tmp / "before")
        sources = {"after": (ROOT / "src", None), "before": (before_src, exact_max_order)}
        try:
            # This checkout's compiled kernels fill numba's disk cache on a first run (once per
            # machine); 9b2b98a has none. --warm-before warms a --before that has them too.
            for side in ("after", "before") if getattr(args, "warm_before", False) else ("after",):
                src, order = sources[side]
                warm = train_once(src, tmp / f"warm-{side}", order, args)
                log(f"  warm-up {side}: {warm['wall_s']:.1f} s")
            order_of_runs = []
            for i in range(args.repeats):
                order_of_runs += ["after", "before"] if i % 2 == 0 else ["before", "after"]
            for i, side in enumerate(order_of_runs):
                src, order = sources[side]
                run = train_once(src, tmp / f"{side}-{i}", order, args)
                runs[side].append(run)
                log(f"  {side:6s} {run['wall_s']:7.1f} s (in process {run['in_process_wall_s']:.1f}"
                    f" s, setup {run['setup_s']:.1f} s, load {run['load_before'][0]:.1f})")
        finally:
            remove_checkout(tmp / "before")
    med = {side: statistics.median(r["wall_s"] for r in runs[side]) for side in runs}
    return {"before_rev": args.before, "before_max_order": exact_max_order,
            "warm_before": bool(getattr(args, "warm_before", False)),
            "epochs": args.epochs, "threads": args.threads, "repeats": args.repeats,
            "settings": [] if getattr(args, "default_settings", False) else list(SETTINGS),
            "ranges": list(RANGES),
            "command": ["crbnet"] + train_command(Path("RUN_DIR"), args),
            "runs": runs, "order": order_of_runs,
            "before": {"wall_s": med["before"]}, "after": {"wall_s": med["after"]},
            "speedup": med["before"] / med["after"],
            "speedup_min": (min(r["wall_s"] for r in runs["before"])
                            / min(r["wall_s"] for r in runs["after"]))}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from crbnet.plots import save_figure

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for x, side, color in ((0, "before", "tab:gray"), (1, "after", "tab:blue")):
        walls = [r["wall_s"] for r in result["runs"][side]]
        ax.bar(x, result[side]["wall_s"], color=color, alpha=0.7)
        ax.plot([x] * len(walls), walls, "k.", ms=8)
    ax.set_xticks([0, 1], [f"before ({result['before_rev']},\nmax_order "
                           f"{result['before_max_order']})", "after (this checkout)"])
    ax.set_ylabel("crbnet train wall time (s), median and runs")
    load = [r["load_before"][0] for side in ("before", "after") for r in result["runs"][side]]
    settings = "scaled settings" if result["settings"] else "default settings"
    ax.set_title(f"fisp_mrf training ({settings}), {result['epochs']} epochs, "
                 f"{result['threads']} thread(s), "
                 f"load {min(load):.1f}–{max(load):.1f}: {result['speedup']:.2f}x", fontsize=9)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per side")
    parser.add_argument("--before", default="9b2b98a", help="git revision of the 'before' code")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warm-before", action="store_true",
                        help="an untimed warm-up run of --before too (a revision with numba "
                             "kernels, whose fresh checkout compiles them on its first run)")
    parser.add_argument("--default-settings", action="store_true",
                        help="the default fisp_mrf data settings instead of SETTINGS (pool "
                             "8192: minutes per old run); writes bench_fisp_train_default.*")
    parser.add_argument("--quick", action="store_true", help="2 epochs, one timed run per side")
    parser.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.repeats = 2, 1

    import torch

    import crbnet

    model = crbnet.get_model("fisp_mrf")
    result = {"n_timepoints": model.n_timepoints, "states": model.n_states,
              "cpu_count": os.cpu_count(), "platform": platform.platform(),
              "torch": torch.__version__, "load_average_start": list(os.getloadavg())}
    settings = "default settings" if args.default_settings else ", ".join(SETTINGS)
    print(f"fisp_mrf training, {args.epochs} epochs, {args.threads} thread(s), {settings}; "
          f"before = {args.before} with max_order {model.max_order}")
    result.update(compare(args, model.max_order))
    result["load_average_end"] = list(os.getloadavg())
    result["target"] = {"speedup >= 2": result["speedup"] >= TARGET}
    print(f"median wall: before {result['before']['wall_s']:.1f} s, after "
          f"{result['after']['wall_s']:.1f} s: {result['speedup']:.2f}x "
          f"({'PASS' if result['speedup'] >= TARGET else 'FAIL'}; best-of: "
          f"{result['speedup_min']:.2f}x)")
    stem = "bench_fisp_train_default" if args.default_settings else "bench_fisp_train"
    write_results(result, Path(args.out_dir), stem, plot)
    return 0


def write_results(result: dict, out: Path, stem: str, plot_fn) -> None:
    """``<out>/<stem>.json`` and ``.png`` (``plot_fn(result, path)``), then say so."""
    from crbnet.files import write_json

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"{stem}.json", result)
    plot_fn(result, out / f"{stem}.png")
    print(f"wrote {out / f'{stem}.json'} and {out / f'{stem}.png'}")


if __name__ == "__main__":
    raise SystemExit(main())
