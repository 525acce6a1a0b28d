"""What the sizes a user sets on the command line will cost, checked before any work.

One function per command: it turns the command's sizes (samples, batch, grid × realizations,
network width and depth, image shape, ...) into the bytes of memory, and of disk for files,
that the run will hold at least, and refuses sizes the machine does not have
(:mod:`crbnet.limits`, one line, exit code 2). The estimates count the large arrays each command
keeps (not every temporary), so they are lower bounds: they refuse impossible sizes at once and
never a run that fits. Byte counts: complex128 16, float64 8, complex64 8, float32 4.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from crbnet.limits import ResourceError, check_disk, check_memory, count

#: Most estimates one ``evaluate`` or ``compare`` run makes: 2^31 take hours even for a network
#: (~10^6 voxels/s) and days for NLLS; such a run would look like a hang. Split the grid instead.
MAX_ESTIMATES = 2 ** 31


def check_estimates(n: float, what: str) -> None:
    """Refuse runs of more than :data:`MAX_ESTIMATES` estimates (one line, exit code 2)."""
    if not n <= MAX_ESTIMATES:
        raise ResourceError(f"{what} = {n:.3g} estimates, more than the {MAX_ESTIMATES:.3g} one "
                            "run makes (it would run for days); use fewer points or "
                            "realizations, or split the grid")


def dataset(model: Any, n: int, chunk_rows: int, storage: str, k: int | None,
            out: str | Path) -> None:
    """``crbnet dataset``: one chunk of signals and Jacobians in memory; on disk the rows of
    theta, CRB and signals (or at least k — or 1 — coefficients)."""
    T, P = model.n_timepoints, model.n_parameters
    rows = min(n, chunk_rows)
    check_memory(count(rows, T, P + 1, 16), f"--chunk-rows {chunk_rows} (signals and "
                                            f"Jacobians of {rows} samples)")
    width = T if storage == "signals" else max(1, min(k or 1, T))
    check_disk(out, count(n, 16 * P + 8 * width), f"--n {n} ({storage})")


def train(model: Any, config: Any, out: str | Path, device: Any = None) -> None:
    """``crbnet train``: network, gradients and Adam moments; one batch with its activations
    and (online, without a pool) its Jacobians; the pool, the validation set and the signals
    the subspace is fitted on. On disk: the checkpoint (weights and Adam moments)."""
    T, P = model.n_timepoints, model.n_parameters
    d, net, sub = config.data, config.net, config.subspace
    k_in = sub.k if sub.enabled and sub.k > 0 else (1 if sub.enabled else T)
    n_params = count(net.width, k_in + 2 * P + 8) + count(net.depth, net.width, net.width + 4)
    batch = count(d.batch_size, 3 * T * 16 + 4 * 4 * net.width * max(net.depth, 1))
    if d.mode == "online" and d.pool_size == 0:
        batch += count(d.batch_size, T, P, 16)
    need = (count(n_params, 16) + batch + count(d.pool_size, T * 16 + P * P * 8)
            + count(d.val_size, T * 16 + 2 * P * 8)
            + (count(sub.n_fit, T, 32) if sub.enabled else 0.0))
    if d.mode == "offline":
        need += count(d.block_rows, d.blocks_in_memory, T, 8)
    check_memory(need, f"this training (net {net.width} x {net.depth}, batch {d.batch_size}, "
                       f"pool {d.pool_size}, validation {d.val_size}, subspace fit "
                       f"{sub.n_fit if sub.enabled else 0})", device)
    check_disk(out, count(n_params, 12), f"the checkpoint of a net {net.width} x {net.depth}")


def evaluate_grid(model: Any, points: float, realizations: int, out: str | Path) -> None:
    """``crbnet evaluate`` on a grid or samples: CRBs and statistics of every point, the
    realizations of one point; on disk the JSON with each point's statistics."""
    T, P = model.n_timepoints, model.n_parameters
    what = f"{points:.0f} points x {realizations} realizations"
    check_estimates(count(points, realizations), what)
    check_memory(count(points, T * P * 16 + 2 * P * P * 8 + 12 * P * 8)
                 + count(realizations, 3 * T * 16), what)
    check_disk(out, count(points, P, 100), what)


def evaluate_points(model: Any, points: int, snrs: int, realizations: int) -> None:
    """``crbnet evaluate --points``: the noisy signals and estimates of one point and SNR, the
    estimates kept for every point and SNR."""
    T, P = model.n_timepoints, model.n_parameters
    what = f"{points} points x {snrs} SNRs x {realizations} realizations"
    check_estimates(count(points, snrs, realizations), what)
    check_memory(count(realizations, 3 * T * 16) + count(points, snrs, realizations, P, 16),
                 what)


def compare(model: Any, voxels: int, estimators: int) -> None:
    """``crbnet compare``: the test signals, their CRBs and every estimator's estimates."""
    T, P = model.n_timepoints, model.n_parameters
    check_estimates(count(voxels, estimators), f"--voxels {voxels} x {estimators} estimators")
    check_memory(count(voxels, 3 * T * 16 + P * P * 8 + estimators * P * 8 * 4),
                 f"--voxels {voxels}")


def phantom(model: Any, shape: tuple[int, ...], out: str | Path, compressed: bool) -> None:
    """``crbnet phantom``: clean and noisy complex signals and the maps in memory; on disk the
    signal image (noise hardly compresses: at least half its bytes gzipped)."""
    T, P = model.n_timepoints, model.n_parameters
    voxels = count(*shape)
    what = f"--shape {'x'.join(str(n) for n in shape)} ({voxels:.0f} voxels x {T} points)"
    check_memory(count(voxels, T * 16 * 2 + (P + 8) * 8), what)
    check_disk(out, count(voxels, T, 4 if compressed else 8), what)


def apply(model: Any, voxels: float, out: str | Path) -> None:
    """``crbnet apply``: the maps (estimates, CRB std, M0, noise, flags) of every voxel in
    memory and on disk (gzipped float32, at least a quarter of their bytes)."""
    P = model.n_parameters
    maps = 2 * P + 6
    what = f"the maps of {voxels:.0f} voxels"
    check_memory(count(voxels, maps, 8), what)
    check_disk(out, count(voxels, maps, 1), what)


def basis(model: Any, n: int, n_check: int) -> None:
    """``crbnet basis``: the signals the SVD is fitted on (and its workspace), and the
    Jacobians of the CRB-inflation check."""
    T, P = model.n_timepoints, model.n_parameters
    check_memory(count(n, T, 16, 2) + count(n_check, T, P, 16),
                 f"--n {n} and --n-check {n_check}")


def fit_output(model: Any, voxels: int, out: str | Path) -> None:
    """``crbnet fit``: the estimates (float64 [N, P]) on disk."""
    check_disk(out, count(voxels, model.n_parameters, 8), f"the estimates of {voxels} signals")


__all__ = ["dataset", "train", "evaluate_grid", "evaluate_points", "compare", "phantom",
           "apply", "basis", "fit_output"]


#: Tensors of [points, time points] that one design cost evaluation keeps for its reverse pass
#: per estimated parameter (signal and Jacobian columns and their forward-mode intermediates):
#: an estimate, not a measurement — low for the generalized Bloch model, whose tensor route
#: keeps 6 × 6 propagators per pulse as well, so the check refuses only what cannot fit.
DESIGN_TENSORS_PER_PARAMETER = 8


def design(model: Any, points: int) -> None:
    """``crbnet design``: the signal and Jacobian at every tissue point over the whole
    sequence, kept with their graph for the gradient."""
    T, P = model.n_timepoints, model.n_parameters
    check_memory(count(points, T, P + 1, DESIGN_TENSORS_PER_PARAMETER, 16),
                 f"{points} tissue points × {T} time points × {P} parameters (the design's "
                 "signals and Jacobians with their gradient)")
