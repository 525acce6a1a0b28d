"""Single-pool FISP MR fingerprinting (Jiang et al., MRM 2015;74:1621) by extended phase graphs.

Per TR n: an RF pulse of flip ``B1·α_n`` about x (phase 0), relaxation for TE, readout of the
k = 0 transverse state ``F⁺₀``, relaxation for ``TR_n − TE``, then the unbalanced readout
gradient dephases by one order (k → k + 1). The experiment starts from equilibrium with an ideal
inversion, ``TI`` before the first pulse; there is no steady state (one shot). The RF matrix
follows Weigel, JMRI 2015;41:266 (eq. 15 with phase 0).

Exact by default. A state of order k needs at least k dephasings to return to k = 0, so with T
TRs no order above ``(T − 1) // 2`` can both be reached (orders grow by one per TR from zero)
and still come back before the last echo; keeping ``n_states = (T + 1) // 2`` orders is
therefore exact — the signal equals an untruncated EPG (and a brute-force isochromat
simulation) to round-off, for every T1 and T2. A fixed lower order is not safe for long
relaxation times: stimulated echoes stored as ``Z_k`` decay with T1, not T2, and with the
400-TR default schedule keeping 26 orders errs by 2 % at CSF (T1 4 s, T2 2 s), 180 orders still
by 1.2e-5 at T1 5 s, T2 3 s (181 are the fewest within 1e-5). Orders that cannot return are
also skipped TR by TR (orders ``0 … min(n, T − 1 − n)`` at TR n), which halves the work of the
exact recursion.
``max_order`` (a constructor option) keeps fewer orders, trading accuracy for speed;
:meth:`FISPMRF.truncation_error` measures what that costs, and ``crbnet models`` prints it.

Real arithmetic: with RF phase 0 every ``F±_k`` stays purely imaginary and every ``Z_k`` real
(the RF mixes ``F±`` with ``±i·sin α·Z``, relaxation is real, and ``F⁺₀ = conj(F⁻₀)`` maps an
imaginary number to an imaginary one), so the states are kept as ``f± = Im F±`` and ``z``:
a quarter of the arithmetic of complex states. The signal is ``i·s`` with s real; for the
Fisher information that is a real signal whose phase M0 absorbs (crbnet.crb's real-Gram route
applies unchanged to s). States are [K, N] (order, voxel) so that the per-TR coefficients and
the readout are contiguous rows.

Two routes compute the same numbers. :func:`epg_signal` is plain tensor operations: it runs on
any device and under any autodiff (crbnet.crb's ``torch.func`` Jacobian on CUDA, sequence
design's gradients in the flip angles). On CPU, where no autodiff tracks the input,
``simulate``, the Jacobian and the CRB take a compiled kernel (:mod:`._fisp_kernel`) that
carries forward-mode tangents along T1, T2 and B1 through the recursion in one pass and sums
the Gram matrix in the same pass; ``use_compiled_kernel = False`` forces the tensor code.
Both are tested against each other and against finite differences.
"""

from __future__ import annotations

import numpy as np
import torch

from crbnet.physics import sequences as seqs
from crbnet.physics.models import _fisp_kernel, _numba
from crbnet.physics.models.base import ModelError, ModelOption, ParameterSpec, SignalModel


def exact_n_states(n_tr: int) -> int:
    """EPG orders that make the recursion exact for a one-shot sequence of ``n_tr`` TRs."""
    return (int(n_tr) + 1) // 2


class FISPMRF(SignalModel):
    """Single-pool FISP MR fingerprinting by extended phase graphs (flip-angle and TR trains)."""

    name = "fisp_mrf"
    sequence_kind = "fisp"
    specs = (
        ParameterSpec("T1", "s", (0.01, 10.0), (0.1, 5.0), 1.0, True, "longitudinal relaxation time",
                      map_name="T1map"),
        ParameterSpec("T2", "s", (0.001, 5.0), (0.01, 2.5), 0.08, True, "transverse relaxation time",
                      map_name="T2map"),
        ParameterSpec("B1", "", (0.3, 2.0), (0.7, 1.3), 1.0, False, "relative flip-angle scale",
                      map_name="TB1map"),
    )
    default_fixed = {"B1": 1.0}
    # Found by measurement (docs/training.md lists what was tried).
    training_defaults = {"data": {"batch_size": 256, "batches_per_epoch": 400, "pool_size": 8192,
                                  "pool_refresh": 1024, "val_size": 1024},
                         "net": {"width": 256, "depth": 4},
                         "optim": {"epochs": 30, "lr": 2e-3}}
    # Voxels per pass of the tensor route (bounds memory and keeps the states cache-sized) and
    # per chunk in crbnet.crb when it takes that route (the TR loop has small per-step tensors,
    # so per-operation overhead dominates there). Results do not depend on either.
    chunk_size = 4096
    crb_chunk_size = 4096
    options = (ModelOption("max_order", int, None, "highest EPG dephasing order kept "
                           "(default: exact, every order that can reach an echo)"),)
    # The compiled CPU kernel for simulate, the Jacobian and the CRB where no autodiff is
    # tracking the input; False: always the tensor code.
    use_compiled_kernel = True
    # Where the kernel does not apply (CUDA, no numba) but no autodiff tracks the input, the
    # Jacobian comes from tangents carried through the tensor recursion
    # (epg_signal_and_jacobian) instead of torch.func; False: torch.func.
    use_tensor_tangents = True

    def __init__(self, sequence=None, fixed=None, max_order: int | None = None) -> None:
        """``max_order``: highest EPG order kept (None: exact, see the module docstring)."""
        super().__init__(sequence, fixed)
        exact = exact_n_states(self.n_timepoints)
        if max_order is None:
            self.n_states = exact
        else:
            if int(max_order) != max_order or max_order < 1:
                raise ModelError(f"max_order must be a whole number >= 1, got {max_order}")
            self.n_states = min(int(max_order) + 1, exact)
        # Kept orders are 0 … max_order (what a checkpoint records to rebuild the model).
        self.max_order = self.n_states - 1

    @classmethod
    def default_sequence(cls) -> seqs.FISPSequence:
        return seqs.default_fisp_sequence()

    @property
    def exact(self) -> bool:
        """Whether the model keeps every EPG order that reaches an echo."""
        return self.n_states >= exact_n_states(self.n_timepoints)

    # ---- simulation -----------------------------------------------------------------------
    def _simulate(self, p: dict[str, torch.Tensor]) -> torch.Tensor:
        if self._compiled_applies(*p.values()):
            signal = self._run_kernel(p)[0]
            return torch.complex(torch.zeros_like(signal), signal)
        n = p["T1"].shape[0]
        if n <= self.chunk_size:
            return self._simulate_chunk(p)
        return torch.cat([self._simulate_chunk({k: v[i:i + self.chunk_size] for k, v in p.items()})
                          for i in range(0, n, self.chunk_size)])

    def _simulate_chunk(self, p: dict[str, torch.Tensor]) -> torch.Tensor:
        seq = self.sequence
        T1 = p["T1"]
        flip = torch.as_tensor(seq.flip, dtype=T1.dtype, device=T1.device)
        tr = torch.as_tensor(seq.TR, dtype=T1.dtype, device=T1.device)
        B1 = self.fixed["B1"] if "B1" in self.fixed else p["B1"]
        return epg_signal(T1, p["T2"], B1, flip, tr, seq.TE, seq.TI, self.n_states)

    # ---- compiled route -------------------------------------------------------------------
    def explicit_signal_and_jacobian(self, theta: torch.Tensor
                                     ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Signal [N, T] and Jacobian columns [P, N, T] (complex, purely imaginary) by the
        model's own forward-mode tangents: the compiled kernel (CPU, float64) or the tensor
        recursion (:func:`epg_signal_and_jacobian`; any device, e.g. CUDA), outside autodiff
        only; None otherwise (crbnet.crb then takes the ``torch.func`` route)."""
        if self._explicit_applies(theta):
            signal, jac, _ = self._run_kernel(self.full_parameters(theta.detach()),
                                              jacobian=True)
        elif (self.use_tensor_tangents and theta.dtype in (torch.float32, torch.float64)
              and _numba.untracked(theta)):
            signal, jac = self._tensor_tangents(self.full_parameters(theta))
        else:
            return None
        return (torch.complex(torch.zeros_like(signal), signal),
                torch.complex(torch.zeros_like(jac), jac))

    def _tensor_tangents(self, p: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(Im f [N, T], ∂ Im f/∂θ [P, N, T]) from :func:`epg_signal_and_jacobian` in chunks."""
        seq = self.sequence
        T1 = p["T1"]
        flip = torch.as_tensor(seq.flip, dtype=T1.dtype, device=T1.device)
        tr = torch.as_tensor(seq.TR, dtype=T1.dtype, device=T1.device)
        signals, columns = [], []
        for i in range(0, T1.shape[0], self.chunk_size):
            part = {k: v[i:i + self.chunk_size] for k, v in p.items()}
            B1 = self.fixed["B1"] if "B1" in self.fixed else part["B1"]
            s, J = epg_signal_and_jacobian(part["T1"], part["T2"], B1, flip, tr, seq.TE, seq.TI,
                                           self.n_states, self.parameters)
            signals.append(s)
            columns.append(J)
        return torch.cat(signals), torch.cat(columns, 1)

    def explicit_real_gram(self, theta: torch.Tensor) -> torch.Tensor | None:
        """Gram matrix [N, P+1, P+1] of (∂s/∂θ_1, …, ∂s/∂θ_P, s), s = Im f, summed in the
        kernel (the Jacobian is never stored). The signal is i·s, and a constant phase of the
        signal drops out of ``Re(Jᴴ J)`` exactly as for a real signal, so crbnet.crb forms the
        Fisher matrix from this as it does for a real one. None where
        :meth:`explicit_signal_and_jacobian` is None."""
        if not self._explicit_applies(theta):
            return None
        return self._run_kernel(self.full_parameters(theta.detach()), gram=True)[2]

    def _explicit_applies(self, theta: torch.Tensor) -> bool:
        return theta.dtype == torch.float64 and self._compiled_applies(theta)

    def _compiled_applies(self, *tensors: torch.Tensor) -> bool:
        """Whether the kernel may replace the tensor code: enabled, numba usable, float32 or
        float64 CPU tensors that no autodiff is tracking."""
        return (self.use_compiled_kernel and _numba.available()
                and all(t.dtype in (torch.float32, torch.float64) for t in tensors)
                and _numba.untracked_cpu(*tensors))

    def _run_kernel(self, p: dict[str, torch.Tensor], jacobian: bool = False,
                    gram: bool = False) -> tuple:
        """(signal [N, T] — None when only the Gram matrix is asked for —, Jacobian [P, N, T]
        or None, Gram [N, P+1, P+1] or None) from the full parameter set ``p``; the signal is
        Im f in the dtype of T1 (the kernel's arithmetic), the derivatives float64."""
        seq = self.sequence
        dtype = p["T1"].dtype if not (jacobian or gram) else torch.float64
        arrays = [p[k].detach().to(dtype).contiguous().numpy() for k in ("T1", "T2", "B1")]
        n, n_par, T = arrays[0].shape[0], self.n_parameters, self.n_timepoints
        signal = torch.empty(n, T, dtype=dtype) if not gram or jacobian else None
        jac = torch.empty(n_par, n, T, dtype=dtype) if jacobian else None
        G = torch.empty(n, n_par + 1, n_par + 1, dtype=torch.float64) if gram else None
        np_dtype = arrays[0].dtype
        dirs = np.array([name in self.parameters for name in ("T1", "T2", "B1")], dtype=np.int64)
        _fisp_kernel.run(*arrays, "B1" not in self.fixed, seq.flip.astype(np_dtype),
                         seq.TR.astype(np_dtype), seq.TE, seq.TI, self.n_states, dirs,
                         None if signal is None else signal.numpy(),
                         None if jac is None else jac.numpy(), None if G is None else G.numpy())
        return signal, jac, G

    # ---- truncation -----------------------------------------------------------------------
    def truncation_error(self, max_order: int | None = None) -> float:
        """Largest relative signal error ``max_t |f − f_exact| / max_t |f_exact|`` of keeping
        orders 0 … ``max_order`` (default: this model's) with this sequence, over a grid of
        tissues with T1 ≤ 5 s and T2 ≤ min(T1, 3 s) — brain tissue including CSF — at B1 = 1
        and this model's fixed B1. 0 for an exact model."""
        order = self.max_order if max_order is None else int(max_order)
        exact = FISPMRF(self.sequence, fixed={})
        trial = FISPMRF(self.sequence, fixed={}, max_order=order)
        if trial.exact:
            return 0.0
        b1_values = sorted({1.0, self.fixed.get("B1", 1.0)})
        theta = torch.tensor([[t1, t2, b1] for t1 in (0.3, 0.8, 1.5, 3.0, 5.0)
                              for t2 in (0.03, 0.1, 0.3, 1.0, 2.0, 3.0) if t2 <= t1
                              for b1 in b1_values], dtype=torch.float64)
        with torch.no_grad():
            ref, got = exact.simulate(theta).imag, trial.simulate(theta).imag
        return float(((got - ref).abs().amax(1) / ref.abs().amax(1)).max())

    # ---- sequence design (SignalModel.signal_for_sequence; docs/design.md) ---------------
    # The signal is i times the EPG echoes, which are analytic in T1, T2 and B1.
    real_signal_phase = 1j
    analytic_in_theta = True

    def signal_for_sequence(self, theta: torch.Tensor, played) -> torch.Tensor:
        """The signal [N, T] at ``theta`` [N, P] (real, or complex for the complex step) when
        the model plays the flip angles and TRs of ``played`` (tensors [T], rad and s; TE and
        TI are the model's sequence's), by :func:`epg_echoes`: plain tensor operations,
        differentiable in both."""
        p = self.full_parameters(theta)
        seq = self.sequence
        echoes = epg_echoes(p["T1"], p["T2"], p["B1"], played["flip"], played["TR"], seq.TE,
                            seq.TI, self.n_states)
        return 1j * echoes


def _rows(x: torch.Tensor, n_rows: int) -> torch.Tensor:
    """The first ``n_rows`` orders (dimension −2) of x, zero orders appended where x has fewer."""
    if x.shape[-2] >= n_rows:
        return x[..., :n_rows, :]
    pad = x.new_zeros(*x.shape[:-2], n_rows - x.shape[-2], x.shape[-1])
    return torch.cat((x, pad), -2)


def epg_signal(T1: torch.Tensor, T2: torch.Tensor, B1: torch.Tensor | float,
               flip: torch.Tensor, tr: torch.Tensor, TE: float, TI: float, n_states: int
               ) -> torch.Tensor:
    """The FISP signal [N, T] (complex, M0 = 1) by the EPG recursion above, in plain tensor
    operations: differentiable by any autodiff in the tissue (T1, T2 [N], s; B1 [N] or a number)
    and in the schedule (flip [T], rad; tr [T], s) — sequence design differentiates it in flip
    and TR. ``n_states`` EPG orders 0 … n_states − 1 are kept (``(T + 1) // 2`` or more is
    exact); at TR n only orders that can still reach an echo are updated (same result)."""
    echoes = epg_echoes(T1, T2, B1, flip, tr, TE, TI, n_states)
    return torch.complex(torch.zeros_like(echoes), echoes)


def epg_echoes(T1: torch.Tensor, T2: torch.Tensor, B1: torch.Tensor | float,
               flip: torch.Tensor, tr: torch.Tensor, TE: float, TI: float, n_states: int
               ) -> torch.Tensor:
    """``Im F⁺₀`` at every echo, [N, T], for the arguments of :func:`epg_signal` — the signal is
    ``i`` times it. Analytic in T1, T2 and B1: complex values of them are accepted, which
    gives derivatives by the complex step (exact to round-off, no subtraction)."""
    return _epg(T1, T2, B1, flip, tr, TE, TI, n_states, ())[0]


def epg_signal_and_jacobian(T1: torch.Tensor, T2: torch.Tensor, B1: torch.Tensor | float,
                            flip: torch.Tensor, tr: torch.Tensor, TE: float, TI: float,
                            n_states: int, directions: tuple[str, ...] = ("T1", "T2")
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`epg_signal`'s imaginary part s [N, T] and its derivatives [D, N, T] along
    ``directions`` (a subset of T1, T2, B1, in that order; B1 must then be a tensor), by
    forward-mode tangents carried through the same tensor recursion — one pass, plain batched
    operations (the Jacobian route on CUDA)."""
    out = _epg(T1, T2, B1, flip, tr, TE, TI, n_states, tuple(directions))
    return out[0], out[1:]


def _epg(T1, T2, B1, flip, tr, TE, TI, n_states, directions):
    """The recursion, with the state and its tangents along ``directions`` stacked in a
    leading dimension ([1 + D, orders, N]); returns [1 + D, N, T]: Im f, then ∂(Im f)/∂d."""
    T1, T2 = T1[None, :], T2[None, :]                                     # [1, N]
    dtype, device = T1.dtype, T1.device
    n_tr = flip.shape[0]
    flip, tr = flip[:, None], tr[:, None]                                 # [T, 1]
    # A fixed B1 keeps the RF coefficients per TR ([T, 1]) instead of per voxel ([T, N]).
    alpha = flip * (B1[None, :] if torch.is_tensor(B1) else B1)
    cos_a, sin_a = torch.cos(alpha), torch.sin(alpha)
    cos2, sin2 = 0.5 * (1 + cos_a), 0.5 * (1 - cos_a)     # cos²(α/2), sin²(α/2)
    half_sin = 0.5 * sin_a
    E2_te = torch.exp(-TE / T2)                            # [1, N]: decay until the echo
    E1_tr, E2_tr = torch.exp(-tr / T1), torch.exp(-tr / T2)   # [T, N]: over a whole TR
    recovery = 1 - E1_tr
    # Tangents: one row per direction after the state's; unit[d] selects row d (forcing terms
    # enter only there). ∂E/∂T = E·t/T²; ∂(RF coefficients)/∂B1 = their α-derivative × flip.
    rows = {name: 1 + j for j, name in enumerate(directions)}
    unit = torch.eye(1 + len(directions), dtype=dtype, device=device)[:, :, None, None]
    z = (1 - 2 * torch.exp(-TI / T1)) * unit[0]           # ideal inversion, recovery for TI
    if "T1" in rows:
        z = z + (-2 * torch.exp(-TI / T1) * TI / T1 ** 2) * unit[rows["T1"]]
        dE1_tr = E1_tr * tr / T1 ** 2
    if "T2" in rows:
        dE2_te, dE2_tr = E2_te * TE / T2 ** 2, E2_tr * tr / T2 ** 2
    if "B1" in rows:
        d_cos2, d_half_sin = -0.5 * sin_a * flip, 0.5 * cos_a * flip
        d_sin_a, d_cos_a = cos_a * flip, -sin_a * flip

    # Live orders 0 … m-1 at TR n (see the module docstring); the state tensors hold them.
    live = [min(n, n_tr - 1 - n, n_states - 1) + 1 for n in range(n_tr)]
    order0 = torch.zeros(max(live), 1, dtype=dtype, device=device)
    order0[0] = 1
    states_dtype = torch.promote_types(E1_tr.dtype, cos_a.dtype)   # complex under a complex step
    f_plus = torch.zeros(1 + len(directions), 1, T1.shape[1], dtype=states_dtype, device=device)
    f_minus = f_plus
    out = []
    for n in range(n_tr):
        m = live[n]
        f_plus, f_minus, z = _rows(f_plus, m), _rows(f_minus, m), _rows(z, m)
        # RF about x. It conserves F⁺ + F⁻, which gives the new f⁻ almost for free.
        f_rf = cos2[n] * f_plus + sin2[n] * f_minus - sin_a[n] * z
        z_rf = half_sin[n] * (f_plus - f_minus) + cos_a[n] * z
        if "B1" in rows:
            p, q, zz = f_plus[0], f_minus[0], z[0]
            f_rf = f_rf + unit[rows["B1"]] * (d_cos2[n] * (p - q) - d_sin_a[n] * zz)
            z_rf = z_rf + unit[rows["B1"]] * (d_half_sin[n] * (p - q) + d_cos_a[n] * zz)
        f_minus, z = f_plus + f_minus - f_rf, z_rf
        echo = f_rf[:, 0] * E2_te[0]                       # F⁺₀ at TE, relaxed until then
        if "T2" in rows:
            echo = echo + unit[rows["T2"], :, 0] * (f_rf[0, 0] * dE2_te[0])
        out.append(echo)
        # Relaxation over the whole TR (TE, then TR − TE, combined).
        relaxed_f, relaxed_m = f_rf * E2_tr[n], f_minus * E2_tr[n]
        z_new = z * E1_tr[n] + (recovery[n] * order0[:m]) * unit[0]
        if "T2" in rows:
            relaxed_f = relaxed_f + unit[rows["T2"]] * (f_rf[0] * dE2_tr[n])
            relaxed_m = relaxed_m + unit[rows["T2"]] * (f_minus[0] * dE2_tr[n])
        if "T1" in rows:
            z_new = z_new + unit[rows["T1"]] * ((z[0] - order0[:m]) * dE1_tr[n])
        f_rf, f_minus, z = relaxed_f, relaxed_m, z_new
        # Dephase one order: F+ moves up, F- moves down, F+_0 = conj(F-_0); orders beyond
        # n_states − 1 are dropped.
        f_minus = f_minus[:, 1:]
        f_plus = torch.cat((-_rows(f_minus[:, :1], 1), f_rf[:, :n_states - 1]), 1)
    return torch.stack(out, -1)                            # [1 + D, N, T]
