"""Acquisition sequences: what the scanner plays, independent of the tissue.

Every sequence is a small frozen dataclass in SI units (s, rad). Each signal model takes one
kind of sequence (its ``sequence_kind``); the kinds are registered by name in :data:`KINDS`
(:func:`register_sequence_kind`), and :func:`from_dict` / :func:`load` read any registered kind
from JSON — its dataclass fields without a default are required, those with one optional —,
from a CSV file where the class offers ``read_csv`` (the hybrid-state control points of
``mt``) or from a MATLAB ``.mat`` file where it offers ``read_mat`` (``segmented``); the readers
live in :mod:`crbnet.physics.sequence_files`, and :func:`load_for` picks the kind a file holds
among those a model plays. A sequence kind of one's own is a frozen dataclass with a ``kind``
field (``init=False``), ``n_timepoints`` and ``to_dict()``, decorated with
:func:`register_sequence_kind`; a kind that plays RF pulses also offers ``rf_pulses()`` (flip
angles, pulse durations, cycle duration), and one made of independent cycles ``rf_segments()``
(the same per segment), which the hardware checks read (:mod:`crbnet.physics.hardware`).
Defaults are
defined here, in code, so the installed package needs no data files.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.resources
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np

from crbnet import plugins
from crbnet.errors import InputError


class SequenceError(InputError):
    """A sequence file or object is malformed."""


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


@dataclass(frozen=True)
class SequenceKind:
    """A registered sequence kind.

    Attributes:
        name: the kind (``SignalModel.sequence_kind``, ``seq.kind``).
        cls: its dataclass.
        required, optional: JSON fields (the dataclass's init fields without / with a default).
        read_csv: reader of a CSV file of this kind (``cls.read_csv``), or None.
        read_mat: reader of a MATLAB .mat file of this kind (``cls.read_mat``), or None.
    """

    name: str
    cls: type
    required: frozenset[str]
    optional: frozenset[str]
    read_csv: Callable[[Path], Any] | None = None
    read_mat: Callable[[Path], Any] | None = None


#: The sequence kinds by name.
KINDS: dict[str, SequenceKind] = {}


def register_sequence_kind(cls: type) -> type:
    """Class decorator: register a sequence dataclass under its ``kind`` field's default."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__name__} must be a dataclass to be a sequence kind")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if "kind" not in fields or not isinstance(fields["kind"].default, str):
        raise TypeError(f"{cls.__name__} needs a field kind: str = field(default=..., "
                        "init=False)")
    name = fields["kind"].default
    if name in KINDS and KINDS[name].cls is not cls:
        raise ValueError(f"sequence kind {name!r} is already registered")
    given = [f for f in fields.values() if f.init]
    required = frozenset(f.name for f in given if f.default is dataclasses.MISSING
                         and f.default_factory is dataclasses.MISSING)
    KINDS[name] = SequenceKind(name, cls, required,
                               frozenset(f.name for f in given) - required,
                               getattr(cls, "read_csv", None), getattr(cls, "read_mat", None))
    return cls


def _adopt_kind(obj: object, spec: str) -> SequenceKind:
    """A sequence dataclass loaded from a plugin, registered (once) and returned as its kind."""
    if not isinstance(obj, type):
        raise SequenceError(f"{spec} is not a sequence dataclass")
    try:
        register_sequence_kind(obj)
    except (TypeError, ValueError) as exc:
        raise SequenceError(f"{spec}: {exc}") from None
    entry = next(k for k in KINDS.values() if k.cls is obj)
    if not plugins.is_spec(spec) and entry.name != spec:
        raise SequenceError(f"plugin sequence kind {spec!r} is a class of kind {entry.name!r}")
    return entry


#: The sequence kinds' extension point (:mod:`crbnet.plugins`): the registered kinds, entry
#: points in ``crbnet.sequences`` (a plugin model's kind is loaded when it is first asked for),
#: ``FILE.py:CLASS``, ``package.module:CLASS``.
PLUGINS = plugins.ExtensionPoint("sequence kind", plugins.GROUPS["sequence kind"],
                                 lambda: KINDS, _adopt_kind, error=SequenceError,
                                 form="FILE.py:CLASS, or package.module:CLASS", item="class")


def kind_of(name: str) -> SequenceKind:
    """The sequence kind ``name``: a registered kind, an installed plugin's, or a class named
    by ``FILE.py:CLASS`` / ``package.module:CLASS`` (registered on the way);
    :class:`SequenceError` for an unknown one."""
    return PLUGINS.resolve(name)


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
        """A control-point CSV file (:func:`load_control_points_csv`, default timing)."""
        return load_control_points_csv(path)


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


def resolve_tr(seq: Sequence, TR: float) -> Sequence:
    """``seq`` with the repetition time a model's ``TR`` option gives (s; 0: the sequence's
    own). A sequence without TR takes the option's; one with a different TR is refused, so a
    file and the command line cannot silently disagree. The result carries the TR in use."""
    try:
        option = float(TR)
    except (TypeError, ValueError):
        raise SequenceError(f"model option TR must be a number of seconds, got {TR!r}") from None
    if not (math.isfinite(option) and option >= 0):
        raise SequenceError(f"model option TR must be a positive number of seconds (0: the "
                            f"sequence's own), got {TR!r}")
    own = getattr(seq, "TR", None)
    if option == 0:
        if own is None:
            raise SequenceError("the sequence gives no TR; pass it with "
                                "--model-option TR=SECONDS (e.g. TR=3.5e-3)")
        return seq
    if own is None:
        return seq.with_tr(option)
    if not math.isclose(float(own), option, rel_tol=1e-9):
        raise SequenceError(f"the sequence's TR is {float(own):g} s but the model option TR is "
                            f"{option:g} s; give only one of them")
    return seq


def sequence_hash(seq: Sequence) -> str:
    """Short stable hash of a sequence (identifies it in checkpoints and NIfTI sidecars)."""
    payload = json.dumps({"kind": seq.kind, **seq.to_dict()}, sort_keys=True).encode()
    return hashlib.sha256(payload).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# Defaults


def hann_interpolate(control_points: np.ndarray, n_out: int) -> np.ndarray:
    """Interpolate a periodic list of control points onto ``n_out`` samples.

    Between points a and b at fraction u the value is
    ``(a*(1 - cos(pi*(1-u))) + b*(1 - cos(pi*u))) / 2``; the last point connects to the first,
    since the train repeats every cycle.
    """
    cp = np.asarray(control_points, dtype=np.float64)
    n_cp = cp.size
    pos = np.arange(n_out) * n_cp / n_out
    i = np.floor(pos).astype(int)
    u = pos - i
    a = cp[i % n_cp]
    b = cp[(i + 1) % n_cp]
    return (a * (1 - np.cos(np.pi * (1 - u))) + b * (1 - np.cos(np.pi * u))) / 2


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


# --------------------------------------------------------------------------------------------
# Loading


def load_control_points_csv(path: str | Path, TR: float = 4.5e-3, cycle_duration: float = 3.0,
                            T_inv: float = 10e-3, k_RF: float = 4.0) -> MTSequence:
    """Hybrid-state control points from a CSV file:
    :func:`crbnet.physics.sequence_files.load_control_points_csv`."""
    from crbnet.physics import sequence_files

    return sequence_files.load_control_points_csv(path, TR, cycle_duration, T_inv, k_RF)


def from_dict(data: dict, kind: str) -> Sequence:
    """Build a sequence of a registered ``kind`` ('mt', 'fisp', 'times', ...) from a JSON-like
    dict."""
    entry = kind_of(kind)
    if not isinstance(data, dict):
        raise SequenceError("a sequence must be a JSON object")
    missing = entry.required - data.keys()
    if missing:
        raise SequenceError(f"sequence is missing field(s): {', '.join(sorted(missing))}")
    unknown = data.keys() - entry.required - entry.optional
    if unknown:
        raise SequenceError(f"sequence has unknown field(s): {', '.join(sorted(unknown))}")
    return entry.cls(**data)


def load(path: str | Path, kind: str) -> Sequence:
    """Load a sequence file of a registered ``kind``: JSON for every kind, CSV or .mat for kinds
    whose class reads it (control points for 'mt', MATLAB files for 'segmented')."""
    return load_for(path, (kind,))


def load_for(path: str | Path, kinds: tuple[str, ...] | list[str]) -> Sequence:
    """Load a sequence file for a model that plays sequences of ``kinds``, choosing the kind
    the file holds (:func:`crbnet.physics.sequence_files.load_for`)."""
    from crbnet.physics import sequence_files

    return sequence_files.load_for(path, tuple(kinds))


def from_times(times: list[float] | np.ndarray) -> TimesSequence:
    return TimesSequence(times=np.asarray(times, dtype=np.float64))


def to_json(seq: Sequence) -> str:
    return json.dumps(seq.to_dict())


__all__ = [
    "SequenceError", "SequenceKind", "KINDS", "register_sequence_kind", "kind_of", "MTSequence", "FISPSequence", "TimesSequence", "SegmentedSequence", "Sequence", "load",
    "load_for", "resolve_tr",
    "from_dict", "from_times", "load_control_points_csv", "hann_interpolate", "sequence_hash",
    "default_mt_sequence", "default_fisp_sequence", "default_echo_times",
    "default_inversion_times", "to_json",
]
