"""Read the public in-vivo hybrid-state sequence (``../shared/data/invivo_mt/control.mat``, a
MATLAB v7.3 file without TR) with crbnet's .mat reader, print its figures per segment and time
``mt_hybrid_state`` on it (TR = 3.5 ms given as the model option, as the data set's README says).

Prints: segments and pulses, inversion pulses, peak B1 / mean RF power / pulse range per
segment, the one-line summary the commands print, and the seconds to simulate and to compute
the CRB of ``--voxels`` voxels (parameters drawn from the training ranges, fixed seed; best of
``--repeats``) — timings depend on the machine and its load. Exits 0 with a note when the file is absent.

Usage::

    python benchmarks/check_invivo_sequence.py [--file PATH] [--voxels 100] [--threads 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from crbnet import crb, models, sequences
from crbnet.physics import hardware

DEFAULT_FILE = (Path(__file__).resolve().parents[1].parent / "shared" / "data" / "invivo_mt"
                / "control.mat")
TR = 3.5e-3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--file", type=Path, default=DEFAULT_FILE)
    parser.add_argument("--voxels", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not args.file.is_file():
        print(f"{args.file} is not here; nothing to check")
        return 0
    torch.set_num_threads(args.threads)
    seq = sequences.load_for(args.file, ("segmented",))
    print(f"{args.file}: {seq.n_segments} segments × {seq.pulses_per_segment} pulses, "
          f"TR in file: {seq.TR}")
    model = models.get("mt_hybrid_state", args.file, TR=TR)
    summary = hardware.rf_summary(model.sequence)
    print(f"TR {TR * 1e3:g} ms (model option); segment duration "
          f"{summary['segments'][0]['duration']:.4g} s")
    for s, part in enumerate(summary["segments"]):
        flags = np.flatnonzero(model.sequence.inversion[s])
        inv = ", ".join(f"pulse {i} (alpha {model.sequence.alpha[s, i]:.4g} rad, "
                        f"TRF {model.sequence.TRF[s, i] * 1e6:.0f} us)" for i in flags)
        print(f"  segment {s}: peak B1 {part['peak_b1'] * 1e6:.2f} uT, RF power "
              f"{part['rf_power']:.4g} (rad/s)^2, pulses {part['trf_min'] * 1e6:.0f}-"
              f"{part['trf_max'] * 1e6:.0f} us; zero flips "
              f"{int(np.sum(model.sequence.alpha[s] == 0))}; inversion: {inv}")
    print(f"sequence: {hardware.describe(model.sequence)}")
    print(f"3 T limits exceeded: {hardware.violations(model.sequence) or 'none'}")
    gen = torch.Generator().manual_seed(0)
    lo, hi = (torch.tensor(v, dtype=torch.float64) for v in zip(*model.train_ranges.values()))
    theta = lo + (hi - lo) * torch.rand(args.voxels, len(lo), generator=gen, dtype=torch.float64)
    model.simulate(theta[:2])                       # compile the kernel outside the timing
    crb(model, theta[:2], warn=False)
    for what, run in (("simulate", lambda: model.simulate(theta)),
                      ("crb", lambda: crb(model, theta, warn=False))):
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            out = run()
            times.append(time.perf_counter() - start)
        seconds = min(times)
        print(f"{what}: {args.voxels} voxels in {seconds:.3f} s (best of {args.repeats}) "
              f"({args.voxels / seconds:.0f} voxels/s, {args.threads} thread(s)); "
              f"output {list(out.shape)}, finite: {bool(torch.isfinite(out).all())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
