"""A brain-like digital phantom, built in code: tissue labels, parameter maps, M0, noisy signals.

Geometry (normalised coordinates u, v, w ∈ (−1, 1) along x = left→right, y = posterior→
anterior, z = inferior→superior; a 2-D phantom is the central slice w = 0):

* brain: the ellipsoid with semi-axes (0.72, 0.88, 0.85); its outer shell (normalised radius
  0.94–1) is CSF (subarachnoid space);
* cortex: gray matter between the shell and a folded white-matter boundary at normalised radius
  0.80 + 0.05·cos(10φ) (gyri);
* deep gray matter: two ellipsoids (thalamus / basal ganglia) beside the midline;
* lateral ventricles: two CSF ellipsoids beside the midline;
* lesions: four small spheres in white matter (label 4), radius 0.07 or at least one voxel.

Labels: 0 background, 1 CSF, 2 GM, 3 WM, 4 lesion (the first three as in FSL FAST).

Parameters: each tissue has literature (or documented, derived) values per model and field
strength (:mod:`crbnet.physics.tissues`, every value with its source). Within a tissue every parameter varies
smoothly by at most ±``variation`` (default 5 %, a multiplicative, low-frequency random field per
parameter) and is clipped to the model's bounds.

M0 = PD(tissue) · coil(x) · exp(i·φ(x)) · ``m0_scale``: PD is the relative water content of the
tissue, coil a smooth receive profile (0.8–1.25), φ a smooth phase (first and second order terms,
about ±π over the head). Background voxels have M0 = 0 (noise only), so the noise can be measured
there.

B1: a model whose B1 is *estimated* is simulated with a smooth transmit field (about 0.9 at the
edge to 1.1 in the centre, the central brightening typical of head coils at 3 T), written as
``truth_B1``. A model with B1 *fixed* (the default) is simulated with that fixed value (B1 = 1
unless ``--fix B1=…``), because an estimator that assumes B1 cannot be asked to see another.

Note for learned estimators: the default training ranges of fisp_mrf, t2_decay and ir_t1 cover
every tissue here, CSF (T1 ≈ 4 s, T2 ≈ 2 s) included. Those of mt_hybrid_state do not cover
CSF: its m0s = 0 leaves Rx, T1s and T2s unidentifiable (infinite CRB), so it cannot be part of
a CRB-normalized training distribution; ``crbnet apply`` flags such voxels (estimates at the
edge of the estimator's range). Per-tissue results (benchmarks/bench_phantom_study.py) show
how each estimator copes.

Subspace coefficients: given a :class:`~crbnet.stats.projected.ProjectedModel` (``crbnet phantom
--basis U``), the "signal" is the K coefficient images ``Uᴴ y`` a low-rank reconstruction hands
over; the noise is then drawn directly in coefficient space, which is the same distribution as
projecting white time-domain noise (orthonormal U), and the sidecar records the basis.

Noise: complex Gaussian, standard deviation σ on the real and on the imaginary part, with
``σ = mean(|M0| over the brain) / SNR``; SNR is defined as ``|M0| / σ`` (docs/statistics.md §1), here for the
brain-average |M0|.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from crbnet import __version__
from crbnet.errors import InputError
from crbnet.physics import models as model_registry
from crbnet.physics.models.base import SignalModel
from crbnet.physics.sequences import sequence_hash
from crbnet.physics.tissues import PROTON_DENSITY, SOURCES, tissue_table
from crbnet.stats.noise import SNR_DEFINITION

# --------------------------------------------------------------------------------------------
# Labels (the tissue tables live in crbnet.physics.tissues)

LABELS: dict[int, str] = {0: "background", 1: "CSF", 2: "GM", 3: "WM", 4: "lesion"}

# --------------------------------------------------------------------------------------------
# The phantom


@dataclass
class Phantom:
    """A simulated measurement and its ground truth (all arrays on the grid ``shape``, 3-D;
    a 2-D phantom has one slice).

    Attributes:
        model: the signal model that generated it.
        signal: complex64 ``[*shape, T]`` noisy signals (noise everywhere, also outside the brain).
        mask: bool ``[*shape]``, the brain (labels > 0).
        labels: uint8 ``[*shape]``, see :data:`LABELS`.
        truth: ``{parameter: float64 [*shape]}`` for every *estimated* parameter (SI; 0 outside
            the brain).
        m0: complex128 ``[*shape]`` true M0 (0 outside the brain).
        b1: float64 ``[*shape]`` transmit field used in the simulation.
        sigma: noise standard deviation per real/imaginary part.
        snr: the requested SNR = mean |M0| over the brain / σ.
        seed, field_strength, variation, m0_scale: how it was made.
        affine: 4×4 voxel-to-world (mm), the grid centred on 0.
        time_step: time-axis voxel size written to NIfTI (s; the mean sample spacing).
    """

    model: SignalModel
    signal: np.ndarray
    mask: np.ndarray
    labels: np.ndarray
    truth: dict[str, np.ndarray]
    m0: np.ndarray
    b1: np.ndarray
    sigma: float
    snr: float
    seed: int
    field_strength: float
    variation: float
    m0_scale: float
    affine: np.ndarray
    time_step: float
    b1_source: str = "fixed"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.mask.shape)

    def tissue_masks(self) -> dict[str, np.ndarray]:
        """``{tissue name: bool mask}`` for the tissues present."""
        return {name: self.labels == lab for lab, name in LABELS.items()
                if lab > 0 and np.any(self.labels == lab)}

    def describe(self) -> dict:
        """JSON-ready description (written as ``phantom.json``)."""
        table = tissue_table(self.model, self.field_strength)
        tissues = {}
        for lab, name in LABELS.items():
            if lab == 0:
                continue
            values = {p: {"value": v, "source": s} for p, (v, s) in table[name].items()}
            tissues[name] = {
                "label": lab, "n_voxels": int((self.labels == lab).sum()),
                "proton_density": PROTON_DENSITY[name], "parameters": values,
            }
        return {
            "crbnet_version": __version__,
            "model": self.model.name,
            "parameters": list(self.model.parameters),
            "units": self.model.units,
            "fixed": self.model.fixed,
            "sequence_hash": sequence_hash(self.model.sequence),
            "n_timepoints": self.model.n_timepoints,
            **({"basis": self.model.describe()["basis"]} if hasattr(self.model, "basis") else {}),
            "field_strength_T": self.field_strength,
            "shape": list(self.shape),
            "voxel_size_mm": [float(v) for v in np.sqrt((self.affine[:3, :3] ** 2).sum(0))],
            "snr": self.snr,
            "snr_definition": SNR_DEFINITION + "; here |M0| is the mean over the brain mask",
            "sigma": self.sigma,
            "mean_abs_m0_brain": float(np.abs(self.m0[self.mask]).mean()),
            "m0_scale": self.m0_scale,
            "seed": self.seed,
            "within_tissue_variation": self.variation,
            "b1": self.b1_source,
            "labels": {str(k): v for k, v in LABELS.items()},
            "tissues": tissues,
            "sources": SOURCES,
        }


def parse_shape(text: str) -> tuple[int, ...]:
    """'128x128' or '96x96x24' → a tuple of 2 or 3 positive ints."""
    try:
        dims = tuple(int(t) for t in text.lower().replace("×", "x").split("x"))
    except ValueError:
        raise InputError(f"--shape expects NXxNY or NXxNYxNZ, got {text!r}") from None
    if len(dims) not in (2, 3) or min(dims) < 1:
        raise InputError(f"--shape expects 2 or 3 positive sizes, got {text!r}")
    return dims


def _grid(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalised voxel-centre coordinates in (−1, 1); w = 0 for a single slice."""
    axes = [((np.arange(n) + 0.5) / n) * 2 - 1 if n > 1 else np.zeros(1) for n in shape]
    return np.meshgrid(*axes, indexing="ij")


def _smooth_field(rng: np.random.Generator, u: np.ndarray, v: np.ndarray, w: np.ndarray,
                  n_waves: int = 5) -> np.ndarray:
    """A random low-frequency field scaled to max |value| = 1 on the grid (1–2 cycles over it)."""
    total = np.zeros_like(u)
    for _ in range(n_waves):
        k = rng.uniform(0.3, 1.2, size=3) * rng.choice([-1.0, 1.0], size=3)
        total += rng.uniform(0.5, 1.0) * np.cos(math.pi * (k[0] * u + k[1] * v + k[2] * w)
                                                + rng.uniform(0, 2 * math.pi))
    peak = np.abs(total).max()
    return total / peak if peak > 0 else total


def _labels(u: np.ndarray, v: np.ndarray, w: np.ndarray, voxel: float) -> np.ndarray:
    """Tissue labels from the geometry in the module docstring."""
    rho = np.sqrt((u / 0.72) ** 2 + (v / 0.88) ** 2 + (w / 0.85) ** 2)
    phi = np.arctan2(v, u)
    labels = np.zeros(u.shape, dtype=np.uint8)
    wm_edge = 0.80 + 0.05 * np.cos(10 * phi)
    labels[rho <= 1.0] = 1                         # CSF shell (and anything not overwritten)
    labels[rho <= 0.94] = 2                        # cortex
    labels[rho <= wm_edge] = 3                     # white matter

    def ellipsoid(c, r):
        return ((u - c[0]) / r[0]) ** 2 + ((v - c[1]) / r[1]) ** 2 + ((w - c[2]) / r[2]) ** 2 <= 1

    for sx in (-1, 1):
        labels[ellipsoid((sx * 0.26, -0.02, 0.0), (0.11, 0.16, 0.25))] = 2   # deep GM
    for sx in (-1, 1):
        labels[ellipsoid((sx * 0.10, 0.08, 0.10), (0.06, 0.30, 0.30))] = 1   # ventricles
    radius = max(0.07, voxel)
    single_slice = u.shape[2] == 1
    for c in ((-0.42, 0.30, 0.15), (0.40, -0.30, -0.10), (0.30, 0.45, 0.25), (-0.35, -0.45, -0.20)):
        cz = 0.0 if single_slice else c[2]
        inside = ellipsoid((c[0], c[1], cz), (radius, radius, radius)) & (labels == 3)
        labels[inside] = 4
    return labels


def _affine(shape: tuple[int, int, int]) -> np.ndarray:
    """200 mm in-plane field of view, 140 mm in z (5 mm slice for a single slice); centred."""
    nx, ny, nz = shape
    zooms = np.array([200.0 / nx, 200.0 / ny, 140.0 / nz if nz > 1 else 5.0])
    affine = np.diag(np.append(zooms, 1.0))
    affine[:3, 3] = -(np.array(shape) - 1) / 2 * zooms
    return affine


def _time_step(model: SignalModel) -> float:
    seq = model.sequence
    if hasattr(seq, "TR"):
        return float(np.mean(np.asarray(seq.TR, dtype=np.float64)))
    times = np.asarray(getattr(seq, "times", [1.0]), dtype=np.float64)
    return float(np.mean(np.diff(times))) if times.size > 1 else 1.0


def make_phantom(model: SignalModel | str, shape: tuple[int, ...] = (128, 128), snr: float = 50.0,
                 seed: int = 0, *, field_strength: float = 3.0, variation: float = 0.05,
                 m0_scale: float = 1000.0, chunk_size: int = 1024) -> Phantom:
    """Build a brain phantom and simulate its noisy signals.

    Args:
        model: a signal model (or its name, for the default sequence).
        shape: (nx, ny) for one slice or (nx, ny, nz).
        snr: mean |M0| over the brain divided by σ (must be > 0).
        seed: seeds every random choice (smooth fields and noise).
        field_strength: tesla; selects the tissue table (3 T for MT; 1.5 or 3 T otherwise).
        variation: peak relative within-tissue variation of each parameter (0 ≤ v < 0.5).
        m0_scale: |M0| of pure water (arbitrary units: estimators must not depend on it).
        chunk_size: voxels simulated at once (bounds memory).

    Returns:
        a :class:`Phantom`.
    """
    if isinstance(model, str):
        model = model_registry.get(model)
    shape = _check_inputs(shape, snr, variation, m0_scale)
    table = tissue_table(model, field_strength)

    rng_fields, rng_noise = (np.random.default_rng(s)
                             for s in np.random.SeedSequence(int(seed)).spawn(2))
    grid = _grid(shape)
    labels = _labels(*grid, voxel=2.0 / min(shape[:2]))
    mask = labels > 0
    if not mask.any():
        raise InputError(f"shape {shape} is too small for a phantom")
    # The field generator is drawn from in this order: parameter maps, B1, coil, phase.
    truth = _parameter_maps(model, table, labels, variation, rng_fields, grid)
    b1, b1_source = _transmit_field(model, mask, rng_fields, grid, truth)
    m0 = _m0_map(labels, m0_scale, rng_fields, grid)
    sigma = float(np.abs(m0[mask]).mean() / snr)
    signal = _noisy_signals(model, truth, m0, mask, sigma, rng_noise, chunk_size)
    return Phantom(model=model, signal=signal, mask=mask, labels=labels, truth=truth, m0=m0,
                   b1=b1, sigma=sigma, snr=float(snr), seed=int(seed),
                   field_strength=float(field_strength), variation=float(variation),
                   m0_scale=float(m0_scale), affine=_affine(shape), time_step=_time_step(model),
                   b1_source=b1_source)


def _check_inputs(shape: tuple[int, ...], snr: float, variation: float,
                  m0_scale: float) -> tuple[int, int, int]:
    """The grid shape as three sizes (one slice for two); InputError for bad settings."""
    if not (snr > 0 and math.isfinite(snr)):
        raise InputError("SNR must be a positive number")
    if not 0 <= variation < 0.5:
        raise InputError("variation must be in [0, 0.5)")
    if not (m0_scale > 0 and math.isfinite(m0_scale)):
        raise InputError("m0_scale must be a positive number")
    if len(shape) == 2:
        shape = (int(shape[0]), int(shape[1]), 1)
    if len(shape) != 3 or min(shape) < 1:
        raise InputError(f"shape must have 2 or 3 positive sizes, got {shape}")
    return tuple(int(n) for n in shape)


def _parameter_maps(model: SignalModel, table: dict, labels: np.ndarray, variation: float,
                    rng: np.random.Generator, grid: tuple[np.ndarray, ...]
                    ) -> dict[str, np.ndarray]:
    """Per estimated parameter (B1 apart): tissue value × (1 + variation · smooth field),
    clipped to the bounds; 0 outside the brain."""
    mask = labels > 0
    truth: dict[str, np.ndarray] = {}
    for p in model.parameters:
        if p == "B1":
            continue
        nominal = np.zeros(labels.shape)
        for lab, name in LABELS.items():
            if lab > 0:
                nominal[labels == lab] = table[name][p][0]
        value = nominal * (1 + variation * _smooth_field(rng, *grid))
        lo, hi = model.spec(p).bounds
        truth[p] = np.where(mask, np.clip(value, lo, hi), 0.0)
    return truth


def _transmit_field(model: SignalModel, mask: np.ndarray, rng: np.random.Generator,
                    grid: tuple[np.ndarray, ...], truth: dict[str, np.ndarray]
                    ) -> tuple[np.ndarray, str]:
    """B1 map and how it was made: a smooth central brightening if B1 is estimated (added to
    ``truth``), else the fixed value."""
    u, v, w = grid
    if "B1" in model.parameters:
        r2 = u ** 2 + v ** 2 + w ** 2
        b1 = 0.88 + 0.24 * np.exp(-r2 / 0.5) + 0.03 * _smooth_field(rng, u, v, w)
        lo, hi = model.spec("B1").bounds
        b1 = np.clip(b1, max(lo, 0.75), min(hi, 1.25))
        truth["B1"] = np.where(mask, b1, 0.0)
        return b1, "estimated: simulated with a smooth B1 map (truth_B1)"
    b1 = np.full(u.shape, model.fixed.get("B1", 1.0))
    return b1, (f"fixed at {model.fixed['B1']:g} (simulated with that value)"
                if "B1" in model.fixed else "the model has no B1")


def _m0_map(labels: np.ndarray, m0_scale: float, rng: np.random.Generator,
            grid: tuple[np.ndarray, ...]) -> np.ndarray:
    """Complex M0: proton density × smooth receive profile × smooth phase; 0 outside."""
    u, v, w = grid
    pd = np.zeros(labels.shape)
    for lab, name in LABELS.items():
        if lab > 0:
            pd[labels == lab] = PROTON_DENSITY[name]
    coil = 0.8 + 0.45 * np.exp(-((u - 0.35) ** 2 + (v + 0.25) ** 2 + 0.5 * w ** 2) / 0.8)
    coil *= 1 + 0.03 * _smooth_field(rng, u, v, w)
    phase = math.pi * (0.55 * u - 0.35 * v + 0.3 * u * v + 0.15 * w) \
        + 0.3 * _smooth_field(rng, u, v, w)
    return np.where(labels > 0, m0_scale * pd * coil * np.exp(1j * phase),
                    0.0).astype(np.complex128)


def _noisy_signals(model: SignalModel, truth: dict[str, np.ndarray], m0: np.ndarray,
                   mask: np.ndarray, sigma: float, rng: np.random.Generator,
                   chunk_size: int) -> np.ndarray:
    """complex64 ``[*shape, T]``: the model's signals × M0 in the brain, then complex noise of
    σ per real/imaginary part everywhere."""
    # Signals, chunk by chunk over the brain voxels; background stays 0 before the noise.
    # Fortran order = NIfTI's storage order: the file is written without a transposed copy.
    # Voxels are indexed in that order too, so ``flat_signal`` is a view of ``signal``.
    T = model.n_timepoints
    signal = np.zeros(mask.shape + (T,), dtype=np.complex64, order="F")
    brain = np.flatnonzero(mask.ravel(order="F"))
    theta_all = np.stack([truth[p].ravel(order="F")[brain] for p in model.parameters], axis=1)
    m0_flat = m0.ravel(order="F")[brain]
    flat_signal = signal.reshape(-1, T, order="F")
    assert np.shares_memory(flat_signal, signal)
    for start in range(0, brain.size, chunk_size):
        idx = slice(start, start + chunk_size)
        theta = torch.from_numpy(theta_all[idx])
        with torch.no_grad():
            f = model.simulate(theta).numpy()
        flat_signal[brain[idx]] = (m0_flat[idx, None] * f).astype(np.complex64)
    # Noise everywhere, drawn chunk by chunk in voxel order (reproducible, bounded memory).
    n_vox = flat_signal.shape[0]
    for start in range(0, n_vox, chunk_size):
        stop = min(start + chunk_size, n_vox)
        noise = rng.standard_normal((stop - start, T, 2), dtype=np.float32)
        noise *= np.float32(sigma)
        flat_signal[start:stop] += noise[..., 0] + 1j * noise[..., 1]
    return signal


# --------------------------------------------------------------------------------------------
# Writing


def save_phantom(phantom: Phantom, directory: str | Path, *, compress: bool = True,
                 overwrite: bool = False,
                 figures: Callable[[Phantom, Path], list[str]] | None = None) -> list[Path]:
    """Write the phantom to a new folder (atomically: all files or none).

    Files: ``signal.nii.gz`` (complex64, time last; ``.nii`` without ``compress``) with its
    sidecar ``signal.json``, ``mask.nii.gz``, ``labels.nii.gz``, ``truth_<param>.nii.gz`` per
    estimated parameter, ``truth_M0_magnitude.nii.gz``, ``truth_M0_phase.nii.gz`` (rad),
    ``phantom.json``, and what ``figures(phantom, folder)`` draws into the folder being written
    (it returns the names; the command line passes
    :func:`crbnet.reporting.phantom.truth_figure`, which draws ``truth.png``).

    Returns:
        the written paths (in their final folder).
    """
    from crbnet.imaging import nifti

    ref = nifti.SpatialReference(phantom.shape, phantom.affine)
    ext = ".nii.gz" if compress else ".nii"
    info = phantom.describe()
    model = phantom.model
    names: list[str] = []
    with nifti.atomic_directory(directory, overwrite=overwrite) as tmp:
        def put(name: str, data: np.ndarray, dtype: Any, description: str,
                extra_zooms: tuple[float, ...] = ()) -> None:
            nifti.write_image(tmp / name, data, ref, dtype=dtype, description=description,
                              extra_zooms=extra_zooms)
            names.append(name)

        put("signal" + ext, phantom.signal, np.complex64, f"crbnet phantom {model.name}",
            extra_zooms=(phantom.time_step,))
        coefficients = {"Basis": info["basis"], "NumberOfCoefficients": model.n_timepoints,
                        "NumberOfTimePoints": info["basis"]["shape"][0],
                        "Description": "subspace coefficients U^H y of "
                        "the complex signal y = M0·f(θ) + complex Gaussian noise; last axis = "
                        "coefficient"} if "basis" in info else {}
        nifti.write_sidecar(tmp / ("signal" + ext), {
            "Model": model.name, "SequenceHash": info["sequence_hash"],
            "NumberOfTimePoints": model.n_timepoints, "FixedParameters": model.fixed,
            "Description": "complex signal M0·f(θ) + complex Gaussian noise; last axis = time",
            **coefficients,
            "Sigma": phantom.sigma, "SNR": phantom.snr, "SNRDefinition": info["snr_definition"],
        })
        names.append("signal.json")
        put("mask.nii.gz", phantom.mask, np.uint8, "brain mask")
        put("labels.nii.gz", phantom.labels, np.uint8,
            "0 bg, 1 CSF, 2 GM, 3 WM, 4 lesion")
        for p, values in phantom.truth.items():
            put(f"truth_{p}.nii.gz", values, np.float32, f"true {p} ({model.spec(p).unit or '1'})")
        put("truth_M0_magnitude.nii.gz", np.abs(phantom.m0), np.float32, "true |M0|")
        put("truth_M0_phase.nii.gz", np.angle(phantom.m0), np.float32, "true M0 phase (rad)")
        from crbnet.files import write_json
        write_json(tmp / "phantom.json", info)
        names.append("phantom.json")
        if figures is not None:
            names += figures(phantom, tmp)
    return [Path(directory) / n for n in names]


__all__ = ["Phantom", "make_phantom", "save_phantom", "tissue_table", "parse_shape", "LABELS",
           "SOURCES", "PROTON_DENSITY"]
