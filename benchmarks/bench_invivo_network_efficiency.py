"""Why are B1 and ω0 harder for the in-vivo network? Its efficiency on the held-out rows of the
training dataset, split by |ω0|, and with ω0's sign ignored.

    python benchmarks/bench_invivo_network_efficiency.py --dataset runs/invivo/fingerprints.h5 \
        [--checkpoint examples/invivo/network.pt] [--snr 30] [--realizations 8]

The last ``--val`` rows of the dataset (those ``crbnet train`` held out) are measured
``--realizations`` times at SNR ``--snr`` (|M0|/σ, random M0 phase), estimated by the network,
and MSE/CRB per parameter is reported for all rows and for |ω0| < 150, 150–300 and > 300 rad/s,
plus the ω0 error of |ω̂0| against |ω0| (what remains once the sign, nearly ambiguous for small
|ω0| — the signal at −ω0 is the complex conjugate of that at +ω0 — is left out). Writes
benchmarks/results/bench_invivo_network_efficiency.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import h5py
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "examples/invivo/network.pt")
    parser.add_argument("--snr", type=float, default=30.0)
    parser.add_argument("--realizations", type=int, default=8)
    parser.add_argument("--val", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from crbnet.estimators.network import load

    with h5py.File(args.dataset, "r") as f:
        theta = f["theta"][-args.val:]
        crb = f["crb"][-args.val:]                      # σ = 1, |M0| = 1, coefficient CRBs
        z = f["coefficients"][-args.val:].astype(np.complex128)
    net = load(args.checkpoint)
    estimator = net.in_basis(torch.as_tensor(np.asarray(h5py.File(args.dataset, "r")["basis"])))
    names = list(net.parameters)
    rng = np.random.default_rng(args.seed)
    sigma = 1.0 / args.snr
    err2, abs_err2 = [], []
    w = names.index("omega0")
    for _ in range(args.realizations):
        m0 = np.exp(2j * np.pi * rng.random(len(z)))
        noise = sigma * (rng.standard_normal(z.shape) + 1j * rng.standard_normal(z.shape))
        est = estimator.predict(torch.as_tensor((m0[:, None] * z + noise).astype(np.complex64)))
        est = est.numpy()
        err2.append((est - theta) ** 2 / (crb * sigma ** 2))
        abs_err2.append((np.abs(est[:, w]) - np.abs(theta[:, w])) ** 2 / (crb[:, w] * sigma ** 2))
    e = np.mean(err2, 0)
    ea = np.mean(abs_err2, 0)
    om = np.abs(theta[:, w])
    groups = {"all": om >= 0, "|omega0|<150": om < 150, "150-300": (om >= 150) & (om < 300),
              ">300": om >= 300}
    result = {"snr": args.snr, "realizations": args.realizations, "rows": int(len(z)),
              "mse_over_crb": {g: {p: float(np.mean(e[sel, j])) for j, p in enumerate(names)}
                               for g, sel in groups.items()},
              "median_se_over_crb": {g: {p: float(np.median(e[sel, j]))
                                         for j, p in enumerate(names)}
                                     for g, sel in groups.items()},
              "abs_omega0_mse_over_crb": {g: float(np.mean(ea[sel])) for g, sel in groups.items()},
              "crb_std_omega0_median": {g: float(np.median(np.sqrt(crb[sel, w]) * sigma))
                                        for g, sel in groups.items()},
              "crb_std_B1_median": {g: float(np.median(np.sqrt(crb[sel, names.index("B1")])
                                                       * sigma)) for g, sel in groups.items()}}
    out = ROOT / "benchmarks" / "results" / "bench_invivo_network_efficiency.json"
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
