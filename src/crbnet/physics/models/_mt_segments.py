"""Segmented sequences in the hybrid-state MT model: each segment becomes an ``MTSequence``
played as its own cycle, and the segments' signals, Jacobians and Gram matrices are combined
(docs/physics.md, "Segmented sequences").

Map of segment s (N pulses ``alpha``, ``TRF``; TR shared):

- θ_n = α_n / 2 (signed) and TRF_n for every pulse after the first;
- the first pulse must be the segment's only inversion and an (ideal) π pulse; it becomes the
  cycle's inversion with ``T_inv = TRF_0``, and its own TR takes θ_1 and TRF_1: the model's
  inversion is instantaneous and flips the spin-locked free pool along the same axis, so the
  free pool stays locked through that TR along the direction the following pulses hold it;
- ``k_RF`` is the model's default (:class:`MTSequence`'s).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from crbnet.physics import sequences as seqs
from crbnet.physics.sequences import SequenceError

#: How far an inversion pulse's |α| may be from π (rad): files store π to double precision.
INVERSION_TOLERANCE = 1e-6


def segment_sequences(seq: seqs.SegmentedSequence, model: str = "mt_hybrid_state"
                      ) -> list[seqs.MTSequence]:
    """One :class:`MTSequence` per segment (module docstring); a segment the model cannot play
    is refused with one line."""
    TR = seq.require_tr()
    if not math.isclose(abs(math.remainder(seq.rf_phase_increment, 2 * math.pi)), math.pi,
                        rel_tol=1e-9):
        raise SequenceError(f"{model} plays balanced trains whose RF phase alternates "
                            f"(rf_phase_increment π); the sequence has "
                            f"{seq.rf_phase_increment:g} rad")
    if seq.pulses_per_segment < 2:
        raise SequenceError(f"{model} needs at least 2 pulses per segment (an inversion and "
                            f"the train); the sequence has {seq.pulses_per_segment}")
    out = []
    for s in range(seq.n_segments):
        flags = seq.inversion[s]
        if not flags[0] or flags[1:].any():
            where = ", ".join(str(i) for i in np.flatnonzero(flags)) or "none"
            raise SequenceError(f"{model} plays one inversion per segment, as its first pulse; "
                                f"segment {s} has inversion pulses at {where} (0-based)")
        if abs(abs(seq.alpha[s, 0]) - math.pi) > INVERSION_TOLERANCE:
            raise SequenceError(f"{model} plays inversions as π pulses; the inversion of "
                                f"segment {s} has alpha {seq.alpha[s, 0]:g} rad")
        theta, trf = cycle_trains(seq.alpha[s], seq.TRF[s])
        out.append(seqs.MTSequence(TR=TR, theta=theta, TRF=trf, T_inv=float(seq.TRF[s, 0])))
    return out


def cycle_trains(alpha, TRF):
    """θ and TRF of one segment's 'mt' cycle from its pulses' α and TRF (numpy arrays or
    tensors [n]; plain indexing, so autodiff follows): θ = α/2, and the inversion's own TR takes
    the next pulse's θ and TRF (module docstring)."""
    index = [1] + list(range(1, len(alpha)))
    return alpha[index] / 2, TRF[index]


def concatenated(parts: list[tuple], combine: tuple[Callable | None, ...]) -> tuple | None:
    """Combine the per-segment outputs ``parts`` (tuples such as (signal, Jacobian, Gram)),
    entry by entry with ``combine`` (None: the entry is None in every part); None where any
    part is None (the compiled route did not apply)."""
    if any(p is None for p in parts):
        return None
    return tuple(None if how is None or parts[0][i] is None else how([p[i] for p in parts])
                 for i, how in enumerate(combine))


#: How the kernel's (signal [N, T], Jacobian [P, N, T], Gram [N, P+1, P+1]) combine over
#: segments: the time axis is concatenated, the Gram matrices add (sums over time).
KERNEL_OUTPUTS = (lambda xs: torch.cat(xs, -1), lambda xs: torch.cat(xs, -1),
                  lambda xs: torch.stack(xs).sum(0))
