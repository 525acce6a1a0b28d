"""Acquisition sequences: what the scanner plays, independent of the tissue — the public names
in one place.

Every sequence is a small frozen dataclass in SI units (s, rad). Each signal model takes one
kind of sequence (its ``sequence_kind``); the kinds are registered by name in :data:`KINDS`
(:func:`register_sequence_kind`, :mod:`crbnet.physics.sequence_registry`; the built-in kinds
are in :mod:`crbnet.physics.sequence_kinds`, the defaults in
:mod:`crbnet.physics.default_sequences`), and :func:`from_dict` / :func:`load` read any
registered kind from JSON — its dataclass fields without a default are required, those with one
optional —, from a CSV file where the class offers ``read_csv`` (the hybrid-state control
points of ``mt``) or from a MATLAB ``.mat`` file where it offers ``read_mat`` (``segmented``);
the readers live in :mod:`crbnet.physics.sequence_files`, and :func:`load_for` picks the kind a
file holds among those a model plays. A sequence kind of one's own is a frozen dataclass with a
``kind`` field (``init=False``), ``n_timepoints`` and ``to_dict()``, decorated with
:func:`register_sequence_kind`; a kind that plays RF pulses also offers ``rf_pulses()`` (flip
angles, pulse durations, cycle duration), and one made of independent cycles ``rf_segments()``
(the same per segment), which the hardware checks read (:mod:`crbnet.physics.hardware`).
Defaults are defined in code, so the installed package needs no data files.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np

from crbnet.physics.default_sequences import (
    default_echo_times,
    default_fisp_sequence,
    default_inversion_times,
    default_mt_sequence,
    hann_interpolate,
)
from crbnet.physics.sequence_kinds import (
    FISPSequence,
    MTSequence,
    SegmentedSequence,
    Sequence,
    TimesSequence,
)
from crbnet.physics.sequence_registry import (
    KINDS,
    PLUGINS,  # noqa: F401  (the sequence kinds' extension point, kept importable from here)
    SequenceError,
    SequenceKind,
    from_dict,
    kind_of,
    register_sequence_kind,
)


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


def load_control_points_csv(path: str | Path, TR: float = 4.5e-3, cycle_duration: float = 3.0,
                            T_inv: float = 10e-3, k_RF: float = 4.0) -> MTSequence:
    """Hybrid-state control points from a CSV file:
    :func:`crbnet.physics.sequence_files.load_control_points_csv`."""
    from crbnet.physics import sequence_files

    return sequence_files.load_control_points_csv(path, TR, cycle_duration, T_inv, k_RF)


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
    "SequenceError", "SequenceKind", "KINDS", "register_sequence_kind", "kind_of",
    "MTSequence", "FISPSequence", "TimesSequence", "SegmentedSequence", "Sequence", "load",
    "load_for", "resolve_tr",
    "from_dict", "from_times", "load_control_points_csv", "hann_interpolate", "sequence_hash",
    "default_mt_sequence", "default_fisp_sequence", "default_echo_times",
    "default_inversion_times", "to_json",
]
