"""The built-in sequence kinds, each a frozen dataclass in SI units (s, rad) whose fields are
checked when it is made: ``mt`` (:class:`MTSequence`, the hybrid-state MT train), ``fisp``
(:class:`FISPSequence`, an MR-fingerprinting schedule), ``times`` (:class:`TimesSequence`, the
sampling times of analytic models) and ``segmented`` (:class:`SegmentedSequence`,
rectangular-pulse trains played as segments).

A kind that plays RF pulses offers ``rf_pulses()`` (flip angles, pulse durations, cycle
duration), one made of independent cycles also ``rf_segments()`` (the same per segment); the
hardware checks read them (:mod:`crbnet.physics.hardware`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from crbnet.physics.sequence_registry import SequenceError, register_sequence_kind


# ---- field checks --------------------------------------------------------------------------
def _as_float_array(values: Any, name: str) -> np.ndarray:
    if np.iscomplexobj(values):
        raise SequenceError(f"sequence field {name!r} is complex; it must be real")
    try:
        arr = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise SequenceError(f"sequence field {name!r} must be a list of numbers") from exc
    if arr.size == 0:
        raise SequenceError(f"sequence field {name!r} is empty")
    if not np.all(np.isfinite(arr)):
        raise SequenceError(f"sequence field {name!r} contains NaN or Inf")
    return arr


def _as_matrix(values: Any, name: str) -> np.ndarray:
    """A [segments, pulses] float array: a 2-D table as it is, a flat list as one segment."""
    arr = np.asarray(values, dtype=object) if not isinstance(values, np.ndarray) else values
    shape = arr.shape if arr.ndim == 2 else (1, -1)
    return _as_float_array(values, name).reshape(shape)


def _as_positive(value: Any, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise SequenceError(f"sequence field {name!r} must be a number") from exc
    if not math.isfinite(v) or v <= 0:
        raise SequenceError(f"sequence field {name!r} must be a positive finite number, got {value!r}")
    return v


def _as_flags(values: Any, shape: tuple[int, ...]) -> np.ndarray:
    """Inversion flags of ``shape`` from booleans or 0/1 numbers (a flat list of the right size
    is reshaped)."""
    try:
        flags = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise SequenceError("sequence field 'inversion' must hold true/false or 0/1") from None
    if flags.shape != shape and flags.size == math.prod(shape):
        flags = flags.reshape(shape)
    if flags.shape != shape:
        raise SequenceError(f"inversion has shape {list(flags.shape)}; it must match alpha "
                            f"{list(shape)}")
    if not np.all((flags == 0) | (flags == 1)):
        raise SequenceError("sequence field 'inversion' must hold true/false or 0/1 only")
    return flags.astype(bool)


# ---- the kinds ------------------------------------------------------------------------------
@register_sequence_kind
@dataclass(frozen=True, eq=False)
class MTSequence:
    """Hybrid-state sequence for the two-pool MT model (docs/physics.md §1).

    Attributes:
        TR: repetition time (s), constant.
        theta: per TR, the polar angle of the free pool's spin-locked magnetization (rad),
            shape [T]: *half* the flip angle α of the TR's alternating pulses (α = 2θ, RF
            amplitude ω1 = 2θ/TRF for a rectangular pulse); B1 scales it. See
            docs/physics.md §1.
        TRF: RF pulse duration of each TR (s), shape [T].
        T_inv: duration of the inversion pulse at the start of each cycle (s).
        k_RF: semi-solid saturation constant; the mean saturation rate over a TR is
            ``W = k_RF * theta**2 * T2s / (TRF * TR)``. It lumps pulse shape and the
            semi-solid lineshape; 4 matches the seed paper's code.
    """

    TR: float
    theta: np.ndarray
    TRF: np.ndarray
    T_inv: float = 10e-3
    k_RF: float = 4.0
    kind: str = field(default="mt", init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "TR", _as_positive(self.TR, "TR"))
        object.__setattr__(self, "theta", _as_float_array(self.theta, "theta"))
        object.__setattr__(self, "TRF", _as_float_array(self.TRF, "TRF"))
        object.__setattr__(self, "T_inv", _as_positive(self.T_inv, "T_inv"))
        object.__setattr__(self, "k_RF", _as_positive(self.k_RF, "k_RF"))
        if self.theta.shape != self.TRF.shape:
            raise SequenceError(
                f"theta has {self.theta.size} entries but TRF has {self.TRF.size}; they must match"
            )
        if np.any(self.TRF <= 0) or np.any(self.TRF > self.TR):
            raise SequenceError("every TRF must lie in (0, TR]")

    @property
    def n_timepoints(self) -> int:
        return int(self.theta.size)

    @property
    def cycle_duration(self) -> float:
        """Duration of one cycle (s)."""
        return self.TR * self.n_timepoints

    def to_dict(self) -> dict:
        return {"TR": self.TR, "theta": self.theta.tolist(), "TRF": self.TRF.tolist(),
                "T_inv": self.T_inv, "k_RF": self.k_RF}

    def rf_pulses(self) -> tuple[np.ndarray, np.ndarray, float]:
        """``(flip angle α [T] rad, TRF [T] s, cycle duration s)``: α = 2θ."""
        return 2 * np.abs(self.theta), self.TRF, self.cycle_duration

    @staticmethod
    def read_csv(path: Path) -> "MTSequence":
        """A control-point CSV file
        (:func:`crbnet.physics.sequence_files.load_control_points_csv`, default timing)."""
        from crbnet.physics import sequence_files

        return sequence_files.load_control_points_csv(path)


@register_sequence_kind
@dataclass(frozen=True, eq=False)
class FISPSequence:
    """FISP MR fingerprinting schedule (Jiang et al. 2015).

    Attributes:
        flip: flip angle of each TR (rad), shape [T]; B1 scales it.
        TR: repetition time of each TR (s), shape [T].
        TE: echo time (s), constant, must be shorter than every TR.
        TI: delay between the (ideal) inversion and the first pulse (s).
        TRF: duration of the (rectangular) RF pulses (s), for hardware reports only — the EPG
            model treats pulses as instantaneous; None: not given (reports assume 1 ms).
    """

    flip: np.ndarray
    TR: np.ndarray
    TE: float = 2e-3
    TI: float = 20e-3
    TRF: float | None = None
    kind: str = field(default="fisp", init=False)
    #: Pulse duration assumed for hardware reports where the schedule gives none (s).
    ASSUMED_TRF: ClassVar[float] = 1e-3

    def __post_init__(self) -> None:
        object.__setattr__(self, "flip", _as_float_array(self.flip, "flip"))
        object.__setattr__(self, "TR", _as_float_array(self.TR, "TR"))
        object.__setattr__(self, "TE", _as_positive(self.TE, "TE"))
        object.__setattr__(self, "TI", _as_positive(self.TI, "TI"))
        if self.TRF is not None:
            object.__setattr__(self, "TRF", _as_positive(self.TRF, "TRF"))
        if self.flip.shape != self.TR.shape:
            raise SequenceError(f"flip has {self.flip.size} entries but TR has {self.TR.size}")
        if np.any(self.TR <= self.TE):
            raise SequenceError("every TR must be longer than TE")

    @property
    def n_timepoints(self) -> int:
        return int(self.flip.size)

    @property
    def assumed_pulse_duration(self) -> float | None:
        """The pulse duration the hardware reports assume (None: the schedule gives TRF)."""
        return self.ASSUMED_TRF if self.TRF is None else None

    def rf_pulses(self) -> tuple[np.ndarray, np.ndarray, float]:
        """``(flip angle [T] rad, TRF [T] s, cycle duration s)``; the cycle runs from the
        inversion to the end of the last TR."""
        trf = self.ASSUMED_TRF if self.TRF is None else self.TRF
        return np.abs(self.flip), np.full_like(self.flip, trf), float(self.TI + np.sum(self.TR))

    def to_dict(self) -> dict:
        # TRF only when given, so that schedules without it keep their hash.
        out = {"flip": self.flip.tolist(), "TR": self.TR.tolist(), "TE": self.TE, "TI": self.TI}
        return out if self.TRF is None else {**out, "TRF": self.TRF}


@register_sequence_kind
@dataclass(frozen=True, eq=False)
class TimesSequence:
    """Sampling times of an analytic model: echo times (T2 decay) or inversion times (IR), in s."""

    times: np.ndarray
    kind: str = field(default="times", init=False)

    def __post_init__(self) -> None:
        t = _as_float_array(self.times, "times")
        if np.any(t < 0):
            raise SequenceError("times must be non-negative")
        object.__setattr__(self, "times", t)

    @property
    def n_timepoints(self) -> int:
        return int(self.times.size)

    def to_dict(self) -> dict:
        return {"times": self.times.tolist()}


@register_sequence_kind
@dataclass(frozen=True, eq=False)
class SegmentedSequence:
    """Rectangular-pulse trains played as segments, each its own periodic steady-state cycle.

    The conventions of the generalized-Bloch hybrid-state model (docs/physics.md): every TR
    plays one rectangular pulse of flip angle ``alpha`` (signed, rad) and duration ``TRF`` (s),
    centred in the TR; the RF phase advances by ``rf_phase_increment`` from one pulse to the
    next; the signal is sampled at TR/2 after each pulse centre. Each segment repeats on its own
    (the magnetization at its first sample equals its value one segment later), and the
    fingerprint is the segments' signals concatenated in segment order.

    Attributes:
        alpha: flip angle of each pulse (rad), shape [S, N] (S segments of N pulses).
        TRF: duration of each pulse (s), shape [S, N].
        TR: repetition time (s), shared by every pulse; None where the file that held the
            sequence gave none (a model then needs it as its ``TR`` option).
        inversion: whether each pulse is an inversion pulse (played instantaneously on the
            free pool, with crusher gradients), shape [S, N]; default: the first pulse of
            each segment.
        rf_phase_increment: RF phase advance between consecutive pulses (rad); π alternates
            the pulses' sign (on resonance: a balanced train).
    """

    alpha: np.ndarray
    TRF: np.ndarray
    TR: float | None = None
    inversion: np.ndarray | None = None
    rf_phase_increment: float = math.pi
    kind: str = field(default="segmented", init=False)

    def __post_init__(self) -> None:
        alpha, trf = (_as_matrix(v, n) for v, n in ((self.alpha, "alpha"), (self.TRF, "TRF")))
        if alpha.shape != trf.shape:
            raise SequenceError(f"alpha has shape {list(alpha.shape)} but TRF has "
                                f"{list(trf.shape)}; they must match (segments × pulses)")
        if np.any(trf <= 0):
            raise SequenceError("every TRF must be positive")
        object.__setattr__(self, "alpha", alpha)
        object.__setattr__(self, "TRF", trf)
        if self.TR is not None:
            object.__setattr__(self, "TR", _as_positive(self.TR, "TR"))
            if np.any(trf > self.TR):
                raise SequenceError(f"every TRF must lie in (0, TR = {self.TR:g} s]")
        if self.inversion is None:
            inversion = np.zeros(alpha.shape, dtype=bool)
            inversion[:, 0] = True
        else:
            inversion = _as_flags(self.inversion, alpha.shape)
        object.__setattr__(self, "inversion", inversion)
        try:
            increment = float(self.rf_phase_increment)
        except (TypeError, ValueError):
            raise SequenceError("sequence field 'rf_phase_increment' must be a number") from None
        if not math.isfinite(increment):
            raise SequenceError("sequence field 'rf_phase_increment' must be finite")
        object.__setattr__(self, "rf_phase_increment", increment)

    @property
    def n_segments(self) -> int:
        return int(self.alpha.shape[0])

    @property
    def pulses_per_segment(self) -> int:
        return int(self.alpha.shape[1])

    @property
    def n_timepoints(self) -> int:
        return int(self.alpha.size)

    def with_tr(self, TR: float) -> "SegmentedSequence":
        """This sequence with repetition time ``TR`` (s)."""
        return SegmentedSequence(alpha=self.alpha, TRF=self.TRF, TR=TR, inversion=self.inversion,
                                 rf_phase_increment=self.rf_phase_increment)

    def require_tr(self) -> float:
        """The TR (s); :class:`SequenceError` where the sequence has none."""
        if self.TR is None:
            raise SequenceError("the sequence gives no TR; set it with --model-option TR=SECONDS")
        return self.TR

    @property
    def cycle_duration(self) -> float:
        """Duration of all segments played once (s)."""
        return self.require_tr() * self.n_timepoints

    def rf_pulses(self) -> tuple[np.ndarray, np.ndarray, float]:
        """``(|α| [S·N] rad, TRF [S·N] s, duration of all segments s)``."""
        return np.abs(self.alpha).reshape(-1), self.TRF.reshape(-1), self.cycle_duration

    def rf_segments(self) -> list[tuple[np.ndarray, np.ndarray, float | None]]:
        """Per segment ``(|α| [N] rad, TRF [N] s, segment duration s — None without TR)``:
        each segment is a cycle of its own, so hardware figures are per segment."""
        duration = None if self.TR is None else self.TR * self.pulses_per_segment
        return [(np.abs(a), t, duration) for a, t in zip(self.alpha, self.TRF)]

    @staticmethod
    def read_mat(path: Path) -> "SegmentedSequence":
        """A MATLAB .mat file (v5 or v7.3): :func:`crbnet.physics.sequence_files.read_mat`."""
        from crbnet.physics import sequence_files

        return sequence_files.read_mat(path)

    def to_dict(self) -> dict:
        out = {"alpha": self.alpha.tolist(), "TRF": self.TRF.tolist(), "TR": self.TR,
               "inversion": self.inversion.astype(int).tolist()}
        return out if self.rf_phase_increment == math.pi else {
            **out, "rf_phase_increment": self.rf_phase_increment}


Sequence = MTSequence | FISPSequence | TimesSequence | SegmentedSequence


__all__ = ["MTSequence", "FISPSequence", "TimesSequence", "SegmentedSequence", "Sequence"]
