"""Checkpoints of trained networks: the file format, writing and verified reading (the
estimator a checkpoint becomes is :mod:`crbnet.estimators.network`).

A checkpoint is a ``torch.save`` of plain containers, strings, numbers and tensors only, so it
loads with ``torch.load(..., weights_only=True)`` (no code runs on load)::

    {"format": "crbnet-checkpoint", "version": 1, "checksum": <sha256 of payload>,
     "payload": {
        "model":     {"name", "sequence_kind", "sequence" (to_dict), "sequence_hash", "fixed",
                      "options", "parameters", "units", "bounds", and "source" for a model
                      from a file, module or plugin (FILE.py:CLASS, module:CLASS, name)},
        "sampling":  {param: {"range", "distribution"}},          # training distribution
        "basis":     real [T, k, 2] (Re, Im of the orthonormal subspace U) or None,
        "subspace":  {"k", "energy", "crb_inflation", "basis": {"hash", "shape"}, "source"},
        "normalization": {"method", "description"},                # stats are in the buffers
        "network":   {"description": ParameterNet.describe(), "state_dict": {...}},
        "training":  {"config", "metrics" (one dict per epoch), "summary"},
        "resume":    {"epoch", "optimizer", "scheduler", "rng", ...} or None}}

The checksum (SHA-256 over a canonical serialization of the payload: keys, dtypes, shapes and
raw tensor bytes) catches truncated, edited or mixed-up files; a file without the format tag,
with another version, with wrong keys or a wrong checksum is refused with an
:class:`InputError`.
"""

from __future__ import annotations

import hashlib
import io
import struct
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from crbnet.errors import InputError
from crbnet.files import atomic_path
from crbnet.physics import models, sequences
from crbnet.physics.models.base import SignalModel

FORMAT = "crbnet-checkpoint"
VERSION = 1
PAYLOAD_KEYS = {"model", "sampling", "basis", "subspace", "normalization", "network",
                "training", "resume"}

NORMALIZATION = {
    "method": "subspace-phase-magnitude-v1",
    "description": "z = U^H y; rotate z by exp(-i*arg(sum z_j^2)/2); flip sign so Re z_1 >= 0; "
                   "divide by ||z||; features [Re, Im] standardized by the network's "
                   "feature_mean/feature_std buffers. Invariant to complex M0.",
}


class CheckpointError(InputError):
    """A file that is not a valid crbnet checkpoint."""


# ---- model (de)serialization -----------------------------------------------------------------
def model_to_dict(model: SignalModel) -> dict:
    """Everything needed to rebuild ``model`` (JSON-ready)."""
    options = model.option_values
    record = {
        "name": model.name,
        "sequence_kind": model.sequence.kind,
        "sequence": model.sequence.to_dict(),
        "sequence_hash": sequences.sequence_hash(model.sequence),
        "fixed": dict(model.fixed),
        "options": options,
        "parameters": list(model.parameters),
        "units": dict(model.units),
        "bounds": {p: list(b) for p, b in model.bounds.items()},
    }
    source = models.source_of(model)
    if source != model.name:  # a model from a file, a module or a plugin: how to import it
        record["source"] = source
    return record


def model_from_dict(d: Mapping[str, Any]) -> SignalModel:
    """Inverse of :func:`model_to_dict`; checks the rebuilt model matches the record."""
    try:
        source = d.get("source", d["name"])
        try:
            cls = models.resolve(source)
        except models.ModelError as exc:
            raise CheckpointError(f"the record's model {source!r} cannot be imported here "
                                  f"({exc}); make it importable under the same name") from None
        if cls.name != d["name"]:
            raise CheckpointError(f"{source} is model {cls.name!r}, the record is {d['name']!r}")
        seq = sequences.from_dict(dict(d["sequence"]), d["sequence_kind"])
        model = models.get(source, sequence=seq, fixed=dict(d["fixed"]),
                           **dict(d.get("options", {})))
    except KeyError as exc:
        raise CheckpointError(f"model record is missing {exc}") from None
    if list(model.parameters) != list(d["parameters"]):
        raise CheckpointError(f"model parameters {list(model.parameters)} do not match the "
                              f"record {list(d['parameters'])}")
    if sequences.sequence_hash(model.sequence) != d["sequence_hash"]:
        raise CheckpointError("sequence in the record does not match its hash")
    return model


# ---- checksum ------------------------------------------------------------------------------
def _feed(h: "hashlib._Hash", obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(b"T" + str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, Mapping):
        h.update(b"D%d" % len(obj))
        for key in sorted(obj, key=str):
            _feed(h, str(key))
            _feed(h, obj[key])
    elif isinstance(obj, (list, tuple)):
        h.update(b"L%d" % len(obj))
        for item in obj:
            _feed(h, item)
    elif isinstance(obj, bool) or obj is None:
        h.update(b"B" + repr(obj).encode())
    elif isinstance(obj, int):
        h.update(b"I" + str(obj).encode())
    elif isinstance(obj, float):
        h.update(b"F" + struct.pack("<d", obj))
    elif isinstance(obj, str):
        data = obj.encode()
        h.update(b"S%d:" % len(data) + data)
    elif isinstance(obj, (np.floating, np.integer)):
        _feed(h, obj.item())
    else:
        raise TypeError(f"cannot checksum {type(obj).__name__}")


def checksum(payload: Mapping[str, Any]) -> str:
    """SHA-256 hex digest of a canonical serialization of ``payload``."""
    h = hashlib.sha256()
    _feed(h, payload)
    return h.hexdigest()


# ---- files ---------------------------------------------------------------------------------
def basis_to_real(basis: torch.Tensor | None) -> torch.Tensor | None:
    return None if basis is None else torch.view_as_real(basis.to(torch.complex128).cpu()).clone()


def basis_from_real(stored: torch.Tensor | None) -> torch.Tensor | None:
    return None if stored is None else torch.view_as_complex(stored.contiguous())


def save(path: str | Path, payload: Mapping[str, Any]) -> None:
    """Write a checkpoint atomically (temporary file + rename)."""
    missing = PAYLOAD_KEYS - set(payload)
    if missing:
        raise ValueError(f"checkpoint payload is missing {sorted(missing)}")
    record = {"format": FORMAT, "version": VERSION, "checksum": checksum(payload),
              "payload": dict(payload)}
    # Serialized in memory, then written as plain bytes: torch's own file writer reports a
    # full disk as an unspecific RuntimeError, a plain write as OSError (ENOSPC) with the path.
    buffer = io.BytesIO()
    torch.save(record, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())


def read(path: str | Path, verify: bool = True) -> dict:
    """Load and validate a checkpoint file; returns its payload (tensors on the CPU)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling failure means: not a file we wrote
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} is not a crbnet checkpoint (cannot be read safely: "
                              f"{first_line[:160]})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a crbnet checkpoint (format tag missing)")
    if record.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {record.get('version')!r} is not "
                              f"supported (expected {VERSION})")
    if set(record) != {"format", "version", "checksum", "payload"}:
        raise CheckpointError(f"{path}: unexpected top-level keys {sorted(record)}")
    payload = record["payload"]
    if not isinstance(payload, dict) or set(payload) != PAYLOAD_KEYS:
        got = sorted(payload) if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path}: checkpoint payload has keys {got}, expected "
                              f"{sorted(PAYLOAD_KEYS)}")
    if verify:
        try:
            digest = checksum(payload)
        except TypeError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
        if digest != record["checksum"]:
            raise CheckpointError(f"{path}: checksum mismatch — the file was modified or is "
                                  "corrupt")
    return payload


__all__ = ["FORMAT", "VERSION", "CheckpointError", "read", "save", "checksum", "model_to_dict",
           "model_from_dict", "basis_to_real", "basis_from_real", "NORMALIZATION"]
