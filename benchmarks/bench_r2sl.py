"""R2sl table benchmark: build time, interpolation error, evaluation speed, and the difference
to a table that clamps B1·|α| at π (what MRIgeneralizedBloch's default grid does).

For the super-Lorentzian and Gaussian lineshapes (default grid, crbnet's domain: TRF 0.1–1 ms,
T2s 5–25 µs, |α| ≤ π, B1 ≤ 1.5):

- build time from an empty cache folder (solve + interpolate + write), and the reload time;
- interpolation error of R2sl on ``--points`` random points (TRF, T2s, α, B1 uniform) against
  the exact value from a direct solve of the IDE (``r2sl_exact``, a different algorithm from
  the table's Ω² series): max, 99th and 95th percentile of |R_table/R_exact − 1|, over the whole
  domain and for B1·|α| ≤ 4.3 and ≤ π (the root find has no exact root in a corner near
  B1·|α| = 1.5π, see docs/physics.md);
- evaluation speed: numpy ``table.evaluate`` (value + 4 derivatives), the numba kernel in a
  jitted loop, ``r2sl_torch`` forward and forward + backward (float64, CPU);
- clamping: MRIgeneralizedBloch's default table fills B1·|α| > π with the value at the same Ω and
  a shorter pulse, τ′ = π/Ω (i.e. ρ(τπ/θ, π)). Here: that clamped value of the exact function
  against crbnet's, at B1 = 1.2, α = π, TRF = 500 µs, T2s = 12 µs (exact solves), and over the
  pulses of the in-vivo hybrid-state sequence (``../shared/data/invivo_mt/control.mat`` when
  present) for B1 = 0.6–1.3, T2s = 12.4 µs (table values; all pulses there have B1·|α| ≤ 3.96).

Usage::

    python benchmarks/bench_r2sl.py [--points 2000] [--out-dir benchmarks/results] [--quick]
        [--control ../shared/data/invivo_mt/control.mat]

Also the error on ``--grid-points`` points uniform in (log τ, θ) — the corner included — which
the figure maps. Writes ``bench_r2sl.json`` and ``bench_r2sl.png``. About 6–8 minutes on one
core (the exact solves dominate); ``--quick`` uses 200 + 100 points. Timings depend on the machine's load.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

CONTROL = (Path(__file__).resolve().parents[1].parent / "shared" / "data" / "invivo_mt"
           / "control.mat")


def _timed(function, *args, repeats=1):
    best, result = math.inf, None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function(*args)
        best = min(best, time.perf_counter() - start)
    return best, result


def build_and_reload(lineshape: str) -> tuple[dict, object]:
    from crbnet.physics import r2sl_table

    with tempfile.TemporaryDirectory() as folder:
        os.environ["CRBNET_CACHE_DIR"] = folder
        spec = r2sl_table.R2slGridSpec(lineshape=lineshape)
        build_s, (table, counts) = _timed(r2sl_table.build_table, spec)
        path = r2sl_table.cache_path(spec)
        write_s, _ = _timed(r2sl_table._save, path, table)
        load_s, loaded = _timed(r2sl_table._load, path, spec)
        assert loaded is not None and np.array_equal(loaded.coefficients, table.coefficients)
        size = path.stat().st_size
    del os.environ["CRBNET_CACHE_DIR"]
    return {"build_s": build_s, "write_s": write_s, "reload_s": load_s, "file_bytes": size,
            "n_x": spec.n_x, "n_u": spec.n_u, "root_find": counts}, table


def random_points(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return (rng.uniform(100e-6, 1e-3, n), rng.uniform(-math.pi, math.pi, n),
            rng.uniform(0.0, 1.5, n), rng.uniform(5e-6, 25e-6, n))


def interpolation_error(table, points) -> dict:
    from crbnet.physics.r2sl import r2sl_exact

    TRF, alpha, B1, T2s = points
    start = time.perf_counter()
    exact = np.array([r2sl_exact(table.lineshape, *p) for p in zip(TRF, alpha, B1, T2s)])
    exact_s = time.perf_counter() - start
    error = np.abs(table.evaluate(*points)[0] / exact - 1)
    theta = B1 * np.abs(alpha)
    out = {"points": len(TRF), "exact_solve_s_per_point": exact_s / len(TRF)}
    for label, mask in (("all", theta >= 0), ("theta_le_4.3", theta <= 4.3),
                        ("theta_le_pi", theta <= math.pi)):
        e = error[mask]
        worst = int(np.argmax(np.where(mask, error, -1)))
        out[label] = {"n": int(mask.sum()), "max": float(e.max()),
                      "p99": float(np.percentile(e, 99)), "p95": float(np.percentile(e, 95)),
                      "worst_at": {"tau": float(TRF[worst] / T2s[worst]),
                                   "theta": float(theta[worst])}}
    out["_error"], out["_tau"], out["_theta"] = error, TRF / T2s, theta
    return out


def coordinate_error(table, n: int, seed: int = 1) -> dict:
    """Error on points uniform in (log τ, θ) over the whole table rectangle, the corner where
    the root find has no exact root included (exact: direct IDE solves)."""
    from crbnet.physics.r2sl import rho_exact

    rng = np.random.default_rng(seed)
    tau = np.exp(rng.uniform(math.log(4.0), math.log(200.0), n))
    theta = rng.uniform(0.0, 1.5 * math.pi, n)
    exact = np.array([rho_exact(table.lineshape, t, th) for t, th in zip(tau, theta)])
    error = np.abs(np.exp(table.log_rho(np.log(tau), theta ** 2)[0]) / exact - 1)
    out = {"points": n}
    for label, mask in (("all", theta >= 0), ("theta_le_4.3", theta <= 4.3),
                        ("theta_le_4.5", theta <= 4.5), ("theta_gt_4.5", theta > 4.5)):
        e = error[mask]
        out[label] = {"n": int(mask.sum()), "max": float(e.max()),
                      "p95": float(np.percentile(e, 95)),
                      "fraction_above_1e-6": float(np.mean(e > 1e-6))}
    out["_error"], out["_tau"], out["_theta"] = error, tau, theta
    return out


def evaluation_speed(table, n: int = 100_000) -> dict:
    import numba
    import torch

    from crbnet.physics.r2sl import r2sl_scalar_kernel, r2sl_torch

    points = random_points(n, seed=7)
    numpy_s, _ = _timed(table.evaluate, *points, repeats=3)
    kernel = r2sl_scalar_kernel()

    @numba.njit(cache=False)
    def loop(x_nodes, x_step, u_step, coefficients, bounds, TRF, alpha, B1, T2s, out):
        for k in range(TRF.shape[0]):
            out[k] = kernel(x_nodes, x_step, u_step, coefficients, bounds, TRF[k], alpha[k],
                            B1[k], T2s[k])[0]

    out = np.empty(n)
    loop(*table.kernel_arrays(), *(p[:10] for p in points), out[:10])      # compile
    numba_s, _ = _timed(loop, *table.kernel_arrays(), *points, out, repeats=3)
    tensors = [torch.tensor(p) for p in points]
    forward_s, _ = _timed(lambda: r2sl_torch(table, *tensors), repeats=3)

    def forward_backward():
        leaves = [t.clone().requires_grad_() for t in tensors]
        r2sl_torch(table, *leaves).sum().backward()

    backward_s, _ = _timed(forward_backward, repeats=3)
    per_us = lambda seconds: seconds / n * 1e6                            # noqa: E731
    return {"points": n, "numpy_evaluate_us_per_point": per_us(numpy_s),
            "numba_kernel_us_per_point": per_us(numba_s),
            "torch_forward_us_per_point": per_us(forward_s),
            "torch_forward_backward_us_per_point": per_us(backward_s),
            "torch_threads": torch.get_num_threads()}


def clamped_difference(table, control: Path) -> dict:
    """crbnet's R2sl vs the value a table clamped at B1·|α| = π returns (τ′ = τπ/θ)."""
    from crbnet.physics.r2sl import rho_exact

    tau, theta = 500e-6 / 12e-6, 1.2 * math.pi
    ours = rho_exact("super_lorentzian", tau, theta)
    clamped = rho_exact("super_lorentzian", tau * math.pi / theta, math.pi)
    out = {"example": {"B1": 1.2, "alpha": math.pi, "TRF": 500e-6, "T2s": 12e-6,
                       "R2sl_crbnet": ours / 12e-6, "R2sl_clamped": clamped / 12e-6,
                       "clamped_over_crbnet_minus_1": clamped / ours - 1,
                       "crbnet_over_clamped_minus_1": ours / clamped - 1}}
    if not control.exists():
        out["invivo"] = "control.mat not found"
        return out
    import h5py

    with h5py.File(control, "r") as f:
        alpha, TRF = np.asarray(f["alpha"]), np.asarray(f["TRF"])     # [segments, pulses]
    inversion = np.zeros(alpha.shape, dtype=bool)
    inversion[:, 0] = True                        # each segment starts with an inversion pulse
    keep = (np.abs(alpha) > 0).ravel()
    alpha, TRF, inversion = np.abs(alpha.ravel()[keep]), TRF.ravel()[keep], inversion.ravel()[keep]
    T2s, rows = 12.4e-6, []
    for B1 in (0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3):
        theta, tau = B1 * alpha, TRF / T2s
        over = theta > math.pi
        ours = np.exp(table.log_rho(np.log(tau), theta ** 2)[0])
        # dimensionless: the clamped pulse (τπ/θ) may be shorter than 100 µs
        tau_c = np.where(over, tau * math.pi / np.maximum(theta, 1e-300), tau)
        clamped = np.exp(table.log_rho(np.log(tau_c), np.minimum(theta, math.pi) ** 2)[0])
        d = np.abs(clamped / ours - 1)
        other = over & ~inversion
        rows.append({"B1": B1, "pulses": int(len(alpha)), "pulses_over_pi": int(over.sum()),
                     "max_rel_diff": float(d.max()), "mean_rel_diff_over_pi":
                         float(d[over].mean()) if over.any() else 0.0,
                     "non_inversion_pulses_over_pi": int(other.sum()),
                     "max_rel_diff_non_inversion": float(d[~inversion].max())})
    excitation = alpha[~inversion]
    out["invivo"] = {"T2s": T2s, "definition": "|clamped/crbnet - 1| (table values)",
                     "inversion_pulses": int(inversion.sum()),
                     "max_alpha_non_inversion": float(excitation.max()),
                     "TRF_at_that_alpha": float(TRF[~inversion][np.argmax(excitation)]),
                     "by_B1": rows}
    return out


def figure(path: Path, tables: dict, errors: dict) -> None:
    import matplotlib
    from matplotlib.figure import Figure

    matplotlib.use("Agg")
    fig = Figure(figsize=(12, 8.5))
    axes = fig.subplots(2, 2)
    tau = np.geomspace(4, 200, 300)
    theta = np.linspace(0, 1.5 * math.pi, 300)
    T, TH = np.meshgrid(tau, theta, indexing="ij")
    for col, (name, table) in enumerate(tables.items()):
        f, _, _ = table.log_rho(np.log(T), TH ** 2)
        mesh = axes[0, col].pcolormesh(T, TH, np.exp(f), shading="auto")
        axes[0, col].set_xscale("log")
        axes[0, col].set(title=f"R2sl·T2s, {name}", xlabel="τ = TRF/T2s", ylabel="B1·|α| (rad)")
        fig.colorbar(mesh, ax=axes[0, col])
        e = errors[name]
        sc = axes[1, col].scatter(e["_tau"], e["_theta"], c=np.log10(e["_error"] + 1e-17),
                                  s=6, vmin=-14, vmax=-2, cmap="magma")
        axes[1, col].set_xscale("log")
        axes[1, col].set(title=f"log10 relative error of the table, {name}",
                         xlabel="τ = TRF/T2s", ylabel="B1·|α| (rad)")
        fig.colorbar(sc, ax=axes[1, col])
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=2000)
    parser.add_argument("--grid-points", type=int, default=1000,
                        help="points uniform in (log τ, θ) for the error map")
    parser.add_argument("--out-dir", default="benchmarks/results")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--control", default=str(CONTROL),
                        help="the in-vivo sequence's control.mat (skipped when absent)")
    args = parser.parse_args()
    n_points = 200 if args.quick else args.points
    n_grid = 100 if args.quick else args.grid_points
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {"machine": {"cpus": os.cpu_count(), "load": os.getloadavg(),
                          "python": platform.python_version()}, "lineshapes": {}}
    tables, errors = {}, {}
    points = random_points(n_points)
    for name in ("super_lorentzian", "gaussian"):
        build, table = build_and_reload(name)
        tables[name] = table
        random_error = interpolation_error(table, points)
        errors[name] = coordinate_error(table, n_grid)
        result["lineshapes"][name] = {
            "build": build,
            "interpolation_uniform_in_TRF_T2s_alpha_B1": {
                k: v for k, v in random_error.items() if not k.startswith("_")},
            "interpolation_uniform_in_log_tau_theta": {
                k: v for k, v in errors[name].items() if not k.startswith("_")}}
        print(name, json.dumps(result["lineshapes"][name], indent=1))
    result["speed"] = evaluation_speed(tables["super_lorentzian"])
    result["clamped_at_pi"] = clamped_difference(tables["super_lorentzian"],
                                                Path(args.control))
    print(json.dumps({k: result[k] for k in ("speed", "clamped_at_pi")}, indent=1))
    from crbnet.files import write_json

    write_json(out_dir / "bench_r2sl.json", result)
    figure(out_dir / "bench_r2sl.png", tables, errors)


if __name__ == "__main__":
    main()
