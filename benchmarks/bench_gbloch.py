"""mt_generalized_bloch's compiled CPU kernel (issue 20): throughput and agreement.

Sequence: the in-vivo generalized-Bloch sequence (6 segments × 1142 pulses, TR 3.5 ms) read
from ``--mat`` (default: the copy shipped in ``examples/invivo/control.mat``; datasets ``alpha``
and ``TRF``, segments × pulses) when that file exists; otherwise the model's default sequence
(said so in the output and the JSON).

Measured, best of ``--repeats`` with the load average before and after (the machine may be
shared; timings are noisy):

- simulate (float64, compiled kernel) in voxels/s on 1 and 2 threads, and per pulse;
- signal + Jacobian in all 8 parameters + Fisher inverse (``crbnet.stats.crb.signal_and_crb``:
  a simulation plus the kernel's Fisher matrix, then the inverse) in voxels/s, per pulse;
- the kernel's Jacobian alone (``explicit_signal_and_jacobian``);
- CPU time per call of the kernel's parts (the pulse's matrix exponential, the pulse applied
  to one state with 8 tangents, free precession) at the sequence's median pulse;
- agreement with the tensor route (``use_compiled_kernel = False``; Jacobian by
  ``torch.func.jacfwd``) on ``--check-voxels`` voxels, and the tensor route's simulate time.

Targets: simulate ≥ 1000 voxels/s and signal + Jacobian + Fisher inverse ≥ 150 voxels/s on
2 threads. Lineshape: ``--lineshape`` (default super_lorentzian, the model's default, whose
R2sl table's build time from scratch is reported too; lorentzian, R2sl = 1/T2s exactly, is the
stiffest case: pulses with R2sl·TRF up to ~80 need the most squarings).

Usage::

    python benchmarks/bench_gbloch.py [--mat PATH] [--voxels 32] [--repeats 3]
        [--check-voxels 2] [--out-dir benchmarks/results]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SIMULATE_TARGET = 1000.0
CRB_TARGET = 150.0


def _sequence(mat: Path):
    from crbnet.physics import sequences as seqs
    from crbnet.physics.models.mt_generalized_bloch import default_sequence

    if mat.is_file():
        import h5py

        with h5py.File(mat, "r") as f:
            alpha, trf = np.array(f["alpha"]), np.array(f["TRF"])
        return seqs.SegmentedSequence(alpha=alpha, TRF=trf, TR=3.5e-3), f"in-vivo ({mat})"
    print(f"{mat} not found: using the model's default sequence")
    return default_sequence(), "model default (in-vivo file not found)"


def _best(fn, repeats: int) -> tuple[float, float]:
    """Best wall time and best process CPU time (s) of ``repeats`` calls (CPU time is less
    sensitive to other processes on a shared machine; with several threads it adds them up)."""
    wall = cpu = math.inf
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall = min(wall, time.perf_counter() - t)
        cpu = min(cpu, time.process_time() - c)
    return wall, cpu


def _parts(model, theta) -> dict:
    """CPU µs per call of the kernel's parts at the sequence's median nonzero pulse: the
    pulse's matrix exponential (values, pass 1), the pulse applied to one state with its
    derivative in all 8 directions (pass 2), each at the voxel's R2sl and at R2sl·TRF = 8,
    about the super-Lorentzian's largest, and the free precession with and without tangents."""
    import numba

    from crbnet.physics.models import _gbloch_kernel as kernel

    kernel._load()
    seq = model.sequence
    nonzero = seq.alpha[(seq.alpha != 0) & ~seq.inversion]
    k = int(np.argsort(nonzero)[len(nonzero) // 2])
    a = float(nonzero[k])
    trf = float(seq.TRF[(seq.alpha != 0) & ~seq.inversion][k])
    p = model.full_parameters(theta[:1])
    rates = np.array([p["m0s"][0], 1 / p["T1f"][0], 1 / p["T2f"][0], p["Rx"][0],
                      1 / p["T1s"][0], p["T2s"][0], p["B1"][0], p["omega0"][0]], dtype=float)
    r2sl = float(model.r2sl_arrays(p["B1"], p["T2s"])[0].reshape(-1)[0])
    dirs = np.arange(8)

    @numba.njit
    def exp_loop(n, r2):
        M, dMp, E, ws = np.empty((5, 6)), np.empty((15, 8)), np.empty((4, 5)), np.empty((6, 5, 6))
        for _ in range(n):
            kernel._pulse_generator(rates, a, trf, r2, 1.0, 1.0, dirs[:0], M, dMp)
            kernel._pulse_exp(M, trf, ws, E)
        return E[0, 0]

    @numba.njit
    def vec_loop(n, r2):
        M, dMp = np.empty((5, 6)), np.empty((15, 8))
        Y, dY, d, dv = np.empty(15), np.empty((15, 8)), np.empty((5, 8)), np.empty((5, 8))
        u, out = np.array([0.1, 0.2, 0.7, 0.05]), np.empty(5)
        for _ in range(n):
            kernel._pulse_generator(rates, a, trf, r2, 1.0, 1.0, dirs, M, dMp)
            kernel._pulse_vec(M, dMp, 8, trf, u, Y, dY, d, dv, out)
        return out[0] + d[0, 0]

    @numba.njit
    def free_loop(n, nd):
        g, e4, F, dF = np.empty(9), np.empty(4), np.empty((4, 5)), np.empty((4, 8, 5))
        for _ in range(n):
            kernel._free(1e-3, rates, dirs[:nd], g, e4, F, dF)
        return F[0, 0]

    def per_call(fn, *args, n=2000):
        fn(1, *args)
        c = time.process_time()
        fn(n, *args)
        return (time.process_time() - c) / n * 1e6

    out = {"pulse": {"alpha": a, "TRF": trf, "R2sl": r2sl}}
    for label, r2 in (("voxel_R2sl", r2sl), ("R2sl_TRF_8", 8.0 / trf)):
        out[f"exp_{label}_values_us"] = per_call(exp_loop, r2, n=20000)
        out[f"pulse_on_state_{label}_8_tangents_us"] = per_call(vec_loop, r2, n=5000)
    out["free_values_us"] = per_call(free_loop, 0, n=100000)
    out["free_8_tangents_us"] = per_call(free_loop, 8, n=100000)
    return out


def _theta(model, n: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    lo = torch.tensor([r[0] for r in model.train_ranges.values()], dtype=torch.float64)
    hi = torch.tensor([r[1] for r in model.train_ranges.values()], dtype=torch.float64)
    return lo + (hi - lo) * torch.rand(n, len(lo), generator=gen, dtype=torch.float64)


def _agreement(model, theta) -> dict:
    """Kernel vs tensor route: max relative differences of the signal and of each Jacobian
    column, and the tensor route's simulate time."""
    fast_signal, fast_columns = model.explicit_signal_and_jacobian(theta)
    model.use_compiled_kernel = False
    try:
        t = time.perf_counter()
        signal = model.simulate(theta)
        tensor_time = time.perf_counter() - t
        jac = torch.func.jacfwd(
            lambda th: torch.view_as_real(model.simulate(th, check=False)))(theta)
    finally:
        model.use_compiled_kernel = True
    columns = torch.view_as_complex(torch.einsum("ntcmp->pntc", jac).contiguous())

    def rel(a, b):
        return float((a - b).abs().max() / b.abs().max())

    return {"voxels": theta.shape[0], "signal_rel": rel(fast_signal, signal),
            "jacobian_rel": {k: rel(fast_columns[j], columns[j])
                             for j, k in enumerate(model.parameters)},
            "tensor_simulate_s_per_voxel": tensor_time / theta.shape[0]}


def run(args) -> dict:
    from crbnet.physics.models.mt_generalized_bloch import MTGeneralizedBloch
    from crbnet.stats.crb import signal_and_crb

    sequence, source = _sequence(Path(args.mat))
    model = MTGeneralizedBloch(sequence, lineshape=args.lineshape)
    pulses = sequence.n_timepoints
    zero = float(np.mean(sequence.alpha == 0))
    theta = _theta(model, args.voxels)
    model.simulate(theta[:1])                                 # compile / load the kernel
    signal_and_crb(model, theta[:1])
    result = {"sequence": source, "segments": sequence.n_segments,
              "pulses_per_segment": sequence.pulses_per_segment, "zero_flip_share": zero,
              "lineshape": args.lineshape, "voxels": args.voxels, "repeats": args.repeats,
              "targets": {"simulate_voxels_per_s": SIMULATE_TARGET,
                          "crb_voxels_per_s": CRB_TARGET},
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
              "threads": {}}
    before = torch.get_num_threads()
    try:
        for n_threads in args.threads:
            torch.set_num_threads(n_threads)
            load = os.getloadavg()[0]
            sim = _best(lambda: model.simulate(theta), args.repeats)
            crb = _best(lambda: signal_and_crb(model, theta), args.repeats)
            jac = _best(lambda: model.explicit_signal_and_jacobian(theta), args.repeats)
            row = {"load_before": load, "load_after": os.getloadavg()[0]}
            for name, (wall, cpu) in (("simulate", sim),
                                      ("signal_jacobian_fisher_inverse", crb),
                                      ("signal_jacobian", jac)):
                row[name] = {"voxels_per_s": args.voxels / wall,
                             "us_per_pulse_per_voxel": wall / args.voxels / pulses * 1e6,
                             "cpu_us_per_pulse_per_voxel": cpu / args.voxels / pulses * 1e6}
            result["threads"][str(n_threads)] = row
    finally:
        torch.set_num_threads(before)
    result["parts_cpu"] = _parts(model, theta)
    result["agreement"] = _agreement(model, theta[:args.check_voxels])
    if args.lineshape != "lorentzian":
        from crbnet.physics import r2sl

        start = time.perf_counter()
        _, counts = r2sl.build_table(r2sl.R2slGridSpec(lineshape=args.lineshape))
        result["r2sl_table_build_s"] = time.perf_counter() - start
    two = result["threads"].get("2")
    if two is not None:
        result["pass"] = {
            "simulate": two["simulate"]["voxels_per_s"] >= SIMULATE_TARGET,
            "crb": two["signal_jacobian_fisher_inverse"]["voxels_per_s"] >= CRB_TARGET}
    return result


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ("simulate", "signal_jacobian_fisher_inverse")
    targets = (SIMULATE_TARGET, CRB_TARGET)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, name, target in zip(axes, names, targets):
        threads = sorted(result["threads"])
        values = [result["threads"][t][name]["voxels_per_s"] for t in threads]
        ax.bar([f"{t} thread(s)" for t in threads], values, color="tab:blue")
        ax.axhline(target, color="tab:red", ls="--", label=f"target {target:g}")
        ax.set_title(name.replace("_", " "), fontsize=9)
        ax.set_ylabel("voxels/s")
        ax.legend(fontsize=8)
    fig.suptitle(f"mt_generalized_bloch kernel, {result['sequence'][:40]}, "
                 f"{result['lineshape']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mat", default=str(ROOT / "examples/invivo/control.mat"))
    parser.add_argument("--lineshape", default="super_lorentzian")
    parser.add_argument("--voxels", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--check-voxels", type=int, default=2)
    parser.add_argument("--out-dir", default=str(ROOT / "benchmarks/results"))
    args = parser.parse_args()
    result = run(args)
    for n_threads, row in result["threads"].items():
        print(f"{n_threads} thread(s), load {row['load_before']:.1f} -> {row['load_after']:.1f}")
        for name in ("simulate", "signal_jacobian_fisher_inverse", "signal_jacobian"):
            r = row[name]
            print(f"  {name:32s} {r['voxels_per_s']:9.1f} voxels/s "
                  f"{r['us_per_pulse_per_voxel']:7.3f} us/pulse "
                  f"(CPU {r['cpu_us_per_pulse_per_voxel']:.3f})")
    print("parts (CPU us per call):", result["parts_cpu"])
    print("agreement:", result["agreement"])
    from crbnet.files import write_json

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "bench_gbloch.json", result)
    plot(result, out / "bench_gbloch.png")
    print(f"wrote {out / 'bench_gbloch.json'} and {out / 'bench_gbloch.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
