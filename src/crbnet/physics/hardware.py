"""What a scanner can play: RF amplitude, RF power and pulse durations of a sequence.

Every sequence crbnet ships or designs is checked against 3 T body-coil limits. The limits and
the way they are measured follow the optimal-control literature of hybrid-state MT (see
docs/physics.md, "Hardware limits"):

- RF amplitude of a rectangular pulse: ``ω1 = α / TRF`` (rad/s), α the flip angle (rad) and TRF
  the pulse duration (s); the field is ``B1 = ω1 / γ``. For ``mt_hybrid_state`` the sequence's
  θ is the polar angle of the free pool's spin-locked magnetization, *half* the flip angle of
  the alternating pulses: α = 2θ, so ω1 = 2θ/TRF.
- Mean RF power of one cycle: ``P = Σₙ ω1ₙ² · TRFₙ / T_cycle`` in (rad/s)² — a heuristic proxy
  for SAR (proportional to B1² times the duty cycle).
- Pulse durations within a range (short pulses need high amplitudes; long ones eat the TR).

The pulses come from the sequence's own ``rf_pulses()`` (sequences without it, such as the
sampling times of analytic models, play no RF). FISP schedules carry no pulse duration of their
own; where a file gives none, rectangular pulses of :data:`FISP_DEFAULT_TRF` are assumed
(``assumed_pulse_duration``), and the summary says so.

A segmented sequence (``rf_segments()``) plays each segment as a cycle of its own: its figures
are per segment (the mean RF power over that segment's own duration), the RF power limit is
checked for every segment, and the summary's ``rf_power`` is the largest of them (the worst
segment).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from crbnet.errors import InputError
from crbnet.physics.sequences import FISPSequence, Sequence

#: Gyromagnetic ratio of ¹H (rad/s/T).
GAMMA = 267.52e6
#: Pulse duration assumed for a FISP schedule that does not give one (s).
FISP_DEFAULT_TRF = FISPSequence.ASSUMED_TRF


@dataclass(frozen=True)
class HardwareLimits:
    """Scanner limits (SI). Defaults: a 3 T body coil.

    Attributes:
        peak_b1: largest RF field amplitude (T); 23.5 µT is ω1 = 2π·1 kHz.
        trf_min, trf_max: shortest and longest RF pulse (s).
        rf_power_max: largest mean RF power Σ ω1²·TRF / T_cycle ((rad/s)²).
    """

    peak_b1: float = 23.5e-6
    trf_min: float = 100e-6
    trf_max: float = 1e-3
    rf_power_max: float = 3e6

    def __post_init__(self) -> None:
        for name in ("peak_b1", "trf_min", "trf_max", "rf_power_max"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise InputError(f"hardware limit {name} must be a positive number, got {value!r}")
        if self.trf_min > self.trf_max:
            raise InputError(f"the pulse-duration range [{self.trf_min:g}, {self.trf_max:g}] s "
                             "is empty")

    @property
    def omega_max(self) -> float:
        """Largest RF amplitude as a rotation rate ω1 = γ·B1 (rad/s)."""
        return GAMMA * self.peak_b1


def pulses(seq: Sequence) -> tuple[np.ndarray, np.ndarray, float] | None:
    """``(flip angle α [T] rad, pulse duration TRF [T] s, cycle duration s)`` of the RF pulses
    of one cycle (the sequence's ``rf_pulses()``), or None for sequences without RF (sampling
    times of analytic models)."""
    rf_pulses = getattr(seq, "rf_pulses", None)
    return None if rf_pulses is None else rf_pulses()


def _figures(alpha: np.ndarray, trf: np.ndarray, duration: float | None) -> dict:
    """Peak B1 (T), mean RF power over ``duration`` ((rad/s)²; None without a duration),
    shortest/longest pulse that rotates (s), duration (s) and pulse count of one cycle."""
    omega1 = alpha / trf
    active = alpha > 0
    return {
        "peak_b1": float(omega1.max() / GAMMA),
        "rf_power": None if duration is None else float(np.sum(omega1 ** 2 * trf) / duration),
        "trf_min": float(trf[active].min()) if active.any() else None,
        "trf_max": float(trf[active].max()) if active.any() else None,
        "duration": None if duration is None else float(duration),
        "n_pulses": int(alpha.size),
    }


def _segmented_summary(parts: list[dict]) -> dict:
    """The figures of all segments together: peak B1 and pulse range over all of them, the
    largest segment RF power (``worst_segment`` is its index; None without TR), the total
    duration, and the per-segment figures under ``segments``."""
    powers = [p["rf_power"] for p in parts]
    worst = None if None in powers else int(np.argmax(powers))
    trf_min = [p["trf_min"] for p in parts if p["trf_min"] is not None]
    trf_max = [p["trf_max"] for p in parts if p["trf_max"] is not None]
    return {
        "peak_b1": max(p["peak_b1"] for p in parts),
        "rf_power": None if worst is None else powers[worst],
        "trf_min": min(trf_min) if trf_min else None,
        "trf_max": max(trf_max) if trf_max else None,
        "duration": None if worst is None else float(sum(p["duration"] for p in parts)),
        "n_pulses": sum(p["n_pulses"] for p in parts),
        "n_segments": len(parts),
        "worst_segment": worst,
        "segments": parts,
    }


def rf_summary(seq: Sequence) -> dict | None:
    """Peak B1 (T), mean RF power ((rad/s)²), shortest/longest pulse (s) and cycle duration (s)
    of a sequence, or None where it plays no RF. For a segmented sequence the figures of each
    segment are under ``segments`` and ``rf_power`` is the largest segment's
    (:func:`_segmented_summary`); without a TR its RF power and duration are None."""
    segments = getattr(seq, "rf_segments", None)
    if segments is not None:
        return _segmented_summary([_figures(*part) for part in segments()])
    played = pulses(seq)
    if played is None:
        return None
    summary = _figures(*played)
    assumed = getattr(seq, "assumed_pulse_duration", None)
    if assumed is not None:
        summary["trf_assumed"] = assumed
    return summary


def violations(seq: Sequence, limits: HardwareLimits | None = None,
               rtol: float = 1e-9) -> list[str]:
    """The limits a sequence exceeds (empty if none), each as a short text. ``rtol`` absorbs
    round-off in a sequence designed to sit exactly on a limit."""
    limits = limits or HardwareLimits()
    summary = rf_summary(seq)
    if summary is None:
        return []
    out = []
    if summary["peak_b1"] > limits.peak_b1 * (1 + rtol):
        out.append(f"peak B1 {summary['peak_b1'] * 1e6:.1f} µT > {limits.peak_b1 * 1e6:.1f} µT")
    power = summary["rf_power"]
    if power is not None and power > limits.rf_power_max * (1 + rtol):
        where = ""
        if "segments" in summary:
            over = [i for i, p in enumerate(summary["segments"])
                    if p["rf_power"] > limits.rf_power_max * (1 + rtol)]
            where = f" in segment(s) {', '.join(map(str, over))}"
        out.append(f"RF power {power:.3g} > {limits.rf_power_max:.3g} (rad/s)²{where}")
    if summary["trf_min"] is not None and summary["trf_min"] < limits.trf_min * (1 - rtol):
        out.append(f"shortest pulse {summary['trf_min'] * 1e6:.0f} µs "
                   f"< {limits.trf_min * 1e6:.0f} µs")
    if summary["trf_max"] is not None and summary["trf_max"] > limits.trf_max * (1 + rtol):
        out.append(f"longest pulse {summary['trf_max'] * 1e6:.0f} µs "
                   f"> {limits.trf_max * 1e6:.0f} µs")
    return out


def _pulse_range(s: dict) -> str:
    if s["trf_min"] is None:
        return "no RF"
    if s["trf_min"] == s["trf_max"]:
        return f"pulses {s['trf_min'] * 1e6:.0f} µs"
    return f"pulses {s['trf_min'] * 1e6:.0f}–{s['trf_max'] * 1e6:.0f} µs"


def _power(s: dict) -> str:
    return "RF power unknown (no TR)" if s["rf_power"] is None else \
        f"RF power {s['rf_power']:.3g} (rad/s)²"


def describe(seq: Sequence) -> str:
    """One line for humans: pulses, duration, peak B1 (µT), RF power, pulse durations (µs);
    for a segmented sequence also its worst segment (the largest RF power)."""
    s = rf_summary(seq)
    if s is None:
        return f"{seq.n_timepoints} sampling times, no RF"
    if "segments" in s:
        n_seg = s["n_segments"]
        head = f"{n_seg} segment{'s' if n_seg > 1 else ''} × {s['n_pulses'] // n_seg} pulses"
        if s["duration"] is not None:
            head += f", {s['duration']:.3g} s"
        line = (f"{head}; peak B1 {s['peak_b1'] * 1e6:.1f} µT, {_pulse_range(s)}")
        if s["worst_segment"] is None:
            return f"{line}, RF power unknown (no TR)"
        w = s["segments"][s["worst_segment"]]
        return (f"{line}; worst segment {s['worst_segment']}: {_power(w)}, peak B1 "
                f"{w['peak_b1'] * 1e6:.1f} µT, {_pulse_range(w)}")
    trf = _pulse_range(s)
    if "trf_assumed" in s:
        trf += " (assumed: the schedule gives no pulse duration)"
    return (f"{s['n_pulses']} TRs, {s['duration']:.3g} s; peak B1 {s['peak_b1'] * 1e6:.1f} µT, "
            f"{_power(s)}, {trf}")
