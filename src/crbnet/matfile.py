"""MATLAB .mat files: numeric variables read in MATLAB's own axis order, and v7.3 files written.

Two formats exist in practice:

* **v5 to v7** (MATLAB's default up to 2 GB): read with ``scipy.io.loadmat``; arrays come in
  MATLAB's shape (at least 2 axes), complex arrays as native complex.
* **v7.3** (``save -v7.3``, required above 2 GB): an HDF5 file behind a 512-byte MATLAB header.
  MATLAB is column-major and HDF5 row-major, so h5py shows every array with its axes
  **reversed** (a MATLAB ``176 × 146 × 15`` array is h5py's ``(15, 146, 176)``); complex arrays
  are a compound of ``real`` and ``imag``; each variable carries a ``MATLAB_class`` attribute
  (``single``, ``double``, ``logical``, ...).

:class:`MatVariable` hides the difference: its ``shape`` and everything it reads are in MATLAB's
order, so a variable gives the same array from either format. A v7.3 variable is read lazily
(only the requested box of it), a v5 one is loaded with the file.

:func:`write_v73` writes a file the way MATLAB does (header, ``MATLAB_class`` attributes,
compound complex, reversed axes), gzip-compressed, so MATLAB's ``load`` opens it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from crbnet.errors import InputError

#: Bytes before the HDF5 data of a v7.3 file (MATLAB's header lives there).
USERBLOCK_SIZE = 512

# numpy kind of each MATLAB class (what MATLAB writes in the MATLAB_class attribute).
_CLASS_OF_DTYPE = {np.dtype(np.float64): "double", np.dtype(np.float32): "single",
                   np.dtype(np.int8): "int8", np.dtype(np.uint8): "uint8",
                   np.dtype(np.int16): "int16", np.dtype(np.uint16): "uint16",
                   np.dtype(np.int32): "int32", np.dtype(np.uint32): "uint32",
                   np.dtype(np.int64): "int64", np.dtype(np.uint64): "uint64"}


@dataclass
class MatVariable:
    """One numeric variable of a .mat file, in MATLAB's axis order.

    Attributes:
        path: the file.
        name: the variable's name.
        shape: its MATLAB shape (at least 2 axes).
        dtype: numpy dtype of what :meth:`read` returns (complex for complex variables; bool for
            MATLAB ``logical``).
        version: ``"v7.3"`` or ``"v5"``.
        matlab_class: MATLAB's class (``double``, ``single``, ``int16``, ``logical``, ... and,
            for variables listed with ``numeric_only=False``, ``char``, ``cell``, ``struct``);
            ``dtype`` is None for those that hold no numbers.
    """

    path: Path
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype | None
    version: str
    _array: np.ndarray | None = None          # v5: the whole array, already loaded
    matlab_class: str = "double"

    @property
    def numeric(self) -> bool:
        """True for a non-empty array of numbers (real, complex or logical)."""
        return self.dtype is not None and 0 not in self.shape

    def read(self, index: tuple[slice, ...] | None = None) -> np.ndarray:
        """The variable, or the box ``index`` of it (one slice per MATLAB axis)."""
        if self._array is not None:
            return self._array if index is None else self._array[index]
        import h5py

        try:
            with h5py.File(self.path, "r") as fh:
                node = fh[self.name]
                if node.ndim == len(self.shape):     # only the box is read from the file
                    h5_index = () if index is None else tuple(reversed(index))
                    return _from_hdf5(node[h5_index], self.dtype).transpose()
                whole = _from_hdf5(node[()], self.dtype).transpose().reshape(self.shape)
        except (OSError, KeyError, ValueError) as exc:
            raise InputError(f"cannot read {self.name} from {self.path}: {exc}") from None
        return whole if index is None else whole[index]


def _from_hdf5(raw: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """An h5py array as the numpy array MATLAB means (compound real/imag → complex)."""
    if raw.dtype.names:
        out = np.empty(raw.shape, dtype=dtype)
        out.real, out.imag = raw["real"], raw["imag"]
        return out
    return raw.astype(dtype, copy=False)


def is_v73(path: str | Path) -> bool:
    """True for a MATLAB v7.3 (HDF5) file."""
    import h5py

    return bool(h5py.is_hdf5(str(path)))


def variables(path: str | Path, what: str = "MATLAB file",
              numeric_only: bool = True) -> dict[str, MatVariable]:
    """The variables of a .mat file, by name: the non-empty numeric ones, or with
    ``numeric_only=False`` every one (structs, cells, text and empty arrays too, their
    ``matlab_class`` saying which), for readers that name what is wrong with a variable.
    A file that is not a readable .mat file is one :class:`InputError` line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} not found: {path}")
    found = _v73_variables(path, what) if is_v73(path) else _v5_variables(path, what)
    return {k: v for k, v in found.items() if v.numeric or not numeric_only}


def _not_a_mat_file(what: str, path: Path, exc: Exception) -> InputError:
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return InputError(f"{what} {path} is not a MATLAB .mat file (v5 or v7.3): {reason}")


def _v73_variables(path: Path, what: str) -> dict[str, MatVariable]:
    import h5py

    out: dict[str, MatVariable] = {}
    try:
        with h5py.File(path, "r") as fh:
            for name, node in fh.items():
                if name.startswith("#"):      # MATLAB's own references, not variables
                    continue
                if not isinstance(node, h5py.Dataset):
                    out[name] = MatVariable(path, name, (), None, "v7.3", None, "struct")
                    continue
                shape = tuple(int(n) for n in reversed(node.shape))
                if len(shape) == 1:           # not written by MATLAB, but read the same way
                    shape = shape + (1,)
                if node.attrs.get("MATLAB_empty", 0):
                    shape = (0, 0)            # MATLAB stores an empty array's shape as its data
                out[name] = MatVariable(path, name, shape, _numpy_dtype(node), "v7.3", None,
                                        _matlab_class(node))
    except OSError as exc:
        raise _not_a_mat_file(what, path, exc) from None
    return out


def _matlab_class(node: Any) -> str:
    """A v7.3 dataset's MATLAB class (its attribute; from the dtype where it has none)."""
    matlab_class = node.attrs.get("MATLAB_class", b"")
    if isinstance(matlab_class, bytes):
        matlab_class = matlab_class.decode("ascii", "replace")
    if matlab_class:
        return str(matlab_class)
    base = np.dtype(node.dtype["real"]) if node.dtype.names and "real" in node.dtype.names \
        else np.dtype(node.dtype)
    return _CLASS_OF_DTYPE.get(base, "logical" if base.kind == "b" else str(base))


def _numpy_dtype(node: Any) -> np.dtype | None:
    """What a v7.3 dataset reads as (None when it is not a numeric array)."""
    matlab_class = node.attrs.get("MATLAB_class", b"")
    if isinstance(matlab_class, bytes):
        matlab_class = matlab_class.decode("ascii", "replace")
    if matlab_class in ("cell", "struct", "char", "function_handle") or node.dtype.kind == "O":
        return None
    if matlab_class == "logical":
        return np.dtype(bool)
    if node.dtype.names:
        if not {"real", "imag"} <= set(node.dtype.names):
            return None
        part = np.dtype(node.dtype["real"])
        return np.dtype(np.complex128 if part.itemsize >= 8 else np.complex64)
    return np.dtype(node.dtype) if node.dtype.kind in "biuf" else None


def _v5_variables(path: Path, what: str) -> dict[str, MatVariable]:
    import scipy.io

    try:
        data = scipy.io.loadmat(str(path))
    except Exception as exc:  # scipy raises several types for files that are not MAT files
        raise _not_a_mat_file(what, path, exc) from None
    out: dict[str, MatVariable] = {}
    for name, value in data.items():
        if name.startswith("__") or not isinstance(value, np.ndarray):
            continue
        numeric = value.dtype.kind in "biufc"
        out[name] = MatVariable(path, name, tuple(int(n) for n in value.shape),
                                value.dtype if numeric else None, "v5", value,
                                _v5_class(value.dtype))
    return out


def _v5_class(dtype: np.dtype) -> str:
    """The MATLAB class scipy's loadmat array stands for."""
    base = np.empty(0, dtype).real.dtype if dtype.kind == "c" else dtype
    if dtype.kind in "US":
        return "char"
    if dtype.kind == "O":
        return "cell"
    if dtype.kind == "V":
        return "struct"
    return _CLASS_OF_DTYPE.get(base, "logical" if dtype.kind == "b" else str(dtype))


# --------------------------------------------------------------------------------------------
# Writing v7.3


def matlab_header(created: float | None = None) -> bytes:
    """The 128 bytes MATLAB puts at the start of a v7.3 file: descriptive text (116 bytes, with
    the creation time, UTC, ``created`` in seconds since 1970 or now), subsystem offset (8),
    version 0x0200 and the endian mark ``IM``."""
    when = time.gmtime(created)
    desc = ("MATLAB 7.3 MAT-file, Platform: crbnet, Created on: "
            + time.strftime("%a %b %d %H:%M:%S %Y", when) + " HDF5 schema 1.00 .")
    return desc.encode("ascii")[:116].ljust(116, b" ") + b"\0" * 8 + b"\x00\x02IM"


def write_v73(path: str | Path, arrays: Mapping[str, np.ndarray], compression: int = 4,
              created: float | None = None) -> None:
    """Write ``arrays`` (MATLAB shapes: at least 2 axes, MATLAB's order) as a MATLAB v7.3 file,
    gzip-compressed (level ``compression``), atomically. ``created`` (seconds since 1970, UTC;
    default now) is the time the header states: a fixed one makes the file byte-reproducible.

    Real and complex single/double, integers and bool (``logical``) are written the way MATLAB
    writes them; the datasets are chunked (HDF5's chunk guess) as compression needs.
    """
    import h5py

    from crbnet.files import atomic_path

    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w", userblock_size=USERBLOCK_SIZE, libver="earliest") as fh:
            for name, value in arrays.items():
                _write_variable(fh, name, np.asarray(value), compression)
        with open(tmp, "r+b") as raw:
            raw.write(matlab_header(created).ljust(USERBLOCK_SIZE, b"\0"))


def _write_variable(fh: Any, name: str, value: np.ndarray, compression: int) -> None:
    if value.ndim < 2:
        raise ValueError(f"{name}: MATLAB arrays have at least 2 axes, got {value.shape}")
    stored = np.ascontiguousarray(value.transpose())           # MATLAB's axes, reversed
    if value.dtype == bool:
        stored, matlab_class = stored.astype(np.uint8), "logical"
    elif np.iscomplexobj(value):
        part = np.float64 if value.dtype == np.complex128 else np.float32
        compound = np.empty(stored.shape, dtype=[("real", part), ("imag", part)])
        compound["real"], compound["imag"] = stored.real, stored.imag
        stored, matlab_class = compound, "double" if part is np.float64 else "single"
    elif value.dtype in _CLASS_OF_DTYPE:
        matlab_class = _CLASS_OF_DTYPE[value.dtype]
    else:
        raise ValueError(f"{name}: no MATLAB class for dtype {value.dtype}")
    ds = fh.create_dataset(name, data=stored, compression="gzip", compression_opts=compression)
    ds.attrs["MATLAB_class"] = np.bytes_(matlab_class)
    if matlab_class == "logical":
        ds.attrs["MATLAB_int_decode"] = np.int32(1)


__all__ = ["MatVariable", "variables", "is_v73", "write_v73", "matlab_header", "USERBLOCK_SIZE"]
