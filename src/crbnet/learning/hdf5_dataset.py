"""Offline training data in an HDF5 file: ``crbnet dataset`` writes it, training streams it
(as the batches of :mod:`crbnet.learning.batches`).

File layout (h5py), all SI:

* attributes: ``format = "crbnet-dataset"``, ``version = 1``, ``model`` (JSON of
  :func:`crbnet.learning.checkpoint.model_to_dict`), ``sampling`` (JSON), ``seed``, ``storage``
  (``"coefficients"`` or ``"signals"``), ``chunk_rows``;
* ``theta`` [N, P] float64 — parameters;
* ``crb`` [N, P] float64 — CRB of the *full* data for σ = 1, |M0| = 1 (``inf``: unidentifiable),
  or, for a user's basis (attribute ``basis_source = "user"``, ``crb_space = "coefficients"``),
  the CRB of the coefficients in that basis;
* either ``coefficients`` [N, k] complex64 (= ``Uᴴ f``) with ``basis`` [T, k] complex128 and
  ``singular_values``, or ``signals`` [N, T] complex64 (noiseless, M0 = 1).

Everything is written chunk by chunk (``chunk_rows`` rows at a time, each chunk from its own
seeded generator) into a temporary file renamed into place at the end, so a dataset larger than
RAM can be built and a crash leaves no half-written file. :class:`HDF5Source` streams it back in
shuffled blocks with fresh M0 and noise every epoch (added by the trainer), holding only a few
blocks in memory.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterator

import h5py
import torch

from crbnet.errors import InputError
from crbnet.files import atomic_path, hdf5_file
from crbnet.limits import check_disk
from crbnet.learning.checkpoint import model_from_dict, model_to_dict
from crbnet.learning.batches import CleanBatch, simulate_clean
from crbnet.physics.models.base import SignalModel
from crbnet.progress import ProgressFactory
from crbnet.progress import resolve as resolve_progress
from crbnet.stats.sampling import ParameterSampler, derived_generator
from crbnet.stats.subspace import Subspace, basis_hash, fit_subspace, project, user_subspace

FORMAT = "crbnet-dataset"
VERSION = 1


def write_dataset(path: str | Path, model: SignalModel, sampler: ParameterSampler, n: int,
                  seed: int = 0, storage: str = "coefficients", k: int | None = None,
                  energy: float = 0.9999999, n_fit: int = 4096, chunk_rows: int = 1024,
                  progress: ProgressFactory | None = None, basis: torch.Tensor | None = None,
                  check_space: bool = True) -> dict:
    """Simulate ``n`` noiseless samples with their CRBs and write them to ``path`` (HDF5).

    Args:
        storage: ``"coefficients"`` (default: SVD basis fitted on ``n_fit`` extra signals, k
            from ``k`` or ``energy``) or ``"signals"`` (full time series).
        chunk_rows: rows simulated and written at a time (bounds memory).
        progress: a bar over the chunks (:mod:`crbnet.progress`; None: none).
        basis: a user's basis U [T, K] (orthonormal): coefficients in it instead of an SVD
            basis, and the CRBs are those of these coefficients (they *are* the data).
        check_space: refuse (ResourceError) before writing when the rows cannot fit in the
            free disk space where ``path`` goes.

    Returns:
        a summary dict (n, k, storage, path).
    """
    if storage not in ("coefficients", "signals"):
        raise InputError(f"storage must be 'coefficients' or 'signals', got {storage!r}")
    if n < 1 or chunk_rows < 1:
        raise InputError("--n and chunk rows must be positive")
    subspace: Subspace | None = None
    if basis is not None and storage != "coefficients":
        raise InputError("a given basis stores coefficients (--storage coefficients)")
    if storage == "coefficients":
        theta_fit = sampler.sample(n_fit, derived_generator(seed, "dataset-basis"))
        signals_fit = model.simulate(theta_fit)
        subspace = (fit_subspace(signals_fit, k=k, energy=energy) if basis is None
                    else user_subspace(basis, signals_fit))
    crb_basis = basis
    basis = None if subspace is None else subspace.basis
    width = model.n_timepoints if basis is None else basis.shape[1]
    P = model.n_parameters
    n_chunks = math.ceil(n / chunk_rows)
    path = Path(path)
    if check_space:
        check_disk(path, float(n) * (16 * P + 8 * width), f"{n} samples of {width} values")
    with atomic_path(path) as tmp, hdf5_file(tmp) as f:
        f.attrs["format"] = FORMAT
        f.attrs["version"] = VERSION
        f.attrs["model"] = json.dumps(model_to_dict(model))
        f.attrs["sampling"] = json.dumps(sampler.spec_dict())
        f.attrs["seed"] = int(seed)
        f.attrs["storage"] = storage
        f.attrs["chunk_rows"] = int(chunk_rows)
        rows = min(chunk_rows, n)
        d_theta = f.create_dataset("theta", (n, P), dtype="f8", chunks=(rows, P))
        d_crb = f.create_dataset("crb", (n, P), dtype="f8", chunks=(rows, P))
        d_sig = f.create_dataset(storage, (n, width), dtype="c8", chunks=(rows, width))
        if subspace is not None:
            f.create_dataset("basis", data=subspace.basis.numpy())
            f.create_dataset("singular_values", data=subspace.singular_values.numpy())
            f.attrs["energy"] = subspace.energy
            f.attrs["basis_source"] = subspace.source
            f.attrs["basis_hash"] = basis_hash(subspace.basis)
        f.attrs["crb_space"] = "time" if crb_basis is None else "coefficients"
        with resolve_progress(progress)(total=n_chunks, desc="dataset", unit="chunk") as bar:
            for c in range(n_chunks):
                start, stop = c * chunk_rows, min(n, (c + 1) * chunk_rows)
                theta = sampler.sample(stop - start, derived_generator(seed, "dataset", c))
                clean = simulate_clean(model, theta, basis, crb_basis=crb_basis)
                d_theta[start:stop] = clean.theta.numpy()
                d_crb[start:stop] = clean.crb.numpy()
                d_sig[start:stop] = clean.coefficients.numpy()
                bar.update(1)
    return {"path": str(path), "n": n, "storage": storage, "k": width if basis is not None else None,
            "energy": None if subspace is None else subspace.energy}


class Dataset:
    """Read access to a dataset file written by :func:`write_dataset` (validated on open)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"dataset not found: {self.path}")
        try:
            with h5py.File(self.path, "r") as f:
                attrs = dict(f.attrs)
                shapes = {name: f[name].shape for name in f}
                basis = f["basis"][()] if "basis" in f else None
                svals = f["singular_values"][()] if "singular_values" in f else None
        except OSError as exc:
            raise InputError(f"{self.path} is not a readable HDF5 file ({exc})") from None
        if _text(attrs.get("format")) != FORMAT or attrs.get("version") != VERSION:
            raise InputError(f"{self.path} is not a crbnet dataset (version {VERSION})")
        attr = _Attributes(self.path, attrs)
        self.storage = attr.choice("storage", ("coefficients", "signals"))
        if self.storage not in shapes or "theta" not in shapes or "crb" not in shapes:
            raise InputError(f"{self.path}: missing datasets (has {sorted(shapes)})")
        self.model_record: dict[str, Any] = attr.json_table("model")
        try:
            self.model = model_from_dict(self.model_record)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            if isinstance(exc, InputError):
                raise
            raise InputError(f"{self.path}: attribute 'model' is malformed ({exc!r})") from None
        self.sampling: dict = attr.json_table("sampling")
        self.seed = attr.integer("seed")
        self.n = int(shapes["theta"][0])
        if shapes["theta"] != (self.n, self.model.n_parameters) or shapes["crb"] != shapes["theta"]:
            raise InputError(f"{self.path}: theta/crb shapes do not match the model")
        if len(shapes[self.storage]) != 2 or shapes[self.storage][0] != self.n:
            raise InputError(f"{self.path}: {self.storage} has shape {shapes[self.storage]}, "
                             f"expected [{self.n}, width]")
        self.width = int(shapes[self.storage][1])
        self.subspace: Subspace | None = None
        if self.storage == "coefficients":
            if basis is None or basis.shape != (self.model.n_timepoints, self.width) or \
                    basis.dtype.kind != "c":
                raise InputError(f"{self.path}: basis missing or of the wrong shape/type")
            if svals is None or svals.ndim != 1 or svals.dtype.kind not in "fi":
                raise InputError(f"{self.path}: singular_values missing or malformed")
            energy = attrs.get("energy", float("nan"))
            if isinstance(energy, (bytes, str, bool)) or not hasattr(energy, "__float__"):
                raise InputError(f"{self.path}: attribute 'energy' must be a number")
            self.subspace = Subspace(torch.from_numpy(basis), torch.from_numpy(svals),
                                     float(energy),
                                     source=_text(attrs.get("basis_source", "svd")))

    def read(self, start: int, stop: int, k: int | None = None,
             basis: torch.Tensor | None = None) -> CleanBatch:
        """Rows ``[start, stop)`` as a :class:`CleanBatch`. Stored coefficients are truncated
        to ``k``; stored signals are projected on ``basis`` (if given)."""
        with h5py.File(self.path, "r") as f:
            theta = torch.from_numpy(f["theta"][start:stop])
            crb = torch.from_numpy(f["crb"][start:stop])
            if self.storage == "coefficients":
                coef = torch.from_numpy(f["coefficients"][start:stop, :k])
            else:
                coef = torch.from_numpy(f["signals"][start:stop])
                if basis is not None:
                    coef = project(coef.to(torch.complex128), basis).to(torch.complex64)
        self._check_finite(start, theta, coef, crb)
        return CleanBatch(theta, coef, crb)

    def _check_finite(self, start: int, theta: torch.Tensor, coef: torch.Tensor,
                      crb: torch.Tensor) -> None:
        """NaN or Inf in a row is bad input (an infinite CRB is allowed: unidentifiable)."""
        for name, values, bad in (("theta", theta, ~torch.isfinite(theta)),
                                  (self.storage, coef, ~torch.isfinite(coef)),
                                  ("crb", crb, torch.isnan(crb) | (crb < 0))):
            if bool(bad.any()):
                row = start + int(torch.nonzero(bad)[0, 0])
                raise InputError(f"{self.path}: {name} of row {row} is not a finite number "
                                 f"({'negative or NaN' if name == 'crb' else 'NaN or Inf'}); "
                                 "the dataset is corrupt")


def _text(value: Any) -> Any:
    """HDF5 text attributes come back as str or (fixed-length) bytes."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return value


class _Attributes:
    """Typed reads of a dataset file's attributes: InputError naming the attribute otherwise."""

    def __init__(self, path: Path, attrs: dict) -> None:
        self.path, self.attrs = path, attrs

    def _get(self, name: str) -> Any:
        if name not in self.attrs:
            raise InputError(f"{self.path}: attribute {name!r} is missing (not a complete crbnet "
                             "dataset)")
        return _text(self.attrs[name])

    def _bad(self, name: str, expected: str, value: Any) -> InputError:
        return InputError(f"{self.path}: attribute {name!r} must be {expected}, got "
                          f"{str(value)[:60]!r}")

    def choice(self, name: str, allowed: tuple[str, ...]) -> str:
        value = self._get(name)
        if not isinstance(value, str) or value not in allowed:
            raise self._bad(name, " or ".join(allowed), value)
        return value

    def json_table(self, name: str) -> dict:
        value = self._get(name)
        try:
            table = json.loads(value) if isinstance(value, str) else None
        except json.JSONDecodeError:
            table = None
        if not isinstance(table, dict):
            raise self._bad(name, "a JSON object", value)
        return table

    def integer(self, name: str) -> int:
        value = self._get(name)
        if isinstance(value, bool) or not hasattr(value, "__index__"):
            raise self._bad(name, "an integer", value)
        return int(value)


class HDF5Source:
    """Streams training rows ``[start, stop)`` of a :class:`Dataset` in shuffled blocks.

    Each epoch, blocks of ``block_rows`` consecutive rows are shuffled (one permutation shared
    by all DDP ranks, each taking every ``world``-th block, so ranks see different data), read
    ``blocks_in_memory`` at a time, shuffled row-wise, and cut into batches. Every rank yields
    the same number of batches (required by DDP); leftover rows wait for the next epoch's
    shuffle. Memory: ``blocks_in_memory × block_rows`` rows.
    """

    def __init__(self, dataset: Dataset, start: int, stop: int, batch_size: int,
                 k: int | None = None, basis: torch.Tensor | None = None,
                 block_rows: int = 4096, blocks_in_memory: int = 4, seed: int = 0,
                 rank: int = 0, world: int = 1, device: torch.device | str = "cpu") -> None:
        self.dataset, self.start, self.stop = dataset, int(start), int(stop)
        self.batch_size, self.k, self.basis = int(batch_size), k, basis
        self.block_rows, self.blocks_in_memory = int(block_rows), int(blocks_in_memory)
        self.seed, self.rank, self.world = int(seed), int(rank), int(world)
        self.device = torch.device(device)
        self.blocks = [(s, min(s + self.block_rows, self.stop))
                       for s in range(self.start, self.stop, self.block_rows)]
        # Every rank gets at least len(blocks)//world blocks, whatever the permutation; the
        # worst case is the smallest ones. All ranks compute the same count.
        sizes = sorted(b - a for a, b in self.blocks)
        per_rank_blocks = len(self.blocks) // self.world
        min_share = sum(sizes[:per_rank_blocks]) if per_rank_blocks else 0
        self.batches_per_epoch = min_share // self.batch_size
        if self.batches_per_epoch < 1:
            raise InputError(f"dataset too small: {self.stop - self.start} training rows give no "
                             f"full batch of {self.batch_size} per process "
                             f"({self.world} process(es), blocks of {self.block_rows} rows)")

    def samples_per_epoch(self) -> int:
        return self.batch_size * self.batches_per_epoch

    def start_epoch(self, epoch: int) -> None:  # the interface of OnlineSource
        return None

    def batches(self, epoch: int, generator: torch.Generator) -> Iterator[CleanBatch]:
        order = torch.randperm(len(self.blocks), generator=derived_generator(
            self.seed, "blocks", epoch)).tolist()
        mine = [self.blocks[i] for i in order[self.rank::self.world]]
        buffer: CleanBatch | None = None
        produced = 0
        for g in range(0, len(mine), self.blocks_in_memory):
            parts = [self.dataset.read(a, b, self.k, self.basis)
                     for a, b in mine[g:g + self.blocks_in_memory]]
            if buffer is not None and len(buffer):
                parts.insert(0, buffer)
            data = CleanBatch.concat(parts)
            data = data.select(torch.randperm(len(data), generator=generator))
            n_full = len(data) // self.batch_size
            for b in range(n_full):
                if produced == self.batches_per_epoch:
                    return
                batch = data.select(slice(b * self.batch_size, (b + 1) * self.batch_size))
                yield CleanBatch(batch.theta.to(self.device),
                                 batch.coefficients.to(self.device), batch.crb.to(self.device))
                produced += 1
            buffer = data.select(slice(n_full * self.batch_size, None))


def check_compatible(dataset: Dataset, model: SignalModel) -> None:
    """Refuse to train ``model`` on a dataset simulated for another model/sequence."""
    rec, mine = dict(dataset.model_record), model_to_dict(model)
    # An option the model declared after the dataset was written held its default there.
    rec["options"] = {**{o.name: o.default for o in model.options}, **rec.get("options", {})}
    for key in ("name", "parameters", "fixed", "sequence_hash", "options"):
        if rec.get(key) != mine.get(key):
            raise InputError(f"dataset {dataset.path} was made for a different model: {key} is "
                             f"{rec.get(key)!r} there but {mine.get(key)!r} here")


__all__ = ["write_dataset", "Dataset", "HDF5Source", "check_compatible", "FORMAT", "VERSION"]

