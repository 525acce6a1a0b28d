"""Make the shipped in-vivo slice (examples/invivo/*.mat) from the authors' original files.

Usage, from the repository root:

    python3 examples/invivo/make_slice.py [SOURCE_FOLDER] [--out examples/invivo]

SOURCE_FOLDER holds the unchanged basis.mat, coeffs.mat and control.mat of
andrewwmao/BiasReducedNetworks (commit e4c7d3d, folder data/); default ../shared/data/invivo_mt.
What is kept (README.md beside this script says why):

* basis.mat   -- U: the first 15 of the 100 basis vectors (as MATLAB sees it, 6852 x 15 single);
* coeffs.mat  -- x (176 x 146 x 15 complex single) and mask (176 x 146 logical), unchanged;
* control.mat -- alpha and TRF (1142 x 6 double), unchanged.

Every file is written as MATLAB v7.3 (HDF5 with MATLAB's header and attributes), gzip-compressed;
the values are copied bit for bit. The script prints the sizes and checks what it wrote.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np

from crbnet.matfile import variables, write_v73

#: Coefficient images in the data: the basis is cut to as many columns.
RANK = 15
#: The creation time the files' MATLAB headers state (2026-01-01 00:00 UTC): fixed, so that the
#: script makes the same bytes every time.
CREATED = 1767225600.0


def read_all(path: Path) -> dict[str, np.ndarray]:
    return {name: var.read() for name, var in variables(path).items()}


def trim(source: Path) -> dict[str, dict[str, np.ndarray]]:
    """The arrays of each shipped file, in MATLAB's axis order."""
    basis = read_all(source / "basis.mat")["U"]               # 6852 x 100
    coeffs = read_all(source / "coeffs.mat")                   # x: 176 x 146 x 15, mask
    control = read_all(source / "control.mat")                 # alpha, TRF: 1142 x 6
    x, mask = coeffs["x"], coeffs["mask"]
    if x.shape[-1] != RANK or np.any(x[~mask] != 0):
        raise SystemExit("unexpected source: x must hold 15 coefficients, zero outside the mask")
    return {"basis.mat": {"U": np.ascontiguousarray(basis[:, :RANK])},
            "coeffs.mat": {"x": x, "mask": mask},
            "control.mat": {"alpha": control["alpha"], "TRF": control["TRF"]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", default="../shared/data/invivo_mt", type=Path)
    parser.add_argument("--out", default=Path(__file__).resolve().parent, type=Path)
    args = parser.parse_args()
    files = trim(args.source)
    for name, arrays in files.items():
        path = args.out / name
        write_v73(path, arrays, created=CREATED)
        back = read_all(path)
        for var, value in arrays.items():            # what was written reads back exactly
            assert back[var].dtype == value.dtype and np.array_equal(back[var], value), var
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        shapes = ", ".join(f"{v} {list(a.shape)} {a.dtype}" for v, a in arrays.items())
        print(f"{path}: {path.stat().st_size / 1e6:.3f} MB ({shapes}); sha256 {digest}...")


if __name__ == "__main__":
    main()
