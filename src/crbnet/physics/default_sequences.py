"""crbnet's default sequences: the designed hybrid-state MT train (shipped as package data), a
FISP fingerprinting schedule, echo and inversion times (defined in code).
"""

from __future__ import annotations

import functools
import importlib.resources
import json

import numpy as np

from crbnet.physics.control_points import hann_interpolate
from crbnet.physics.sequence_kinds import FISPSequence, MTSequence, TimesSequence
from crbnet.physics.sequence_registry import from_dict


def default_mt_sequence() -> MTSequence:
    """crbnet's own hybrid-state MT sequence: 666 TRs of 4.5 ms (a 3 s cycle), designed by
    ``crbnet design`` within 3 T limits (peak B1 ≤ 23.5 µT, pulses 0.1–1 ms, mean RF power
    ≤ 3·10⁶ (rad/s)²) for white and gray matter at SNR 50, all six parameters estimated.

    θ and TRF at 64 control points per cycle, Hann-interpolated; stored as package data (the
    design's ``sequence.json``); docs/design.md gives the command that regenerates it.
    """
    return from_dict(dict(_packaged_sequence("mt_hybrid_state_default.json")), "mt")


@functools.lru_cache(maxsize=None)
def _packaged_sequence(name: str) -> tuple:
    """A sequence file shipped in ``crbnet/resources`` (read once; items as a tuple so that the
    cached value cannot be changed by a caller)."""
    resource = importlib.resources.files("crbnet").joinpath("resources", name)
    return tuple(json.loads(resource.read_text(encoding="utf-8")).items())


def default_fisp_sequence(n: int = 400) -> FISPSequence:
    """A FISP-MRF schedule in the spirit of Jiang et al. 2015 (MRM 74:1621).

    Flip angles follow repeated half-sine lobes of decreasing amplitude (max 70°, then 50°,
    35°, 60°...), TR varies smoothly between 11 and 14 ms (Perlin-like in the paper; a sum of
    sinusoids here), TE = 2 ms, inversion 20 ms before the first pulse.
    """
    idx = np.arange(n)
    lobe_len = 100
    amplitudes = np.deg2rad(np.array([70.0, 45.0, 60.0, 30.0, 55.0, 40.0, 65.0, 35.0]))
    amp = amplitudes[(idx // lobe_len) % amplitudes.size]
    flip = np.deg2rad(5.0) + amp * np.sin(np.pi * (idx % lobe_len) / lobe_len) ** 2
    tr = 12.5e-3 + 1.0e-3 * np.sin(2 * np.pi * idx / 173) + 0.5e-3 * np.sin(2 * np.pi * idx / 61)
    return FISPSequence(flip=flip, TR=tr, TE=2e-3, TI=20e-3)


def default_echo_times() -> TimesSequence:
    """32 echoes every 10 ms (multi-echo spin echo)."""
    return TimesSequence(times=10e-3 * np.arange(1, 33))


def default_inversion_times() -> TimesSequence:
    """12 inversion times, log-spaced 50 ms – 4 s."""
    return TimesSequence(times=np.geomspace(0.05, 4.0, 12))


__all__ = ["hann_interpolate", "default_mt_sequence", "default_fisp_sequence",
           "default_echo_times", "default_inversion_times"]
