"""Maps of the shipped in-vivo slice by the shipped network and by NLLS, side by side; their
agreement in CRB units; WM/GM tables; the lineshapes' residuals.

    python benchmarks/bench_invivo_maps.py [--rows 84:92] [--lineshape-every 2]

1. Network: ``crbnet apply --checkpoint examples/invivo/network.pt`` on the whole slice
   (timed; with the M0, residual and goodness-of-fit maps, no CRB maps), and the network alone
   (reading + estimation, :func:`crbnet.reporting.invivo.network_maps`).
2. NLLS: ``crbnet apply --method nlls_network`` (Levenberg–Marquardt started from the network and
   from the same point with ω0's sign flipped; gtol 1e-3, see
   :mod:`crbnet.estimators.nlls_network_start`) with CRB maps at the NLLS estimate and σ from the
   residuals, on a band of rows of the slice (``--rows``; the whole slice takes hours of CPU
   with the current kernel: the per-voxel cost is measured and extrapolated).
3. WM/GM masks from the network's full-slice maps (:func:`crbnet.imaging.tissue_regions.
   tissue_masks`); in WM ∩ band: median |network − NLLS| / √CRB per parameter; WM and GM medians
   (IQR) of every parameter, network (whole slice) and NLLS (band).
4. Lineshapes: the same band (every ``--lineshape-every``-th voxel) fitted with
   ``lineshape=lorentzian`` and with ``mt_hybrid_state`` (B1 free, no ω0), both started from the
   network; median residual level in WM and GM and the T2s each needs.

Writes benchmarks/results/bench_invivo_maps.json, docs/invivo_maps.png (network and NLLS maps
side by side) and docs/invivo_residuals.png.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SLICE = ROOT / "examples" / "invivo"
OUT = ROOT / "benchmarks" / "results"
DOCS = ROOT / "docs"
NETWORK = SLICE / "network.pt"
DATA = ["--input", str(SLICE / "coeffs.mat"), "--basis", str(SLICE / "basis.mat"),
        "--basis-rank", "15"]
SEQUENCE = ["--sequence", str(SLICE / "control.mat"), "--model-option", "TR=3.5e-3"]


def crbnet(args: list[str]) -> dict:
    """Run ``crbnet ARGS``; wall and CPU seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "crbnet", *args], check=True, capture_output=True,
                   text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"wall_s": round(time.perf_counter() - t0, 2),
            "cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 2)}


def band_mask(rows: tuple[int, int], every: int = 1) -> np.ndarray:
    """The slice's mask restricted to rows [r0, r1) (MATLAB order), every ``every``-th voxel."""
    from crbnet import matfile

    mask = matfile.variables(SLICE / "coeffs.mat")["mask"].read().astype(bool)
    band = np.zeros_like(mask)
    band[rows[0]:rows[1]] = mask[rows[0]:rows[1]]
    if every > 1:
        idx = np.argwhere(band)
        band[:] = False
        band[tuple(idx[::every].T)] = True
    return band


def read_maps(folder: Path, names: list[str]) -> dict[str, np.ndarray]:
    import nibabel as nib

    return {n: np.asarray(nib.load(folder / f"{n}.nii.gz").dataobj).astype(float)
            for n in names if (folder / f"{n}.nii.gz").exists()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="84:92", help="band of rows fitted by NLLS")
    parser.add_argument("--lineshape-every", type=int, default=2)
    parser.add_argument("--work", type=Path, help="keep the maps here (default: temporary)")
    parser.add_argument("--reuse", action="store_true",
                        help="the maps in --work exist: skip the runs, keep the seconds recorded "
                             "in the results JSON, recompute masks, tables and figures")
    args = parser.parse_args()
    from crbnet import matfile
    from crbnet.reporting.invivo import MAP_NAMES, UNITS, network_maps, region_table
    from crbnet.imaging.tissue_regions import (
        agreement_in_crb_units,
        region_statistics,
        tissue_masks,
    )
    from crbnet.plots.invivo import plot_rows_of_maps

    rows = tuple(int(v) for v in args.rows.split(":"))
    result: dict = {"rows": list(rows), "load_at_start": os.getloadavg()[0], "seconds": {}}
    t0 = time.perf_counter()
    maps_only, slice_mask = network_maps(NETWORK)
    result["seconds"]["network_alone"] = round(time.perf_counter() - t0, 2)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        band_file, sparse_file = work / "band.mat", work / "sparse.mat"
        if not args.reuse:
            matfile.write_v73(band_file, {"mask": band_mask(rows)})
            matfile.write_v73(sparse_file, {"mask": band_mask(rows, args.lineshape_every)})
        runs = {
            "network": ["apply", "--checkpoint", str(NETWORK), *DATA, "--noise", "residual",
                        "--no-uncertainty", "--out", str(work / "network"), "--overwrite"],
            "nlls": ["apply", *DATA, "--model", "mt_generalized_bloch", *SEQUENCE,
                     "--method", "nlls_network", "--option", f"checkpoint={NETWORK}",
                     "--option", "flip=omega0", "--mask", str(band_file), "--noise", "residual",
                     "--out", str(work / "nlls"), "--overwrite"],
            "lorentzian": ["apply", *DATA, "--model", "mt_generalized_bloch", *SEQUENCE,
                           "--model-option", "lineshape=lorentzian", "--method", "nlls_network",
                           "--option", f"checkpoint={NETWORK}", "--option", "flip=omega0",
                           "--mask", str(sparse_file), "--noise", "residual", "--no-uncertainty",
                           "--out", str(work / "lorentzian"), "--overwrite"],
            "hybrid_state": ["apply", *DATA, "--model", "mt_hybrid_state", "--free", "B1",
                             *SEQUENCE, "--method", "nlls_network", "--option",
                             f"checkpoint={NETWORK}", "--mask", str(sparse_file), "--noise",
                             "residual", "--no-uncertainty", "--out",
                             str(work / "hybrid_state"), "--overwrite"],
        }
        if args.reuse:
            old = json.loads((OUT / "bench_invivo_maps.json").read_text())
            result["seconds"] = {**old["seconds"], "network_alone": result["seconds"][
                "network_alone"]}
            result["load_at_start"] = old["load_at_start"]
        for name, command in runs.items():
            if args.reuse:
                continue
            result["seconds"][name] = crbnet(command)
            print(name, result["seconds"][name], flush=True)
        names = [*MAP_NAMES, "sigma_residual", "goodness_of_fit", "mask",
                 *(f"{n}_CRBstd" for n in MAP_NAMES)]
        maps = {k: read_maps(work / k, names) for k in runs}
        summaries = {k: json.loads((work / k / "apply.json").read_text()) for k in runs}
    net, nlls = maps["network"], maps["nlls"]
    estimated = net["mask"] > 0
    masks = tissue_masks(net["m0s"], net["T1f"], estimated)
    band = nlls["mask"] > 0
    sparse = maps["lorentzian"]["mask"] > 0
    result["voxels"] = {"slice": int(estimated.sum()), "band": int(band.sum()),
                        "lineshape_sample": int(sparse.sum()),
                        "WM": int(masks["WM"].sum()), "GM": int(masks["GM"].sum()),
                        "WM_in_band": int((masks["WM"] & band).sum()),
                        "GM_in_band": int((masks["GM"] & band).sum())}
    n_band = max(int(band.sum()), 1)
    per_voxel = result["seconds"]["nlls"]["cpu_s"] / n_band
    result["nlls_cpu_s_per_voxel"] = per_voxel
    result["nlls_whole_slice_estimate_min_on_2_cores"] = per_voxel * int(estimated.sum()) / 120
    result["agreement_WM"] = {p: agreement_in_crb_units(net[p], nlls[p], nlls[f"{p}_CRBstd"],
                                                        masks["WM"] & band)
                              for p in MAP_NAMES}
    result["agreement_GM"] = {p: agreement_in_crb_units(net[p], nlls[p], nlls[f"{p}_CRBstd"],
                                                        masks["GM"] & band)
                              for p in MAP_NAMES}
    result["statistics"] = {
        "network": region_statistics({p: net[p] for p in MAP_NAMES}, masks),
        "network_band": region_statistics({p: net[p] for p in MAP_NAMES}, masks, within=band),
        "nlls_band": region_statistics({p: nlls[p] for p in MAP_NAMES}, masks, within=band),
    }
    result["noise"] = {k: s["noise"] for k, s in summaries.items()}
    result["goodness_of_fit"] = {k: s["goodness_of_fit"] for k, s in summaries.items()}
    # lineshapes: the residual level per voxel in WM and GM of the sparse sample
    residual = {k: maps[k]["sigma_residual"] for k in ("nlls", "lorentzian", "hybrid_state")}
    result["lineshapes"] = {}
    for region in ("WM", "GM"):
        sel = masks[region] & sparse
        row = {"voxels": int(sel.sum())}
        for k, r in residual.items():
            row[f"median_residual_{k}"] = float(np.median(r[sel])) if sel.any() else None
            row[f"median_T2s_{k}"] = (float(np.median(maps[k]["T2s"][sel])) if sel.any()
                                      else None)
        for k in ("lorentzian", "hybrid_state"):
            ratio = residual[k][sel] / residual["nlls"][sel]
            row[f"ratio_{k}_to_super_lorentzian"] = {
                "median": float(np.median(ratio)) if sel.any() else None,
                "mean": float(ratio.mean()) if sel.any() else None,
                "standard_error": (float(ratio.std(ddof=1) / np.sqrt(ratio.size))
                                   if ratio.size > 1 else None)}
        result["lineshapes"][region] = row
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "bench_invivo_maps.json").write_text(json.dumps(result, indent=1))
    # figures: network (whole slice) and NLLS (band) side by side; residual maps of the models
    # The band, transposed so that it runs across the figure, stretched to the panel.
    lo, hi = rows

    def strip(image: np.ndarray) -> np.ndarray:
        return np.asarray(image)[lo:hi].T

    plot_rows_of_maps({"network": {p: strip(net[p]) for p in MAP_NAMES},
                       "NLLS": {p: strip(nlls[p]) for p in MAP_NAMES}},
                      list(MAP_NAMES), UNITS, DOCS / "invivo_maps.png",
                      masks={"network": strip(band), "NLLS": strip(band)},
                      panel_size=(1.9, 0.75), dpi=90, aspect="auto")
    plot_rows_of_maps({"network": dict(maps_only)}, list(MAP_NAMES), UNITS,
                      DOCS / "invivo_network_maps.png", masks={"network": slice_mask})
    labels = {"nlls": "super-L.", "lorentzian": "Lorentz.", "hybrid_state": "hybrid"}
    plot_rows_of_maps({labels[k]: {"residual level": strip(residual[k]),
                                   "T2s": strip(maps[k]["T2s"])} for k in residual},
                      ["residual level", "T2s"], {"T2s": "s"}, DOCS / "invivo_residuals.png",
                      masks={labels[k]: strip(sparse) for k in residual},
                      panel_size=(2.6, 0.8), dpi=90, aspect="auto",
                      limits_from_all_rows=True)
    print(json.dumps({k: result[k] for k in ("seconds", "voxels", "nlls_cpu_s_per_voxel",
                                             "nlls_whole_slice_estimate_min_on_2_cores")},
                     indent=1))
    for region in ("WM", "GM"):
        print(region, "agreement", {p: round(v["median"], 3) if v["median"] is not None else None
                                    for p, v in result[f"agreement_{region}"].items()})
        print(region, "lineshapes", result["lineshapes"][region])
    print("\n".join(region_table({
        "WM network": result["statistics"]["network"]["WM"],
        "WM NLLS (band)": result["statistics"]["nlls_band"]["WM"],
        "GM network": result["statistics"]["network"]["GM"],
        "GM NLLS (band)": result["statistics"]["nlls_band"]["GM"]})))


if __name__ == "__main__":
    main()
