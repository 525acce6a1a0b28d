"""Reading sequence files: JSON (every kind), control-point CSV (``mt``) and MATLAB ``.mat``
(``segmented``, v5 and v7.3, through :mod:`crbnet.matfile`, which also reads images and bases).

:func:`load_for` picks the kind a file holds among the kinds a model accepts: a ``.mat`` file is
read by a kind that reads ``.mat`` files, a ``.csv`` file by one that reads CSV, and a JSON
object by its ``"kind"`` key where it has one, else by the kind whose fields it has (two kinds
that fit are refused as ambiguous). Every bad file is refused with one line
(:class:`~crbnet.physics.sequence_registry.SequenceError`).

Orientation of ``.mat`` arrays: a segment is a **column** of the MATLAB matrix — ``alpha`` and
``TRF`` are pulses × segments in MATLAB, as in the public hybrid-state data sets — so a v5 and a
v7.3 file saved from the same MATLAB variable give the same sequence. (HDF5 stores MATLAB's
column-major arrays with their dimensions reversed: h5py shows ``[segments, pulses]``, and an
array written from Python with h5py in that order is read the same way.) A row or column
vector is one segment. A matrix with more columns than rows (more segments than pulses per
segment: a transposed file) is refused rather than read as many tiny segments.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from crbnet import matfile
from crbnet.errors import InputError
from crbnet.matfile import MatVariable
from crbnet.physics import sequence_registry as registry
from crbnet.physics.control_points import hann_interpolate
from crbnet.physics.sequence_registry import SequenceError

if TYPE_CHECKING:  # the kinds import this module to read their files
    from crbnet.physics.sequence_kinds import MTSequence, SegmentedSequence, Sequence

#: Variables of a ``.mat`` sequence file: required, then optional.
MAT_REQUIRED = ("alpha", "TRF")
MAT_OPTIONAL = ("TR", "inversion")


# ---- .mat ------------------------------------------------------------------------------------

def _numeric_array(variable: MatVariable) -> np.ndarray:
    """The variable's array in MATLAB's orientation; a struct, cell, text, empty, complex or
    (except ``inversion``) logical variable is refused, naming what it is."""
    where = f"{variable.path}: variable {variable.name!r}"
    if variable.dtype is None:
        group = " or group" if variable.matlab_class == "struct" else ""
        raise SequenceError(f"{where} is a MATLAB {variable.matlab_class}{group}, not a numeric "
                            "array")
    if 0 in variable.shape:
        raise SequenceError(f"{where} is empty")
    if variable.dtype.kind == "c":
        raise SequenceError(f"{where} is complex; it must be real")
    if variable.name != "inversion" and (variable.dtype.kind == "b"
                                         or variable.matlab_class == "logical"):
        raise SequenceError(f"{where} is logical; it must hold numbers")
    return variable.read()


def _read_variables(path: Path) -> dict[str, np.ndarray]:
    """The sequence variables of a .mat file (v5 or v7.3) in MATLAB's orientation."""
    try:
        found = matfile.variables(path, "sequence file", numeric_only=False)
    except InputError as exc:
        raise SequenceError(str(exc)) from None
    return {name: _numeric_array(found[name]) for name in MAT_REQUIRED + MAT_OPTIONAL
            if name in found}


def _segments(path: Path, name: str, matlab: np.ndarray) -> np.ndarray:
    """A MATLAB pulses × segments matrix (or vector) as ``[segments, pulses]``."""
    if matlab.size == 0:
        raise SequenceError(f"{path}: variable {name!r} is empty")
    if matlab.ndim > 2:
        raise SequenceError(f"{path}: variable {name!r} has {matlab.ndim} dimensions "
                            f"{list(matlab.shape)}; it must be a pulses × segments matrix")
    if matlab.ndim < 2 or 1 in matlab.shape:
        return matlab.reshape(1, -1)         # a vector: one segment
    rows, cols = matlab.shape
    if cols > rows:
        raise SequenceError(
            f"{path}: variable {name!r} is {rows} × {cols} in MATLAB; crbnet reads a .mat "
            f"sequence as pulses × segments (segments in columns), and {cols} segments of "
            f"{rows} pulses look transposed: save {name}.' if its rows are the segments")
    return matlab.T


def read_mat(path: str | Path) -> "SegmentedSequence":
    """A segmented sequence from a MATLAB ``.mat`` file with variables ``alpha`` (rad) and
    ``TRF`` (s), pulses × segments, and optionally a scalar ``TR`` (s) and a logical
    ``inversion`` of the same size. v7.3 files (HDF5) are read with h5py, older ones with
    scipy.io.loadmat; see the module docstring for the orientation rule."""
    path = Path(path)
    if not path.is_file():
        raise SequenceError(f"sequence file not found: {path}")
    data = _read_variables(path)
    missing = [n for n in MAT_REQUIRED if n not in data]
    if missing:
        raise SequenceError(f"{path} has no variable(s) {', '.join(missing)}; a .mat sequence "
                            "needs alpha (rad) and TRF (s), pulses × segments")
    fields: dict[str, Any] = {n: _segments(path, n, data[n]).astype(np.float64)
                              for n in MAT_REQUIRED}
    if "inversion" in data:
        fields["inversion"] = _segments(path, "inversion", data["inversion"])
    if "TR" in data:
        if data["TR"].size != 1:
            raise SequenceError(f"{path}: TR must be one number (s), got size "
                                f"{list(data['TR'].shape)}")
        fields["TR"] = float(data["TR"].reshape(()))
    try:
        return registry.kind_of("segmented").cls(**fields)
    except SequenceError as exc:
        raise SequenceError(f"{path}: {exc}") from None


# ---- CSV ---------------------------------------------------------------------------------------

def load_control_points_csv(path: str | Path, TR: float = 4.5e-3, cycle_duration: float = 3.0,
                            T_inv: float = 10e-3, k_RF: float = 4.0) -> "MTSequence":
    """Read hybrid-state control points (columns ``theta_rad, trf_ms``; '#' comments).

    The points span one cycle and are Hann-interpolated onto ``floor(cycle_duration / TR)``
    TRs (3 s / 4.5 ms → 666).
    """
    path = Path(path)
    rows: list[tuple[float, float]] = []
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            lines = [ln for ln in fh if ln.strip() and not ln.lstrip().startswith("#")]
    except OSError as exc:
        raise SequenceError(f"cannot read sequence file {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise SequenceError(f"sequence file {path} is not UTF-8 text ({exc.reason})") from None
    reader = csv.reader(lines)
    header = next(reader, None)
    if header is None or [h.strip() for h in header[:2]] != ["theta_rad", "trf_ms"]:
        raise SequenceError(f"{path}: expected a header 'theta_rad,trf_ms'")
    for lineno, row in enumerate(reader, start=2):
        try:
            rows.append((float(row[0]), float(row[1])))
        except (IndexError, ValueError) as exc:
            raise SequenceError(f"{path}: malformed control point on data row {lineno}: "
                                f"{row}") from exc
    if len(rows) < 2:
        raise SequenceError(f"{path}: needs at least 2 control points")
    cp = np.array(rows)
    n = int(cycle_duration / TR + 1e-9)
    return registry.kind_of("mt").cls(TR=TR, theta=hann_interpolate(cp[:, 0], n),
                                      TRF=hann_interpolate(cp[:, 1], n) * 1e-3, T_inv=T_inv,
                                      k_RF=k_RF)


# ---- choosing the kind -------------------------------------------------------------------------

def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SequenceError(f"cannot read sequence file {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise SequenceError(f"sequence file {path} is not UTF-8 text ({exc.reason})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SequenceError(f"{path} is not valid JSON: {exc.msg} (line {exc.lineno})") from exc


def _json_kind(data: Any, kinds: tuple[str, ...]) -> str:
    """The kind of a JSON sequence object among ``kinds``: its ``"kind"`` key, else the one
    kind whose required fields it has and whose fields hold all of its keys; where none fits,
    the kind that shares the most fields with it (so that its missing or unknown fields are
    what the error names)."""
    if not isinstance(data, dict):
        raise SequenceError("a sequence must be a JSON object")
    if "kind" in data:
        if data["kind"] not in kinds:
            raise SequenceError(f"the sequence is of kind {data['kind']!r}; this model plays "
                                f"{' or '.join(repr(k) for k in kinds)}")
        return data["kind"]
    if len(kinds) == 1:
        return kinds[0]
    entries = [registry.kind_of(k) for k in kinds]
    fitting = [e.name for e in entries
               if e.required <= data.keys() <= e.required | e.optional]
    if len(fitting) == 1:
        return fitting[0]
    if fitting:
        raise SequenceError(f"the sequence's fields fit kinds {' and '.join(fitting)}; add "
                            f"\"kind\": \"{fitting[0]}\" (or another) to say which")
    # None fits: the kind that shares the most fields (the first on a tie) says what is wrong.
    return max(entries, key=lambda e: len(data.keys() & (e.required | e.optional))).name


def load_for(path: str | Path, kinds: Iterable[str]) -> "Sequence":
    """Load a sequence file for a model that plays sequences of ``kinds`` (its
    ``accepted_sequence_kinds()``), choosing the kind the file holds (module docstring)."""
    path, kinds = Path(path), tuple(kinds)
    entries = [registry.kind_of(k) for k in kinds]
    suffix = path.suffix.lower()
    for what, label, attr in ((".csv", "CSV", "read_csv"), (".mat", "MATLAB .mat", "read_mat")):
        if suffix == what:
            readers = [e for e in entries if getattr(e, attr) is not None]
            if not readers:
                everywhere = [k for k, e in registry.KINDS.items() if getattr(e, attr) is not None]
                raise SequenceError(
                    f"{label} sequence files are read for kind(s) {', '.join(everywhere)} "
                    f"only; this model plays {' or '.join(kinds)}: give a JSON file")
            return getattr(readers[0], attr)(path)
    data = _read_json(path)
    kind = _json_kind(data, kinds)
    return registry.from_dict({k: v for k, v in data.items() if k != "kind"}, kind)


__all__ = ["read_mat", "load_for", "load_control_points_csv", "MAT_REQUIRED", "MAT_OPTIONAL"]
