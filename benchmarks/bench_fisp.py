"""FISP-MRF benchmark (issue 13): crbnet's fisp_mrf next to blochsim, at equal accuracy.

In one run, on the default 400-TR schedule:

- accuracy: crbnet's default (exact: orders that can reach an echo, see
  ``crbnet.physics.models.fisp_mrf``) against an untruncated recursion (every order up to the number of
  TRs), and blochsim's MRF simulator (``blochsim.mrf_sim``, float32 only) against itself with
  every order kept, over tissues up to T1 5 s, T2 3 s (CSF included); blochsim gets the fewest
  EPG states (from ``--bs-states``) that keep its worst relative error ≤ 1e-5. The two
  simulators are also checked against each other (conventions aligned: crbnet's TE decay, and
  a factor −i);
- throughput in voxels/s on ``--voxels`` voxels (training ranges of T1 and T2), best of
  ``--repeats``: crbnet ``simulate`` float32 and float64, Jacobian (T1, T2; float64) and CRB
  (float64), all on the compiled CPU route; on ``--func-voxels`` voxels, timed once, the tensor
  routes that CUDA runs: simulate and the Jacobian by tangents through the tensor recursion
  (``crbnet:tensor``), and the Jacobian and CRB by ``torch.func`` (``crbnet:func``, what ran
  before on every device); blochsim simulate and
  Jacobian (``diff=("T1", "T2")``) at its equal-accuracy states, and at 26 states (not equal
  accuracy; the old crbnet default) for context;
- training: ``crbnet train --model fisp_mrf`` end to end, this checkout against ``--before``
  (default 9b2b98a) given the same exact number of EPG states, by
  ``benchmarks/bench_fisp_train.py`` (its settings; ``--train-epochs``, ``--train-threads``,
  ``--train-repeats``); ``--no-train`` skips it.

Targets (PASS/FAIL): truncation error ≤ 1e-5; Jacobian and float32 simulate ≥ blochsim's at
equal accuracy; CRB ≤ 5× a float64 simulation in crbnet; training ≥ 2× faster than before.

blochsim is optional (``pip install -e .[bench]``): without it the blochsim rows and targets
are reported as missing and the rest still runs.

Usage::

    python benchmarks/bench_fisp.py [--quick] [--out-dir benchmarks/results] [--threads 2]
        [--voxels 10000] [--repeats 3] [--no-train] [--before 9b2b98a] [--train-epochs 2]

Writes ``<out-dir>/bench_fisp.json`` and ``<out-dir>/bench_fisp.png`` and prints a table.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TRUNCATION_TARGET = 1e-5
CRB_OVER_SIMULATE_TARGET = 5.0
TRAIN_SPEEDUP_TARGET = 2.0
OLD_DEFAULT_STATES = 26
# Tissues for the accuracy checks: T1 ≤ 5 s, T2 ≤ min(T1, 3 s), CSF included.
ACCURACY_TISSUES = [(t1, t2) for t1 in (0.3, 0.8, 1.5, 4.0, 5.0)
                    for t2 in (0.03, 0.1, 0.3, 1.0, 2.0, 3.0) if t2 <= t1]


def best_time(fn, repeats: int) -> float:
    """Best wall time of ``repeats`` calls after one untimed warm-up call."""
    fn()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def relative_error(got, ref) -> float:
    """max over voxels of max_t |got − ref| / max_t |ref|."""
    got, ref = np.asarray(got), np.asarray(ref)
    return float((np.abs(got - ref).max(-1) / np.abs(ref).max(-1)).max())


# ---- blochsim -------------------------------------------------------------------------------
def blochsim_available() -> bool:
    return importlib.util.find_spec("blochsim") is not None


def blochsim_run(seq, T1, T2, states: int, jacobian: bool):
    """blochsim's MRF simulation (ms and degrees; float32) of tissues T1, T2 [N] (s)."""
    import blochsim
    import torch

    flip = torch.tensor(np.rad2deg(seq.flip), dtype=torch.float32)
    tr = torch.tensor(seq.TR * 1e3, dtype=torch.float32)
    return blochsim.mrf_sim(flip, tr, torch.as_tensor(T1 * 1e3, dtype=torch.float32),
                            torch.as_tensor(T2 * 1e3, dtype=torch.float32),
                            diff=("T1", "T2") if jacobian else None, TI=seq.TI * 1e3,
                            states=int(states))


def blochsim_accuracy(seq, candidates: list[int]) -> dict:
    """blochsim's error against itself with every order kept, per candidate state count, and
    the fewest states meeting the target; plus its agreement with crbnet."""
    import crbnet

    T1 = np.array([t[0] for t in ACCURACY_TISSUES])
    T2 = np.array([t[1] for t in ACCURACY_TISSUES])
    full = blochsim_run(seq, T1, T2, seq.n_timepoints + 1, False).numpy()
    errors = {k: relative_error(blochsim_run(seq, T1, T2, k, False).numpy(), full)
              for k in sorted(candidates)}
    needed = next((k for k, e in errors.items() if e <= TRUNCATION_TARGET), seq.n_timepoints + 1)
    model = crbnet.get_model("fisp_mrf", sequence=seq)
    ours = model.simulate(_theta(T1, T2)).numpy()
    # crbnet reads the echo TE after the pulse; blochsim right after it, and its phase is i·…
    aligned = -1j * full * np.exp(-seq.TE / T2)[:, None]
    return {"states_needed": needed, "error_by_states": {str(k): e for k, e in errors.items()},
            "vs_crbnet": relative_error(aligned, ours)}


def _theta(T1, T2):
    import torch

    return torch.tensor(np.stack((T1, T2), 1), dtype=torch.float64)


# ---- crbnet --------------------------------------------------------------------------------
def crbnet_accuracy(model) -> dict:
    import torch

    from crbnet.physics.models.fisp_mrf import epg_signal

    seq = model.sequence
    T1 = np.array([t[0] for t in ACCURACY_TISSUES])
    T2 = np.array([t[1] for t in ACCURACY_TISSUES])
    theta = _theta(T1, T2)
    untruncated = epg_signal(theta[:, 0], theta[:, 1], 1.0, torch.tensor(seq.flip),
                             torch.tensor(seq.TR), seq.TE, seq.TI, seq.n_timepoints + 1)
    return {"n_states": model.n_states,
            "error": relative_error(model.simulate(theta).numpy(), untruncated.numpy()),
            "error_old_default": model.truncation_error(OLD_DEFAULT_STATES - 1)}


def throughput(model, seq, args, bs_states: int | None) -> list[dict]:
    import torch

    import crbnet
    from crbnet.stats.crb import signal_and_jacobian

    gen = torch.Generator().manual_seed(args.seed)
    n = args.voxels
    T1 = 0.1 + 3.9 * torch.rand(n, generator=gen, dtype=torch.float64)
    T2 = torch.minimum(0.01 + 0.49 * torch.rand(n, generator=gen, dtype=torch.float64), T1)
    theta = torch.stack((T1, T2), 1)
    # The routes CUDA takes, timed here on CPU: tangents through the tensor recursion, and
    # torch.func (jvp + vmap) through it.
    tangents = crbnet.get_model("fisp_mrf", sequence=seq)
    tangents.use_compiled_kernel = False
    generic = crbnet.get_model("fisp_mrf", sequence=seq)
    generic.use_compiled_kernel = generic.use_tensor_tangents = False
    small = theta[:args.func_voxels]
    rows = []

    def add(tool, what, dtype, states, fn, voxels, warmup=None):
        if warmup is not None:
            warmup()
        seconds = best_time(fn, args.repeats) if warmup is None else _timed(fn)
        rows.append({"tool": tool, "what": what, "dtype": dtype, "states": states,
                     "voxels": voxels, "seconds": seconds, "voxels_per_s": voxels / seconds})
        print(f"  {tool:<16} {what:<10} {dtype:<8} {states:>4} states  "
              f"{voxels / seconds:>10,.0f} voxels/s", flush=True)

    K = model.n_states
    add("crbnet", "simulate", "float32", K, lambda: model.simulate(theta.float()), n)
    add("crbnet", "simulate", "float64", K, lambda: model.simulate(theta), n)
    add("crbnet", "jacobian", "float64", K, lambda: signal_and_jacobian(model, theta), n)
    add("crbnet", "crb", "float64", K, lambda: crbnet.crb(model, theta), n)
    add("crbnet:tensor", "simulate", "float64", K, lambda: tangents.simulate(small), len(small),
        warmup=lambda: tangents.simulate(small[:4]))
    add("crbnet:tensor", "jacobian", "float64", K, lambda: signal_and_jacobian(tangents, small),
        len(small), warmup=lambda: signal_and_jacobian(tangents, small[:4]))
    # The torch.func route is slow on CPU: timed once, after a warm-up on a few voxels.
    add("crbnet:func", "jacobian", "float64", K, lambda: signal_and_jacobian(generic, small),
        len(small), warmup=lambda: signal_and_jacobian(generic, small[:4]))
    add("crbnet:func", "crb", "float64", K, lambda: crbnet.crb(generic, small), len(small),
        warmup=lambda: crbnet.crb(generic, small[:4]))
    if bs_states is not None:
        T1n, T2n = T1.numpy(), T2.numpy()
        for states in (bs_states, OLD_DEFAULT_STATES):
            tool = "blochsim" if states == bs_states else "blochsim:26"
            add(tool, "simulate", "float32", states,
                lambda s=states: blochsim_run(seq, T1n, T2n, s, False), n)
            add(tool, "jacobian", "float32", states,
                lambda s=states: blochsim_run(seq, T1n, T2n, s, True), n)
    return rows


# ---- training before / after -----------------------------------------------------------------
def _bench_fisp_train():
    """The sibling script ``bench_fisp_train.py`` as a module."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_fisp_train

    return bench_fisp_train


def training(args, exact_max_order: int) -> dict:
    """``bench_fisp_train.compare`` (the same comparison, run from here with this script's
    thread and epoch options, ``--train-repeats`` timed runs per side)."""
    bench_fisp_train = _bench_fisp_train()
    options = argparse.Namespace(threads=args.train_threads, epochs=args.train_epochs,
                                 repeats=args.train_repeats, before=args.before, seed=args.seed)
    return bench_fisp_train.compare(options, exact_max_order,
                                    log=lambda line: print(line, flush=True))


# ---- report -------------------------------------------------------------------------------
def find(rows, tool, what, dtype=None):
    for r in rows:
        if r["tool"] == tool and r["what"] == what and (dtype is None or r["dtype"] == dtype):
            return r["voxels_per_s"]
    return None


def judge(result: dict) -> dict:
    rows = result["rows"]
    sim64 = find(rows, "crbnet", "simulate", "float64")
    crb = find(rows, "crbnet", "crb")
    jac = find(rows, "crbnet", "jacobian")
    bs_sim, bs_jac = find(rows, "blochsim", "simulate"), find(rows, "blochsim", "jacobian")
    ratios = {
        "crb_cost_over_simulate_float64": sim64 / crb,
        "jacobian_cost_over_simulate_float64": sim64 / jac,
        "jacobian_vs_blochsim": None if bs_jac is None else jac / bs_jac,
        "simulate_float32_vs_blochsim": (None if bs_sim is None else
                                         find(rows, "crbnet", "simulate", "float32") / bs_sim),
        "crb_compiled_vs_torch_func": crb / find(rows, "crbnet:func", "crb"),
    }
    train = result.get("training")
    targets = {
        "truncation_error <= 1e-5": result["accuracy"]["crbnet"]["error"] <= TRUNCATION_TARGET,
        "crb <= 5x simulate": ratios["crb_cost_over_simulate_float64"] <= CRB_OVER_SIMULATE_TARGET,
        "jacobian >= blochsim": (None if ratios["jacobian_vs_blochsim"] is None
                                 else ratios["jacobian_vs_blochsim"] >= 1),
        "simulate float32 >= blochsim": (None if ratios["simulate_float32_vs_blochsim"] is None
                                         else ratios["simulate_float32_vs_blochsim"] >= 1),
        "training >= 2x faster": (None if train is None
                                  else train["speedup"] >= TRAIN_SPEEDUP_TARGET),
    }
    return {"ratios": ratios, "targets": targets}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from crbnet.plots import save_figure

    rows = result["rows"]
    train = result.get("training")
    fig, axes = plt.subplots(1, 2 if train else 1, figsize=(13 if train else 8, 4.8),
                             squeeze=False, gridspec_kw={"width_ratios": [3, 1] if train else [1]})
    ax = axes[0][0]
    labels = [f"{r['tool']}\n{r['what']} {r['dtype'][5:]}\n{r['states']} st." for r in rows]
    colors = ["tab:blue" if r["tool"] == "crbnet" else "tab:cyan" if r["tool"].startswith("crbnet")
              else "tab:orange" if r["tool"] == "blochsim" else "tab:gray" for r in rows]
    ax.bar(range(len(rows)), [r["voxels_per_s"] for r in rows], color=colors)
    ax.set_xticks(range(len(rows)), labels, fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("voxels / s")
    acc = result["accuracy"]
    bs = acc.get("blochsim")
    ax.set_title(f"fisp_mrf, {result['n_timepoints']} TRs, {result['threads']} threads; crbnet "
                 f"error {acc['crbnet']['error']:.0e}"
                 + ("" if bs is None else f", blochsim {bs['states_needed']} states (≤ 1e-5)"),
                 fontsize=9)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    if train:
        ax2 = axes[0][1]
        ax2.bar([0, 1], [train["before"]["wall_s"], train["after"]["wall_s"]],
                color=["tab:gray", "tab:blue"])
        ax2.set_xticks([0, 1], [f"before\n{train['before_rev']}", "after"])
        ax2.set_ylabel("crbnet train wall time (s)")
        ax2.set_title(f"training, {train['epochs']} epochs: {train['speedup']:.1f}x", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="2,000 voxels, one repetition, no training comparison")
    parser.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--voxels", type=int, default=10_000)
    parser.add_argument("--func-voxels", type=int, default=512,
                        help="voxels for the (slow) torch.func rows, timed once")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bs-states", default="150,170,175,178,179,180,181,182,185,190,200",
                        help="blochsim state counts tried for the accuracy target")
    parser.add_argument("--no-train", action="store_true")
    parser.add_argument("--before", default="9b2b98a", help="git revision of the 'before' code")
    parser.add_argument("--train-epochs", type=int, default=2)
    parser.add_argument("--train-threads", type=int, default=None,
                        help="threads of the training runs (default: --threads)")
    parser.add_argument("--train-repeats", type=int, default=1,
                        help="timed training runs per side (alternating)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.train_threads is None:
        args.train_threads = args.threads
    if args.quick:
        args.voxels, args.repeats, args.no_train = 2000, 1, True
        args.func_voxels = min(args.func_voxels, 256)

    import torch

    torch.set_num_threads(args.threads)
    import crbnet

    model = crbnet.get_model("fisp_mrf")
    seq = model.sequence
    result = {"n_timepoints": seq.n_timepoints, "threads": args.threads, "voxels": args.voxels,
              "cpu_count": os.cpu_count(), "platform": platform.platform(),
              "torch": torch.__version__, "load_average_start": list(os.getloadavg())}
    print("accuracy (max relative signal error, T1 ≤ 5 s, T2 ≤ 3 s)")
    result["accuracy"] = {"crbnet": crbnet_accuracy(model)}
    print(f"  crbnet {model.n_states} states: {result['accuracy']['crbnet']['error']:.1e} "
          f"(26 states: {result['accuracy']['crbnet']['error_old_default']:.1e})")
    bs_states = None
    if blochsim_available():
        import blochsim

        result["blochsim_version"] = getattr(blochsim, "__version__", "?")
        bs = blochsim_accuracy(seq, [int(k) for k in args.bs_states.split(",")])
        result["accuracy"]["blochsim"] = bs
        bs_states = bs["states_needed"]
        print(f"  blochsim needs {bs_states} states; agrees with crbnet to {bs['vs_crbnet']:.1e}")
    else:
        print("  blochsim is not installed (pip install -e .[bench]): its rows are missing")
        result["accuracy"]["blochsim"] = None
    print(f"throughput ({args.voxels} voxels, {args.threads} threads)")
    result["rows"] = throughput(model, seq, args, bs_states)
    if not args.no_train:
        print(f"training ({args.train_epochs} epochs; bench_fisp_train.py settings)")
        result["training"] = training(args, model.max_order)
    result["load_average_end"] = list(os.getloadavg())
    result.update(judge(result))
    for name, value in result["ratios"].items():
        print(f"  {name}: {'missing' if value is None else f'{value:.2f}'}")
    for name, ok in result["targets"].items():
        print(f"  {name}: {'missing' if ok is None else 'PASS' if ok else 'FAIL'}")
    _bench_fisp_train().write_results(result, Path(args.out_dir), "bench_fisp", plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
