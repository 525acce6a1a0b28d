"""Writing what ``crbnet apply`` found: every map as NIfTI with its JSON sidecar, ``apply.json``
and, when the caller gives a figure writer, its figure, all in a temporary folder renamed into
place at the end (:func:`crbnet.imaging.nifti.atomic_directory`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from crbnet import __version__
from crbnet.estimators.protocol import Estimator
from crbnet.files import write_json
from crbnet.imaging import goodness_of_fit
from crbnet.imaging.nifti_writing import write_image, write_sidecar
from crbnet.imaging.output_folders import atomic_directory
from crbnet.imaging.signal_sources import SignalSource
from crbnet.physics.models.base import SignalModel

#: File name of the figure a figure writer draws.
FIGURE_FILE = "maps.png"


def write_outputs(out_dir: Path, overwrite: bool, source: SignalSource, model: SignalModel,
                  estimator: Estimator, maps: dict[str, np.ndarray], names: list[str],
                  used: np.ndarray, summary: dict, ranges: dict[str, tuple[float, float]],
                  figure: Callable[[Path], None] | None, finish: Callable[[dict], None]
                  ) -> None:
    """Write every map with its sidecar, ``apply.json`` and (``figure(path)`` given)
    ``maps.png`` into a temporary folder renamed to ``out_dir`` at the end.
    ``finish(summary)`` fills in the timing just before ``apply.json`` is written."""
    common = {"Estimator": estimator.name, "EstimatorType": type(estimator).__name__,
              "Model": model.name, "SequenceHash": summary["sequence_hash"],
              "FixedParameters": model.fixed, "Software": f"crbnet {__version__}",
              "Input": source.description}
    ref = source.reference()
    written: list[str] = []
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        for name, meta, dtype in file_descriptions(model, names, summary, ranges):
            if name in maps or name == "mask":
                data = used if name == "mask" else maps[name]
                write_image(tmp / f"{name}.nii.gz", data, ref, dtype=dtype, description=name)
                write_sidecar(tmp / f"{name}.nii.gz", {**meta, **common})
                written.append(f"{name}.nii.gz")
        summary["files"] = written + ["apply.json"] + ([FIGURE_FILE] if figure else [])
        if figure is not None:
            figure(tmp / FIGURE_FILE)
        finish(summary)
        write_json(tmp / "apply.json", summary)


def file_descriptions(model: SignalModel, names: list[str], summary: dict,
                      ranges: dict[str, tuple[float, float]]) -> list[tuple[str, dict, Any]]:
    """(file stem, sidecar, dtype) of every output image, in writing order."""
    units, noise = model.units, summary["noise"]
    crb_singular = summary["voxels"]["crb_singular"]
    out: list[tuple[str, dict, Any]] = []
    for p, name in zip(model.parameters, names):
        spec = model.spec(p)
        out.append((name, {"Parameter": p, "Units": units[p] or "1",
                           "Description": spec.description, "Bounds": list(spec.bounds)},
                    np.float32))
        out.append((f"{name}_CRBstd", {
            "Parameter": p, "Units": units[p] or "1",
            "Description": f"Cramér–Rao standard deviation of {p}: {summary['uncertainty']}",
            "NoiseMethod": noise["method"], "Sigma": noise["sigma"],
            "SingularVoxels": crb_singular.get(p)}, np.float32))
    out += [
        ("M0map", {"Units": "arbitrary (input units)",
                   "Description": "|M0|, least-squares given the estimates"}, np.float32),
        ("M0phase", {"Units": "rad", "Description": "phase of M0"}, np.float32),
        ("sigma_residual", {"Units": "arbitrary (input units)",
                            "Description": "per-voxel residual noise level "
                                           "sqrt(|y - M0 f|^2 / (2T - P - 2))"}, np.float32),
        (goodness_of_fit.MAP_NAME, goodness_of_fit.sidecar(summary), np.float32),
        ("flags", {"Description": "bit j (value 2^j) set where parameter j's estimate sits at "
                                  "the edge of the range the estimator knows: " + ", ".join(
                                      f"{1 << j} {p} [{ranges[p][0]:g}, {ranges[p][1]:g}]"
                                      for j, p in enumerate(model.parameters))},
         np.uint8 if model.n_parameters <= 8 else np.uint16),
        ("mask", {"Description": "voxels that were estimated (mask minus NaN/Inf data and "
                                 "failed estimates)"}, np.uint8),
    ]
    return out
