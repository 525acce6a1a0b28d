"""Core benchmark (issue 2, item 6): voxels/s of the MT hybrid-state model and of its CRB.

For ``mt_hybrid_state`` (default 666-TR sequence, and the seed authors' control-point CSV from
``../shared/data`` when present) this measures, in one run:

- ``model.simulate`` in float32 and float64 and ``crbnet.crb`` (float64) at batch sizes 1k, 4k,
  16k, 64k voxels (parameters drawn from the training ranges); the CRB twice: its default CPU
  route (``crb``: the compiled forward-mode kernel of ``crbnet.physics.models._mt_kernel``) and the
  generic route it replaces on CPU (``crb:func``: ``torch.func.jvp`` + ``vmap`` through
  ``simulate``, which is what runs on CUDA); the targets are judged on ``crb``;
- the reference the seed authors' approach implies: per voxel, ``scipy.integrate.solve_ivp``
  integrates the 2-state ODE of docs/physics.md §1 together with its 2×P forward sensitivity equations
  ``d/dt(∂y/∂θ) = A ∂y/∂θ + (∂A/∂θ) y + ∂b/∂θ``, TR by TR (signal read at mid-TR), for
  ``--ref-cycles`` cycles from equilibrium (2, like the seed), then forms the Fisher matrix and
  the CRB. It is timed on ``--ref-voxels`` voxels, best of ``--repeats`` passes like the other
  rows (one pass with ``--quick``);
- agreement: the ODE reference iterated until the cycle converges, against the fast model's
  exact periodic steady state (signal), its Jacobian and CRB (default route) — max relative
  differences.

Targets (printed as PASS/FAIL): CRB ≥ 8,000 voxels/s on 2 CPU cores, and ≥ 10,000× the
per-voxel ODE reference (ratio measured in this run, on this machine and load).

Usage::

    python benchmarks/bench_core.py [--quick] [--out-dir benchmarks/results] [--threads 2]
        [--device cpu] [--sizes 1024,4096,16384,65536] [--ref-voxels 3] [--no-csv]

Writes ``<out-dir>/bench_core.json`` and ``<out-dir>/bench_core.png`` and prints a table.
``--quick`` measures batch sizes 1k and 4k only, one repetition, two reference voxels and a
shorter convergence check (under a minute). Timings depend on the machine and its load; the
JSON records the thread count, CPU count and load average.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

TARGET_CRB_VOXELS_PER_S = 8_000.0
TARGET_VS_ODE = 1e4
SHARED_CSV = (Path(__file__).resolve().parents[1].parent / "shared" / "data"
              / "mt_hybrid_state_oct_control_points.csv")
PARAMETERS = ("m0s", "T1f", "T2f", "Rx", "T1s", "T2s")
# Row label of the CRB through torch.func (jvp + vmap) instead of the compiled CPU kernel.
CRB_TORCH_FUNC = "crb:func"


# ---- reference: ODE + forward sensitivities, one voxel at a time (docs/physics.md §1) ------
def _rhs_matrices(seq, p: dict[str, float]):
    """Per TR: A [T, 2, 2], b [T, 2] and their derivatives dA [T, P, 2, 2], db [T, P, 2]
    with respect to (m0s, T1f, T2f, Rx, T1s, T2s), written from the equations (B1 = 1)."""
    m0s, T1f, T2f, Rx, T1s, T2s = (p[k] for k in PARAMETERS)
    alpha = p.get("B1", 1.0) * seq.theta
    c, s = np.cos(alpha), np.sin(alpha)
    W = seq.k_RF * alpha ** 2 * T2s / (seq.TRF * seq.TR)
    T = seq.n_timepoints
    A = np.empty((T, 2, 2))
    A[:, 0, 0] = -(c * c / T1f + s * s / T2f + c * c * Rx * m0s)
    A[:, 0, 1] = Rx * (1 - m0s) * c
    A[:, 1, 0] = Rx * m0s * c
    A[:, 1, 1] = -(1 / T1s + Rx * (1 - m0s) + W)
    b = np.stack(((1 - m0s) * c / T1f, np.full(T, m0s / T1s)), 1)
    dA = np.zeros((T, 6, 2, 2))
    db = np.zeros((T, 6, 2))
    m0s_, T1f_, T2f_, Rx_, T1s_, T2s_ = range(6)            # parameter index in dA, db
    dA[:, m0s_, 0, 0], dA[:, m0s_, 0, 1] = -c * c * Rx, -Rx * c
    dA[:, m0s_, 1, 0], dA[:, m0s_, 1, 1] = Rx * c, Rx
    db[:, m0s_, 0], db[:, m0s_, 1] = -c / T1f, 1 / T1s
    dA[:, T1f_, 0, 0], db[:, T1f_, 0] = c * c / T1f ** 2, -(1 - m0s) * c / T1f ** 2
    dA[:, T2f_, 0, 0] = s * s / T2f ** 2
    dA[:, Rx_, 0, 0], dA[:, Rx_, 0, 1] = -c * c * m0s, (1 - m0s) * c
    dA[:, Rx_, 1, 0], dA[:, Rx_, 1, 1] = m0s * c, -(1 - m0s)
    dA[:, T1s_, 1, 1], db[:, T1s_, 1] = 1 / T1s ** 2, -m0s / T1s ** 2
    dA[:, T2s_, 1, 1] = -W / T2s
    return A, b, dA, db


def ode_signal_and_jacobian(seq, p: dict[str, float], cycles: int | None = 2,
                            tol: float = 1e-9, rtol: float = 1e-6, atol: float = 1e-9,
                            max_cycles: int = 60):
    """Signal [T] and Jacobian [T, 6] of one voxel by ODE + sensitivity integration.

    Starts from equilibrium (r_f, z_s) = (1 − m0s, m0s) before the first inversion and runs
    ``cycles`` cycles, or (``cycles=None``) until the signal changes by less than ``tol``
    (relative to its maximum) from one cycle to the next. Returns (signal, jacobian, n_cycles).
    """
    from scipy.integrate import solve_ivp

    A, b, dA, db = _rhs_matrices(seq, p)
    n_par, T, TR = len(PARAMETERS), seq.n_timepoints, seq.TR
    sin_a = np.sin(p.get("B1", 1.0) * seq.theta)
    beta = 1 - math.pi ** 2 * p["T2s"] / seq.T_inv
    dbeta = -math.pi ** 2 / seq.T_inv                     # ∂β/∂T2s

    def rhs(t, u, A_n, b_n, dA_n, db_n):
        y, S = u[:2], u[2:].reshape(2, n_par)              # S[:, k] = ∂y/∂θ_k
        return np.concatenate((A_n @ y + b_n, (A_n @ S + (dA_n @ y).T + db_n.T).ravel()))

    u = np.zeros(2 + 2 * n_par)
    u[0], u[1] = 1 - p["m0s"], p["m0s"]
    u[2 + 0], u[2 + n_par + 0] = -1.0, 1.0                # ∂(1 − m0s, m0s)/∂m0s
    signal, jac, previous = np.empty(T), np.empty((T, n_par)), None
    n_cycles = 0
    while True:
        # Inversion at the cycle start: y -> diag(−1, β) y, so S -> diag(−1, β) S + ∂β y_s.
        y, S = u[:2].copy(), u[2:].reshape(2, n_par).copy()
        S[0] *= -1
        S[1] *= beta
        S[1, 5] += dbeta * y[1]
        y *= (-1.0, beta)
        u = np.concatenate((y, S.ravel()))
        for n in range(T):
            sol = solve_ivp(rhs, (0.0, TR), u, t_eval=(0.5 * TR, TR), rtol=rtol, atol=atol,
                            args=(A[n], b[n], dA[n], db[n]))
            mid, u = sol.y[:, 0], sol.y[:, 1]
            signal[n] = mid[0] * sin_a[n]
            jac[n] = mid[2:2 + n_par] * sin_a[n]
        n_cycles += 1
        if cycles is not None and n_cycles >= cycles:
            break
        if previous is not None and np.abs(signal - previous).max() <= tol * np.abs(signal).max():
            break
        if n_cycles >= max_cycles:
            break
        previous = signal.copy()
    return signal.copy(), jac.copy(), n_cycles


def fisher_crb(signal: np.ndarray, jac: np.ndarray) -> np.ndarray:
    """CRB (σ = 1, M0 = 1) of the 6 parameters from a real signal and its Jacobian, with
    (Re M0, Im M0) as nuisance parameters (docs/statistics.md §2)."""
    J = np.concatenate((jac, signal[:, None], 1j * signal[:, None]), 1)
    F = (J.conj().T @ J).real
    return np.diag(np.linalg.inv(F))[:len(PARAMETERS)]


# ---- timing --------------------------------------------------------------------------------------
def _sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def best_time(fn, repeats: int, device, warmup=None) -> float:
    """Best wall time of ``repeats`` calls after an untimed warm-up call (``warmup``, e.g. the
    same call on a few voxels, or ``fn`` itself)."""
    (warmup or fn)()
    _sync(device)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def bench_sequence(label: str, seq, args, progress) -> dict:
    import torch

    import crbnet
    from crbnet import models
    from crbnet.stats.sampling import ParameterSampler

    model = models.get("mt_hybrid_state", sequence=seq)
    sampler = ParameterSampler(model)
    gen = torch.Generator().manual_seed(args.seed)
    theta = sampler.sample(max(args.sizes), generator=gen).to(args.device)
    rows = []
    for n in args.sizes:
        th = theta[:n]
        for what, dtype in (("simulate", torch.float32), ("simulate", torch.float64),
                            ("crb", torch.float64), (CRB_TORCH_FUNC, torch.float64)):
            x = th.to(dtype)
            if what == "simulate":
                run = lambda v: model.simulate(v)                                # noqa: E731
            else:
                run = lambda v: crbnet.crb(model, v, warn=False)                 # noqa: E731
            # The compiled CPU route is crbnet.crb's default where it applies; the torch.func
            # route (jvp + vmap through simulate) is what runs elsewhere (CUDA): both are timed.
            model.use_compiled_kernel = what != CRB_TORCH_FUNC
            # Big batches take long enough to time once; small ones are repeated.
            repeats = 1 if (args.quick or n >= 16384 or what == CRB_TORCH_FUNC) else args.repeats
            seconds = best_time(lambda: run(x), repeats, args.device,
                                warmup=lambda: run(x[:256]))
            model.use_compiled_kernel = True
            rows.append({"sequence": label, "what": what, "dtype": str(dtype).split(".")[-1],
                         "batch": n, "seconds": seconds, "voxels_per_s": n / seconds})
            progress.update()

    # Reference: per-voxel ODE + sensitivities for ``ref_cycles`` cycles, then the CRB.
    th_ref = theta[:args.ref_voxels].double().cpu()

    def reference_pass() -> None:
        for row in th_ref:
            sig, jac, _ = ode_signal_and_jacobian(seq, dict(zip(PARAMETERS, row.tolist())),
                                                  cycles=args.ref_cycles)
            fisher_crb(sig, jac)

    # Best of several passes, like every other row: noise only ever adds time, so the minimum
    # is the fair estimate on both sides of the ratio.
    ref_repeats = 1 if args.quick else args.repeats
    ref_seconds = best_time(reference_pass, ref_repeats, "cpu",
                            warmup=reference_pass if ref_repeats > 1 else lambda: None)
    progress.update()
    reference = {"method": f"scipy solve_ivp (RK45, rtol=1e-6, atol=1e-9), state + 2x6 "
                           f"sensitivities, one call per TR, {args.ref_cycles} cycles from "
                           f"equilibrium, then Fisher matrix and CRB",
                 "voxels": len(th_ref), "seconds": ref_seconds, "repeats": ref_repeats,
                 "voxels_per_s": len(th_ref) / ref_seconds}

    # Agreement: the ODE iterated to convergence vs the fast model, its Jacobian and CRB.
    from crbnet.stats.crb import jacobian

    th_chk = theta[:args.check_voxels].double().cpu()
    fast_sig = model.simulate(th_chk).real.numpy()
    fast_jac = jacobian(model, th_chk).real.numpy()
    fast_crb = crbnet.crb(model, th_chk, warn=False).numpy()
    sig_err, jac_err, crb_err, cycles_used = [], [], [], []
    for i, row in enumerate(th_chk):
        sig, jac, n_cyc = ode_signal_and_jacobian(seq, dict(zip(PARAMETERS, row.tolist())),
                                                  cycles=None, tol=args.check_tol,
                                                  rtol=1e-10, atol=1e-12)
        sig_err.append(np.abs(fast_sig[i] - sig).max() / np.abs(sig).max())
        jac_err.append(np.abs(fast_jac[i] - jac).max() / np.abs(jac).max())
        crb_err.append(np.abs(fast_crb[i] / fisher_crb(sig, jac) - 1).max())
        cycles_used.append(n_cyc)
        progress.update()
    agreement = {"voxels": len(th_chk), "ode_rtol": 1e-10, "convergence_tol": args.check_tol,
                 "cycles_to_converge": cycles_used,
                 "max_rel_diff_signal": float(max(sig_err)),
                 "max_rel_diff_jacobian": float(max(jac_err)),
                 "max_rel_diff_crb": float(max(crb_err))}
    return {"label": label, "n_timepoints": seq.n_timepoints, "rows": rows,
            "reference": reference, "agreement": agreement}


# ---- report --------------------------------------------------------------------------------------
def summarize(result: dict) -> dict:
    crb_rows = [r for r in result["rows"] if r["what"] == "crb"]
    best_crb = max(r["voxels_per_s"] for r in crb_rows)
    ratio = best_crb / result["reference"]["voxels_per_s"]
    return {"best_crb_voxels_per_s": best_crb, "crb_vs_ode": ratio,
            "pass_crb_throughput": best_crb >= TARGET_CRB_VOXELS_PER_S,
            "pass_vs_ode": ratio >= TARGET_VS_ODE}


def print_report(result: dict, summary: dict, threads: int) -> None:
    print(f"\n== mt_hybrid_state, {result['label']} ({result['n_timepoints']} TRs), "
          f"{threads} thread(s) ==")
    print(f"{'what':>9} {'dtype':>8} {'batch':>7} {'seconds':>9} {'voxels/s':>11}")
    for r in result["rows"]:
        print(f"{r['what']:>9} {r['dtype']:>8} {r['batch']:>7} {r['seconds']:>9.3f} "
              f"{r['voxels_per_s']:>11,.0f}")
    ref = result["reference"]
    print(f"{'ODE ref':>9} {'float64':>8} {ref['voxels']:>7} {ref['seconds']:>9.3f} "
          f"{ref['voxels_per_s']:>11,.3f}   ({ref['method']})")
    ag = result["agreement"]
    print(f"agreement with the converged ODE ({ag['voxels']} voxels, cycles "
          f"{ag['cycles_to_converge']}): max rel. diff signal {ag['max_rel_diff_signal']:.2e}, "
          f"Jacobian {ag['max_rel_diff_jacobian']:.2e}, CRB {ag['max_rel_diff_crb']:.2e}")
    print(f"CRB best {summary['best_crb_voxels_per_s']:,.0f} voxels/s "
          f"(target >= {TARGET_CRB_VOXELS_PER_S:,.0f}: "
          f"{'PASS' if summary['pass_crb_throughput'] else 'FAIL'}); "
          f"{summary['crb_vs_ode']:,.0f}x the ODE reference (target >= {TARGET_VS_ODE:,.0f}x: "
          f"{'PASS' if summary['pass_vs_ode'] else 'FAIL'})")


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from crbnet.files import atomic_path

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.5), squeeze=False)
    for ax, res in zip(axes[0], results):
        for (what, dtype), (style, name) in {
                ("simulate", "float32"): ("o-", "simulate (float32)"),
                ("simulate", "float64"): ("s-", "simulate (float64)"),
                ("crb", "float64"): ("^-", "crb (float64, compiled CPU kernel)"),
                (CRB_TORCH_FUNC, "float64"): ("v--", "crb (float64, torch.func route)")}.items():
            pts = [(r["batch"], r["voxels_per_s"]) for r in res["rows"]
                   if r["what"] == what and r["dtype"] == dtype]
            if pts:
                ax.plot(*zip(*pts), style, label=name)
        ref = res["reference"]["voxels_per_s"]
        ax.axhline(TARGET_CRB_VOXELS_PER_S, color="k", ls="--", lw=1,
                   label=f"CRB target {TARGET_CRB_VOXELS_PER_S:,.0f}/s")
        ax.axhline(ref * TARGET_VS_ODE, color="r", ls=":", lw=1,
                   label=f"{TARGET_VS_ODE:,.0f}x ODE reference ({ref:.2g}/s)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size (voxels)")
        ax.set_ylabel("voxels / s")
        ax.set_title(f"mt_hybrid_state, {res['label']} ({res['n_timepoints']} TRs)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="batch sizes 1k and 4k, one repetition, smaller reference")
    parser.add_argument("--out-dir", default="benchmarks/results")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", default=None,
                        help="comma-separated batch sizes (default 1024,4096,16384,65536)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ref-voxels", type=int, default=None,
                        help="voxels for the timed ODE reference (default 3, quick 2)")
    parser.add_argument("--ref-cycles", type=int, default=2)
    parser.add_argument("--check-voxels", type=int, default=None,
                        help="voxels for the converged-ODE agreement check (default 2, quick 1)")
    parser.add_argument("--no-csv", action="store_true",
                        help="skip the control-point CSV from ../shared/data")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.sizes = ([int(s) for s in args.sizes.split(",")] if args.sizes
                  else [1024, 4096] if args.quick else [1024, 4096, 16384, 65536])
    args.ref_voxels = args.ref_voxels or (2 if args.quick else 3)
    args.check_voxels = args.check_voxels or (1 if args.quick else 2)
    args.check_tol = 1e-8 if args.quick else 1e-10

    import torch
    from tqdm import tqdm

    from crbnet import sequences
    from crbnet.files import write_json

    torch.set_num_threads(args.threads)
    seqs = [("default sequence", sequences.default_mt_sequence())]
    if not args.no_csv and SHARED_CSV.exists():
        seqs.append(("seed CSV", sequences.load(SHARED_CSV, "mt")))
    n_tasks = len(seqs) * (4 * len(args.sizes) + 1 + args.check_voxels)
    results = []
    with tqdm(total=n_tasks, desc="bench_core", file=sys.stderr, disable=None) as progress:
        for label, seq in seqs:
            results.append(bench_sequence(label, seq, args, progress))
    summaries = [summarize(r) for r in results]
    for res, summ in zip(results, summaries):
        print_report(res, summ, args.threads)

    out_dir = Path(args.out_dir)
    report = {
        "benchmark": "bench_core", "model": "mt_hybrid_state", "quick": args.quick,
        "device": args.device, "threads": args.threads, "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()), "torch": torch.__version__,
        "python": platform.python_version(),
        "targets": {"crb_voxels_per_s": TARGET_CRB_VOXELS_PER_S, "crb_vs_ode": TARGET_VS_ODE},
        "results": [dict(r, summary=s) for r, s in zip(results, summaries)],
    }
    write_json(out_dir / "bench_core.json", report)
    plot(results, out_dir / "bench_core.png")
    print(f"\nwrote {out_dir / 'bench_core.json'} and {out_dir / 'bench_core.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
