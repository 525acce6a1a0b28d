"""The two MT physics on one acquisition: `mt_hybrid_state` (Graham's Lorentzian saturation
rate, spin-locked free pool) against `mt_generalized_bloch` with the Lorentzian, Gaussian and
super-Lorentzian lineshapes, for white and grey matter.

    python benchmarks/bench_mt_physics.py [--sequence control.mat --tr 3.5e-3]

Without arguments it plays the in-vivo sequence of ``../shared/data/invivo_mt/control.mat``
(TR 3.5 ms) where that file is present and says so, else `mt_generalized_bloch`'s default
sequence. Writes ``benchmarks/results/bench_mt_physics.{json,png}``.

What to expect: the Lorentzian generalized Bloch model and the hybrid-state model share the
same physics up to two approximations of the latter — Graham's rate (the Lorentzian model's
limit for w·T2s → 0, exact to O(w·T2s)²) and the hybrid state of the free pool — so they differ
by a few per cent; the super-Lorentzian line saturates the semi-solid pool several times more
strongly for the same T2s, which changes the signal far more.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from crbnet.physics import models

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "invivo_mt" / "control.mat"
OUT = ROOT / "benchmarks" / "results"

# Literature-like values for this model family (docs/physics.md §5; README "In vivo").
TISSUES = {
    "WM": {"m0s": 0.2, "T1f": 1.85, "T2f": 0.077, "Rx": 16.0, "T1s": 0.34, "T2s": 12e-6},
    "GM": {"m0s": 0.1, "T1f": 2.3, "T2f": 0.09, "Rx": 16.0, "T1s": 0.34, "T2s": 12e-6},
}
MODELS = (("mt_hybrid_state", {}), ("mt_generalized_bloch", {"lineshape": "lorentzian"}),
          ("mt_generalized_bloch", {"lineshape": "gaussian"}),
          ("mt_generalized_bloch", {"lineshape": "super_lorentzian"}))


def label(name: str, options: dict) -> str:
    return name if not options else f"{name} ({options['lineshape']})"


def signals(sequence, tr: float | None) -> dict[str, dict[str, np.ndarray]]:
    """Real part of each model's signal (M0 = 1, B1 = 1, ω0 = 0) per tissue."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for name, options in MODELS:
        extra = {"TR": tr} if tr else {}
        fixed = {"B1": 1.0} if name == "mt_hybrid_state" else {"B1": 1.0, "omega0": 0.0}
        model = models.get(name, sequence=sequence, fixed=fixed, **options, **extra)
        out[label(name, options)] = {
            t: model.simulate(model.theta_from_dict(v))[0].real.numpy() for t, v in TISSUES.items()}
    return out


def differences(sig: dict[str, dict[str, np.ndarray]]) -> dict:
    """Relative RMS and maximum differences (over the largest |signal| of the reference)."""
    pairs = (("mt_generalized_bloch (lorentzian)", "mt_hybrid_state"),
             ("mt_generalized_bloch (super_lorentzian)", "mt_generalized_bloch (lorentzian)"),
             ("mt_generalized_bloch (super_lorentzian)", "mt_generalized_bloch (gaussian)"),
             ("mt_generalized_bloch (super_lorentzian)", "mt_hybrid_state"))
    out = {}
    for ref, other in pairs:
        for t in TISSUES:
            a, b = sig[ref][t], sig[other][t]
            out[f"{other} vs {ref}, {t}"] = {
                "rms_relative": float(np.linalg.norm(b - a) / np.linalg.norm(a)),
                "max_over_peak": float(np.abs(b - a).max() / np.abs(a).max())}
    return out


def figure(sig, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(TISSUES), 1, figsize=(10, 3.2 * len(TISSUES)), sharex=True)
    for ax, tissue in zip(np.atleast_1d(axes), TISSUES):
        for name, by_tissue in sig.items():
            ax.plot(by_tissue[tissue], lw=0.8, label=name)
        ax.set_ylabel(f"{tissue}: Re signal (M0 = 1)")
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].legend(fontsize=8, loc="lower right")
    np.atleast_1d(axes)[-1].set_xlabel("echo (segments concatenated)")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sequence", help="segmented sequence (.mat or JSON)")
    parser.add_argument("--tr", type=float, default=None, help="TR (s) when the file has none")
    args = parser.parse_args()
    sequence, tr, source = args.sequence, args.tr, args.sequence
    if sequence is None and SHARED.is_file():
        sequence, tr, source = str(SHARED), 3.5e-3, "in-vivo sequence (../shared/data/invivo_mt)"
    elif sequence is None:
        print("../shared/data/invivo_mt/control.mat not found: using the default sequence")
        source = "mt_generalized_bloch default sequence"
    start = time.perf_counter()
    sig = signals(sequence, tr)
    result = {"sequence": source, "tissues": TISSUES, "differences": differences(sig),
              "seconds": time.perf_counter() - start, "load": os.getloadavg()[0]}
    OUT.mkdir(parents=True, exist_ok=True)
    from crbnet.files import write_json

    write_json(OUT / "bench_mt_physics.json", result, indent=1)
    figure(sig, OUT / "bench_mt_physics.png", f"MT physics on the {source}")
    for key, value in result["differences"].items():
        print(f"{key:80s} rms {value['rms_relative']:.3f}  max {value['max_over_peak']:.3f}")


if __name__ == "__main__":
    torch.set_num_threads(int(os.environ.get("CRBNET_BENCH_THREADS", "2")))
    main()
