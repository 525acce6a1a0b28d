"""Reproduce examples/invivo/network.pt: one command, every step.

    python examples/invivo/train_network.py [--work runs/invivo] [--threads 2]

Steps (each a ``crbnet`` command, printed as it runs; a step whose output exists is skipped,
so an interrupted run continues):

1. ``crbnet dataset``: simulated fingerprints of ``mt_generalized_bloch`` on the slice's
   sequence (control.mat, TR 3.5 ms) with the ranges of network.toml, as coefficients in the
   slice's basis (basis.mat, rank 15) with the CRBs of those coefficients.
2. ``crbnet train --loss crb`` on that dataset (offline).
3. ``crbnet train --init … --loss bias_reduced``: fine-tuning with the bias-reduced loss (Mao,
   Flassbeck, Assländer, arXiv 2312.11468) on the same data.
4. The shipped file: the fine-tuned checkpoint without its optimizer state (``resume``), with a
   fresh payload checksum, written to ``--ship`` (default examples/invivo/network.pt); its
   SHA-256 is printed (the README lists it).

Wall and CPU seconds of every step are written to WORK/timing.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: Fingerprints simulated (the last ``data.val_size`` = 1024 are the validation set).
N_SAMPLES = 42000
MODEL = ["--model", "mt_generalized_bloch", "--basis", str(HERE / "basis.mat"), "--basis-rank", "15"]
DATA = [*MODEL, "--config", str(HERE / "fingerprints.toml")]
TRAIN = [*MODEL, "--config", str(HERE / "network.toml")]


def steps(work: Path) -> list[tuple[str, Path, list[str]]]:
    """(name, output that marks it done, crbnet arguments)."""
    data, crb_run, bias_run = work / "fingerprints.h5", work / "crb", work / "bias_reduced"
    return [
        ("dataset", data, ["dataset", *DATA, "--n", str(N_SAMPLES), "--seed", "1",
                           "--chunk-rows", "500", "--out", str(data)]),
        ("train_crb", crb_run / "checkpoint.pt",
         ["train", *TRAIN, "--dataset", str(data), "--loss", "crb", "--epochs", "80",
          "--no-progress", "--out", str(crb_run)]),
        ("fine_tune", bias_run / "checkpoint.pt",
         ["train", *TRAIN, "--dataset", str(data), "--init", str(crb_run / "checkpoint.pt"),
          "--loss", "bias_reduced", "--batch-size", "1024", "--lr", "1e-4", "--epochs", "2",
          "--set", "loss.realizations=16", "--set", "loss.lam=1", "--set", "optim.lr_min=1e-5",
          "--set", "optim.warmup_epochs=0", "--no-progress", "--out", str(bias_run)]),
    ]


def cpu_seconds() -> float:
    """CPU time (user + system) of the finished child processes so far."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def ship(checkpoint: Path, out: Path) -> str:
    """Write ``checkpoint`` without its optimizer state to ``out``; returns its SHA-256."""
    from crbnet.learning import checkpoint as ckpt

    record = ckpt.read(checkpoint)
    payload = dict(record)
    payload["resume"] = None
    ckpt.save(out, payload)
    ckpt.read(out)                       # reads back, checksum verified
    return hashlib.sha256(out.read_bytes()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("runs/invivo"),
                        help="folder for the dataset and the two training runs")
    parser.add_argument("--ship", type=Path, default=HERE / "network.pt")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (numba, torch)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "NUMBA_NUM_THREADS": str(args.threads),
           "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    timing_file = args.work / "timing.json"
    timing = json.loads(timing_file.read_text()) if timing_file.exists() else {}
    for name, done, command in steps(args.work):
        if done.exists():
            print(f"[{name}] {done} exists: skipped")
            continue
        print(f"[{name}] crbnet {' '.join(command)}", flush=True)
        wall, cpu = time.perf_counter(), cpu_seconds()
        subprocess.run([sys.executable, "-m", "crbnet", *command], check=True, env=env)
        timing[name] = {"wall_s": round(time.perf_counter() - wall, 1),
                        "cpu_s": round(cpu_seconds() - cpu, 1)}
        timing_file.write_text(json.dumps(timing, indent=1))
    digest = ship(args.work / "bias_reduced" / "checkpoint.pt", args.ship)
    total = {k: round(sum(t[k] for t in timing.values()), 1) for k in ("wall_s", "cpu_s")}
    print(f"wrote {args.ship} (SHA-256 {digest}); steps {timing}; total {total}")


if __name__ == "__main__":
    main()
