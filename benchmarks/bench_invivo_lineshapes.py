"""Does the physics fit the tissue? NLLS maps of white-matter voxels of the shipped in-vivo slice
(examples/invivo) with the super-Lorentzian and the Lorentzian semi-solid lineshape.

    python benchmarks/bench_invivo_lineshapes.py [--voxels 24] [--seed 0]

White-matter-like voxels: inside the brain mask eroded by 6 voxels, the lowest 15 % of the
ratio |c₂|/|c₀| of the third to the first subspace coefficient (white matter is dark in c₂,
grey matter and CSF bright; a crude rule on the data themselves, no segmentation); ``--voxels``
of them drawn with ``--seed``. Each lineshape is fitted by ``crbnet apply --method nlls`` with
B1 and ω0 estimated. Reported: per-parameter medians and interquartile ranges, the ratio of the
residual noise levels (Lorentzian / super-Lorentzian, per voxel: median, mean ± standard error)
and how many T2s estimates sit at the edge of the range. Writes
``benchmarks/results/bench_invivo_lineshapes.{json,png}``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SLICE = ROOT / "examples" / "invivo"
OUT = ROOT / "benchmarks" / "results"
PARAMETERS = ("m0s", "T1f", "T2f", "Rx", "T1s", "T2s", "TB1map", "omega0")
LINESHAPES = ("super_lorentzian", "lorentzian")


def white_matter_mask(n_voxels: int, seed: int) -> np.ndarray:
    """The crop of white-matter-like voxels (module docstring), in MATLAB's axis order."""
    from scipy.ndimage import binary_erosion

    from crbnet import matfile

    variables = matfile.variables(SLICE / "coeffs.mat")
    x, mask = variables["x"].read(), variables["mask"].read().astype(bool)
    ratio = np.abs(x[..., 2]) / np.maximum(np.abs(x[..., 0]), 1e-30)
    inner = binary_erosion(mask, iterations=6)
    low = inner & (ratio <= np.percentile(ratio[inner], 15))
    candidates = np.argwhere(low)
    pick = candidates[np.random.default_rng(seed).choice(len(candidates), n_voxels,
                                                         replace=False)]
    crop = np.zeros_like(mask)
    crop[tuple(pick.T)] = True
    return crop


def fit(lineshape: str, mask_file: Path, out: Path) -> float:
    """``crbnet apply --method nlls`` on the crop; returns its seconds."""
    command = [sys.executable, "-m", "crbnet", "apply", "--input", str(SLICE / "coeffs.mat"),
               "--basis", str(SLICE / "basis.mat"), "--basis-rank", "15",
               "--model", "mt_generalized_bloch", "--sequence", str(SLICE / "control.mat"),
               "--model-option", "TR=3.5e-3", "--model-option", f"lineshape={lineshape}",
               "--method", "nlls", "--mask", str(mask_file), "--noise", "residual",
               "--out", str(out)]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, text=True)
    return time.perf_counter() - start


def voxel_values(folder: Path, name: str) -> np.ndarray:
    import nibabel as nib

    mask = np.asarray(nib.load(folder / "mask.nii.gz").dataobj) > 0
    return np.asarray(nib.load(folder / f"{name}.nii.gz").dataobj)[mask].astype(float)


def summary(values: np.ndarray) -> dict:
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    return {"median": float(median), "q1": float(q1), "q3": float(q3)}


def figure(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [p for p in PARAMETERS if p != "omega0"] + ["sigma_residual"]
    fig, axes = plt.subplots(1, len(names), figsize=(2.1 * len(names), 3.4))
    for ax, name in zip(axes, names):
        data = [result["voxels"][ls][name] for ls in LINESHAPES]
        ax.boxplot(data, showfliers=False)
        ax.set_xticks([1, 2], ["super-\nLorentzian", "Lorentzian"], fontsize=7)
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
    fig.suptitle(f"NLLS on {result['voxels_fitted']} white-matter voxels of the in-vivo slice: "
                 f"residual ratio Lorentzian / super-Lorentzian "
                 f"{result['residual_ratio']['median']:.2f} (median)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--voxels", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from crbnet import matfile

    result: dict = {"voxels_fitted": args.voxels, "seed": args.seed, "seconds": {},
                    "parameters": {}, "voxels": {}, "load": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as tmp:
        mask_file = Path(tmp) / "wm.mat"
        matfile.write_v73(mask_file, {"mask": white_matter_mask(args.voxels, args.seed)})
        for lineshape in LINESHAPES:
            folder = Path(tmp) / lineshape
            result["seconds"][lineshape] = fit(lineshape, mask_file, folder)
            values = {n: voxel_values(folder, n) for n in (*PARAMETERS, "sigma_residual")}
            result["voxels"][lineshape] = {k: v.tolist() for k, v in values.items()}
            result["parameters"][lineshape] = {k: summary(v) for k, v in values.items()}
            result["parameters"][lineshape]["T2s_at_upper_bound"] = int(
                np.sum(values["T2s"] >= 25e-6 * (1 - 1e-3)))
    ratio = (np.array(result["voxels"]["lorentzian"]["sigma_residual"])
             / np.array(result["voxels"]["super_lorentzian"]["sigma_residual"]))
    result["residual_ratio"] = {**summary(ratio), "mean": float(ratio.mean()),
                                "standard_error": float(ratio.std(ddof=1) / np.sqrt(ratio.size))}
    OUT.mkdir(parents=True, exist_ok=True)
    from crbnet.files import write_json

    write_json(OUT / "bench_invivo_lineshapes.json", result, indent=1)
    figure(result, OUT / "bench_invivo_lineshapes.png")
    for lineshape in LINESHAPES:
        row = result["parameters"][lineshape]
        print(lineshape, {k: f"{v['median']:.4g} ({v['q1']:.3g}-{v['q3']:.3g})"
                          for k, v in row.items() if isinstance(v, dict)},
              "T2s at the upper bound:", row["T2s_at_upper_bound"],
              f"({result['seconds'][lineshape]:.0f} s)")
    r = result["residual_ratio"]
    print(f"residual ratio Lorentzian / super-Lorentzian: median {r['median']:.3f}, "
          f"mean {r['mean']:.3f} ± {r['standard_error']:.3f}")


if __name__ == "__main__":
    main()
