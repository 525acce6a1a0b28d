"""The semi-solid pool's linearized relaxation rate R2sl of the generalized Bloch model: the
public names in one place (docs/physics.md, "The semi-solid pool: lineshapes and the
linearized R2sl").

* exact values: :func:`r2sl_exact`, :func:`rho_exact`, :func:`solve_ide` (no table);
* the table: :func:`get_table` → :class:`R2slTable` (``evaluate``, ``check``,
  ``kernel_arrays``); :class:`R2slGridSpec`; :class:`R2slDomainError`;
* compiled and differentiable evaluation: :func:`r2sl_scalar_kernel`, :func:`r2sl_for_pulses`,
  :func:`r2sl_torch`.
"""

from crbnet.physics.r2sl_kernels import r2sl_for_pulses, r2sl_scalar_kernel, r2sl_torch
from crbnet.physics.r2sl_solver import (OmegaSeries, greens_integrals, r2sl_exact, rho_exact,
                                        rho_from_w, solve_ide, w_bloch)
from crbnet.physics.r2sl_table import (R2slDomainError, R2slGridSpec, R2slTable, build_table,
                                       cache_dir, cache_path, get_table)

__all__ = ["OmegaSeries", "R2slDomainError", "R2slGridSpec", "R2slTable", "build_table",
           "cache_dir", "cache_path", "get_table", "greens_integrals", "r2sl_exact",
           "r2sl_for_pulses", "r2sl_scalar_kernel", "r2sl_torch", "rho_exact", "rho_from_w", "solve_ide",
           "w_bloch"]
