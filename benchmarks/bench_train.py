"""Training benchmark (issue 3): samples/s, and time-to-target for a CRB-loss network.

Measures, on the CPU threads given (default 2):

1. network throughput: forward + backward + Adam step of the default mt_hybrid_state network on
   pre-made noisy coefficients (samples/s; no simulation, no CRB);
2. a CRB-loss network on mt_hybrid_state (default sequence, SNR 50, online pool mode) trained
   for ``--minutes``: wall time until the validation mean MSE/CRB first reaches ``--target``
   (1.2), end-to-end training samples/s, and the per-parameter validation MSE/CRB reached;
3. an MSE-loss network with the same time budget and settings, for comparison (validation in
   CRB units too).

Writes ``<out>.json`` and ``<out>.png`` (validation MSE/CRB against wall time for both nets).
Each training runs as ``python -m crbnet train`` in a subprocess with OMP_NUM_THREADS set.

Usage::

    python benchmarks/bench_train.py [--minutes 20] [--threads 2] [--snr 50]
        [--fix T1s=1] [--out benchmarks/results/bench_train] [--keep-runs DIR]

Timings depend on the machine and its load; the JSON records the CPU count and load average.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def network_throughput(threads: int, seconds: float = 10.0) -> dict:
    import torch

    import crbnet
    from crbnet.learning.nets import NetConfig, ParameterNet, output_ranges
    from crbnet.learning.training_config import model_training_defaults
    from crbnet.stats.sampling import ParameterSampler

    torch.set_num_threads(threads)
    model = crbnet.get_model("mt_hybrid_state")
    defaults = model_training_defaults(model)
    cfg = NetConfig(**defaults["net"])
    k, batch = 20, defaults["data"]["batch_size"]
    low, high, log = output_ranges(ParameterSampler(model).spec_dict(), model.bounds, 0.1)
    net = ParameterNet(k, model.parameters, low, high, log, cfg)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    g = torch.Generator().manual_seed(0)
    z = torch.view_as_complex(torch.randn(batch, k, 2, generator=g))
    target = torch.rand(batch, model.n_parameters, generator=g)
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        loss = ((net(z) - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
    dt = time.perf_counter() - t0
    return {"samples_per_s": steps * batch / dt, "batch_size": batch, "k": k,
            "net": cfg.to_dict()}


def run_training(name: str, loss: str, args: argparse.Namespace, out_dir: Path) -> dict:
    run = out_dir / name
    if run.exists():
        import shutil

        shutil.rmtree(run)
    cmd = [sys.executable, "-m", "crbnet", "train", "--model", "mt_hybrid_state", "--loss", loss,
           "--snr", str(args.snr), "--out", str(run), "--max-minutes", str(args.minutes),
           "--epochs", str(args.epochs), "--seed", str(args.seed), "--no-progress"]
    for f in args.fix:
        cmd += ["--fix", f]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
    summary = json.loads((run / "summary.json").read_text())
    with open(run / "metrics.csv") as fh:
        rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(fh)]
    reached = next((r for r in rows if r["val_crb_loss_mean"] <= args.target), None)
    return {
        "run_dir": str(run),
        "command": " ".join(cmd),
        "process_wall_s": wall,
        "epochs": summary["epochs"],
        "setup_time_s": summary["setup_time_s"],
        "samples_per_s": summary["samples_per_s"],
        "val_crb_loss": summary["val_crb_loss"],
        "val_crb_loss_mean": summary["val_crb_loss_mean"],
        "val_crb_over_prior_variance": summary.get("val_crb_over_prior_variance"),
        "subspace": summary["subspace"],
        "time_to_target_s": None if reached is None else reached["elapsed_seconds"],
        "epoch_at_target": None if reached is None else int(reached["epoch"]),
        "curve": [{"elapsed_s": r["elapsed_seconds"], "epoch": int(r["epoch"]),
                   "val_crb_loss_mean": r["val_crb_loss_mean"],
                   **{p: r[f"val_crb_loss_{p}"] for p in summary["parameters"]}} for r in rows],
        "parameters": summary["parameters"],
    }


def plot(result: dict, path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from crbnet.plots import save_figure, subplots

    runs = result["runs"]
    params = runs["crb"]["parameters"]
    fig, axes = subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, key in zip(axes, ("crb", "mse")):
        r = runs[key]
        t = [c["elapsed_s"] / 60 for c in r["curve"]]
        for i, p in enumerate(params):
            ax.plot(t, [c[p] for c in r["curve"]], f"C{i}-", lw=1.2, label=p)
        ax.plot(t, [c["val_crb_loss_mean"] for c in r["curve"]], "k-", lw=2.2, label="mean")
        ax.axhline(1.0, color="gray", ls="--", lw=1, label="ideal = 1")
        ax.axhline(result["target"], color="C3", ls=":", lw=1, label=f"target {result['target']}")
        ax.set_yscale("log")
        ax.set_xlabel("wall time (min)")
        ax.set_title(f"{key.upper()}-loss network, mt_hybrid_state, SNR {result['snr']}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("validation MSE / CRB")
    axes[1].legend(fontsize=8, ncol=2)
    fig.suptitle(f"{result['threads']} CPU thread(s); network-only throughput "
                 f"{result['network_throughput']['samples_per_s']:.0f} samples/s")
    fig.tight_layout()
    save_figure(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=20.0, help="time budget per network")
    ap.add_argument("--epochs", type=int, default=1000, help="epoch cap (the budget usually "
                                                              "stops first)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--snr", type=float, default=50.0)
    ap.add_argument("--target", type=float, default=1.2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fix", action="append", default=[], metavar="NAME=VALUE")
    ap.add_argument("--keep-runs", metavar="DIR", help="keep the two run directories here")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" /
                                         "bench_train"))
    args = ap.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Run directories (checkpoints, a few MB) go to a temporary folder unless --keep-runs.
    import tempfile

    work = Path(args.keep_runs) if args.keep_runs else Path(tempfile.mkdtemp(prefix="bench_train_"))
    result = {
        "benchmark": "bench_train",
        "cpu_count": os.cpu_count(),
        "load_average_start": os.getloadavg(),
        "threads": args.threads,
        "snr": args.snr,
        "snr_definition": "|M0| / sigma",
        "target": args.target,
        "budget_minutes": args.minutes,
        "fixed": args.fix,
        "network_throughput": network_throughput(args.threads),
        "runs": {},
    }
    for loss in ("crb", "mse"):
        print(f"training {loss}-loss network for up to {args.minutes} min ...", flush=True)
        result["runs"][loss] = run_training(f"{loss}", loss, args, work)
        r = result["runs"][loss]
        print(f"  {r['epochs']} epochs, val MSE/CRB mean {r['val_crb_loss_mean']:.3g}, "
              f"time to <= {args.target}: {r['time_to_target_s']}", flush=True)
    result["load_average_end"] = os.getloadavg()
    crb_run = result["runs"]["crb"]
    result["time_to_target_s"] = crb_run["time_to_target_s"]
    result["meets_20_min_target"] = (crb_run["time_to_target_s"] is not None
                                     and crb_run["time_to_target_s"] <= 20 * 60)
    from crbnet.files import write_json

    write_json(out.with_suffix(".json"), result)
    plot(result, out.with_suffix(".png"))
    print(json.dumps({k: result[k] for k in ("time_to_target_s", "meets_20_min_target")}))
    for loss in ("crb", "mse"):
        r = result["runs"][loss]
        print(f"{loss}: samples/s {r['samples_per_s']:.0f}; val MSE/CRB " +
              ", ".join(f"{p} {v:.3g}" for p, v in r["val_crb_loss"].items()))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")
    if not args.keep_runs:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
