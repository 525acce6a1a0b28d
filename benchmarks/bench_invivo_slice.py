"""The whole shipped in-vivo slice (19,213 voxels) by the shipped network and by NLLS started
from it: timings against issue 22's targets, WM/GM tables, and the agreement of the two in CRB
units over every white- and grey-matter voxel.

    python benchmarks/bench_invivo_slice.py [--work DIR] [--reuse]

1. ``crbnet apply --checkpoint examples/invivo/network.pt`` (M0, residual and goodness-of-fit
   maps, no CRB maps; ``--noise residual``), timed; and the network alone (reading + estimating,
   :func:`crbnet.reporting.invivo.network_maps`), timed.
2. ``crbnet apply --method nlls_network`` on the whole slice (one start, the network's estimate;
   CRB maps at the NLLS estimate, σ from the residuals), timed.
3. WM/GM masks from the network's maps (:func:`crbnet.imaging.tissue_regions.tissue_masks`);
   medians (IQR) of every parameter for both; median |network − NLLS| / √CRB per parameter in
   WM and GM; goodness of fit.

``--reuse`` reads the maps of an earlier run from ``--work`` (with its timings) instead of
running the two ``apply`` commands again (the NLLS one takes ~20 minutes on 2 cores). Writes
benchmarks/results/bench_invivo_slice.json and docs/invivo_slice_maps.png (network and NLLS
side by side).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from bench_invivo_maps import DATA, NETWORK, SEQUENCE, crbnet, read_maps

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("invivo_slice_work"))
    parser.add_argument("--reuse", action="store_true")
    args = parser.parse_args()
    from crbnet import files
    from crbnet.imaging.tissue_regions import (
        agreement_in_crb_units,
        region_statistics,
        tissue_masks,
    )
    from crbnet.plots.invivo import plot_rows_of_maps
    from crbnet.reporting.invivo import MAP_NAMES, UNITS, network_maps, region_table

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {"load_at_start": os.getloadavg()[0], "cpu_count": os.cpu_count()}
    t0 = time.perf_counter()
    network_maps(NETWORK)
    result["network_alone_s"] = round(time.perf_counter() - t0, 2)
    runs = {"network": ["apply", "--checkpoint", str(NETWORK), *DATA, "--noise", "residual",
                        "--no-uncertainty", "--out", str(work / "network"), "--overwrite"],
            "nlls": ["apply", *DATA, "--model", "mt_generalized_bloch", *SEQUENCE, "--method",
                     "nlls_network", "--option", f"checkpoint={NETWORK}", "--noise", "residual",
                     "--out", str(work / "nlls"), "--overwrite"]}
    timings = work / "timings.json"
    if args.reuse:
        result["apply"] = json.loads(timings.read_text())
    else:
        result["apply"] = {name: crbnet(command) for name, command in runs.items()}
        files.write_json(timings, result["apply"])
    names = [*MAP_NAMES, "goodness_of_fit", "sigma_residual", "mask",
             *(f"{n}_CRBstd" for n in MAP_NAMES)]
    net, nlls = read_maps(work / "network", names), read_maps(work / "nlls", names)
    estimated = nlls["mask"] > 0
    regions = tissue_masks(net["m0s"], net["T1f"], estimated)
    result["voxels"] = {"slice": int(estimated.sum()),
                        **{k: int(v.sum()) for k, v in regions.items()}}
    result["statistics"] = {"network": region_statistics(net, regions, estimated),
                            "nlls": region_statistics(nlls, regions, estimated)}
    result["agreement_in_crb_units"] = {
        region: {p: agreement_in_crb_units(net[p], nlls[p], nlls[f"{p}_CRBstd"], mask)
                 for p in MAP_NAMES} for region, mask in regions.items()}
    result["goodness_of_fit_nlls_quartiles_p95"] = [
        float(np.percentile(nlls["goodness_of_fit"][estimated], q)) for q in (25, 50, 75, 95)]
    ratio = net["sigma_residual"][estimated] / nlls["sigma_residual"][estimated]
    result["residual_network_over_nlls_quartiles"] = [float(np.percentile(ratio, q))
                                                      for q in (25, 50, 75)]
    noise = json.loads((work / "nlls" / "apply.json").read_text())
    result["sigma_nlls"] = noise["noise"]["sigma"]
    result["snr_nlls"] = noise["snr"]["mean_abs_m0_over_sigma"]
    at_limit = estimated & (nlls["T2s"] > 24.5e-6)          # the R2sl table ends at 25 µs
    result["t2s_at_limit"] = {"all": int(at_limit.sum()),
                              **{k: int((at_limit & v).sum()) for k, v in regions.items()}}
    result["table"] = region_table({f"{region} {label}": result["statistics"][key][region]
                                    for region in ("WM", "GM")
                                    for label, key in (("network", "network"),
                                                       ("NLLS", "nlls"))})
    files.write_json(OUT / "bench_invivo_slice.json", result)
    plot_rows_of_maps({"network": {p: net[p] for p in MAP_NAMES},
                       "NLLS": {p: nlls[p] for p in MAP_NAMES}}, list(MAP_NAMES), UNITS,
                      ROOT / "docs" / "invivo_slice_maps.png",
                      masks={"network": estimated, "NLLS": estimated})
    print(json.dumps({k: result[k] for k in ("network_alone_s", "apply", "voxels")}, indent=1))
    for region, per in result["agreement_in_crb_units"].items():
        print(region, {p: round(v["median"], 2) for p, v in per.items() if v["median"]})
    print("\n".join(result["table"]))


if __name__ == "__main__":
    main()
