"""Checkpoints of trained networks, and the estimator they become: ``crbnet.load(path)``.

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
from crbnet.estimators.protocol import as_signal_tensor, register_estimator
from crbnet.io import atomic_path
from crbnet.physics import models, sequences
from crbnet.physics.models.base import SignalModel
from crbnet.stats.subspace import project

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


# ---- the estimator -------------------------------------------------------------------------
class NetworkEstimator:
    """A trained network as an :class:`~crbnet.estimators.protocol.Estimator`.

    Attributes:
        model: the signal model it was trained for (sequence and fixed parameters included).
        name: short label, ``"net-<loss>"``.
        parameters: estimated parameter names (columns of :meth:`predict`).
        basis: [T, k] subspace (complex128) or None.
        network: the :class:`~crbnet.learning.nets.ParameterNet` (eval mode).
        info: the checkpoint payload without weights and resume state (config, metrics...).
        device: where :meth:`predict` computes.
    """

    def __init__(self, model: SignalModel, network: torch.nn.Module, basis: torch.Tensor | None,
                 name: str = "net", info: Mapping[str, Any] | None = None,
                 device: torch.device | str | None = None, batch_size: int = 65536) -> None:
        self.model = model
        self.name = name
        self.info = dict(info or {})
        self.batch_size = int(batch_size)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.network = network.to(self.device).eval()
        self.basis = None if basis is None else basis.to(torch.complex128)

    @property
    def parameters(self) -> tuple[str, ...]:
        return tuple(self.model.parameters)

    def to(self, device: torch.device | str) -> "NetworkEstimator":
        self.device = torch.device(device)
        self.network.to(self.device)
        return self

    @torch.no_grad()
    def predict(self, signals: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Parameters [N, P] (SI, float64, CPU) from complex signals [N, T] (full time series,
        any complex M0). Projection and normalization are applied here."""
        # The network works in single precision, so the projection does too: its round-off
        # (~1e-7 relative) is far below any measurement noise, and it halves the memory
        # traffic of the step that dominates inference.
        y = as_signal_tensor(signals, self.model.n_timepoints, dtype=None,
                             device=torch.device("cpu"))
        out = []
        basis = None if self.basis is None else self.basis.to(self.device, torch.complex64)
        # On the CPU, blocks of a few thousand voxels keep the conversion and projection in
        # cache (1.6x faster than one large block).
        block = self.batch_size if self.device.type != "cpu" else min(self.batch_size, 4096)
        for start in range(0, y.shape[0], block):
            chunk = y[start:start + block].to(self.device, torch.complex64)
            z = project(chunk, basis)
            out.append(self.network(z).to(torch.float64).cpu())
        if not out:
            return torch.zeros(0, len(self.parameters), dtype=torch.float64)
        return torch.cat(out)

    def __repr__(self) -> str:
        return (f"NetworkEstimator(model={self.model.name!r}, parameters={list(self.parameters)}, "
                f"name={self.name!r})")

    @property
    def basis_hash(self) -> str | None:
        """Identity of the basis the network reads (:func:`crbnet.stats.subspace.basis_hash`)."""
        from crbnet.stats.subspace import basis_hash

        return None if self.basis is None else basis_hash(self.basis)

    def in_basis(self, basis: torch.Tensor) -> "CoefficientNetworkEstimator":
        """This network reading subspace coefficients ``Uᴴ y`` directly (no projection), for
        coefficients in ``basis`` — which must be the basis the network was trained in."""
        from crbnet.stats.subspace import basis_hash

        given = basis_hash(basis)
        if self.basis is None:
            raise InputError(f"the network was trained on full time series, not on subspace "
                             f"coefficients: it cannot read coefficients in basis {given}")
        if given != self.basis_hash:
            raise InputError(f"the input's basis {given} {list(basis.shape)} is not the basis "
                             f"the network was trained in ({self.basis_hash} "
                             f"{list(self.basis.shape)})")
        return CoefficientNetworkEstimator(self)


class CoefficientNetworkEstimator:
    """A :class:`NetworkEstimator` whose inputs are the coefficients [N, K] in its own basis;
    its ``model`` is the :class:`~crbnet.physics.models.projected.ProjectedModel` of that basis."""

    def __init__(self, network: NetworkEstimator) -> None:
        from crbnet.physics.models.projected import ProjectedModel

        self.network_estimator = network
        self.model = ProjectedModel(network.model, network.basis)
        self.name = network.name
        self.info = network.info

    @property
    def parameters(self) -> tuple[str, ...]:
        return tuple(self.model.parameters)

    @torch.no_grad()
    def predict(self, signals: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Parameters [N, P] (SI, float64, CPU) from coefficients [N, K] (any complex M0)."""
        net = self.network_estimator
        z = as_signal_tensor(signals, self.model.n_timepoints, dtype=None,
                             device=torch.device("cpu"))
        block = net.batch_size if net.device.type != "cpu" else min(net.batch_size, 4096)
        out = [net.network(z[s:s + block].to(net.device, torch.complex64)).to(torch.float64).cpu()
               for s in range(0, z.shape[0], block)]
        return torch.cat(out) if out else torch.zeros(0, len(self.parameters),
                                                      dtype=torch.float64)

    def __repr__(self) -> str:
        return f"CoefficientNetworkEstimator({self.network_estimator!r}, basis {self.model.basis_hash})"


def estimator_from_payload(payload: Mapping[str, Any], device: torch.device | str | None = None,
                           source: str = "checkpoint") -> NetworkEstimator:
    from crbnet.learning.nets import ParameterNet

    try:
        model = model_from_dict(payload["model"])
        net_record = payload["network"]
        network = ParameterNet.from_description(net_record["description"])
        network.load_state_dict(net_record["state_dict"])
        basis = basis_from_real(payload["basis"])
        loss = payload["training"]["config"]["loss"]["name"]
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{source}: malformed checkpoint content "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]})") from None
    if basis is not None and basis.shape != (model.n_timepoints, network.n_coefficients):
        raise CheckpointError(f"{source}: basis shape {list(basis.shape)} does not match the "
                              f"sequence ({model.n_timepoints} time points) and the network "
                              f"({network.n_coefficients} inputs)")
    recorded = (payload.get("subspace") or {}).get("basis")
    if basis is not None and isinstance(recorded, Mapping):
        from crbnet.stats.subspace import basis_hash

        if recorded.get("hash") != basis_hash(basis):
            raise CheckpointError(f"{source}: the stored basis does not match its recorded hash")
    info = {k: v for k, v in payload.items() if k not in ("network", "resume", "basis")}
    return NetworkEstimator(model, network, basis, name=f"net-{loss}", info=info, device=device)


def load(path: str | Path, device: torch.device | str | None = None) -> NetworkEstimator:
    """Load a trained network from ``path`` (a checkpoint file or a run directory holding
    ``checkpoint.pt``) as an estimator: ``crbnet.load(path).predict(signals) -> [N, P]``.

    Raises :class:`InputError` (:class:`CheckpointError`) for a missing, foreign or tampered
    file.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if device is not None:
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise InputError("device cuda requested but CUDA is not available")
    return estimator_from_payload(read(path), device=device, source=str(path))


@register_estimator("network", "a trained network (option checkpoint: a checkpoint file or run "
                               "directory from crbnet train)", needs_checkpoint=True)
def network_estimator(model: SignalModel | None, checkpoint: str | Path,
                      device: torch.device | str | None = None) -> NetworkEstimator:
    """The estimator registry's ``network``: the trained network in ``checkpoint``, refused
    when it was trained for another model, parameter set or sequence than ``model`` (None:
    the checkpoint's own model)."""
    estimator = load(checkpoint, device=device)
    if model is not None:
        from crbnet.assessment.compare import same_model

        if not same_model(estimator.model, model):
            raise InputError(f"{checkpoint} was trained for {estimator.model!r} with sequence "
                             f"{sequences.sequence_hash(estimator.model.sequence)}, not for "
                             f"{model!r} with sequence {sequences.sequence_hash(model.sequence)}")
    return estimator


__all__ = ["FORMAT", "VERSION", "CheckpointError", "NetworkEstimator", "network_estimator",
           "CoefficientNetworkEstimator", "load", "read", "save",
           "checksum", "model_to_dict", "model_from_dict", "NORMALIZATION"]
