"""Two-pool magnetization transfer by the linear approximation of the generalized Bloch model
(docs/physics.md), on segmented rectangular-pulse sequences.

The free pool follows the Bloch equations with exchange; the semi-solid pool's transverse
magnetization, which lives only during a pulse, relaxes at the rate R2sl for which a two-state
Bloch system reproduces the longitudinal magnetization that the generalized Bloch equation with
the chosen lineshape leaves at the end of that pulse (:mod:`crbnet.physics.r2sl`). The
equations, the TR structure, the inversion pulses and the periodic boundary condition are in
:mod:`.gbloch_steady_state`; the conventions (axes, RF phase increment π, echo at TR/2,
inversion pulses) are those of MRIgeneralizedBloch.jl 0.8.7's linear approximation, so that
parameters and sequences carry over between the two.

Parameters: m0s, T1f, T2f, Rx, T1s, T2s and the nuisance parameters B1 (relative transmit
field) and ``omega0`` (off-resonance, rad/s), both estimated by default (real data need them);
the complex M0 is a nuisance parameter as everywhere. ``omega0`` is bounded by ±π/TR: the
signal of a balanced train with RF phase increment π repeats (nearly) with a period of 2π/TR
in ω0, so larger values are not identifiable.

Two routes compute the same numbers: the tensor route (:mod:`.gbloch_steady_state`: matrix
exponentials and a logarithmic scan, any device and autodiff) and, on CPU where no autodiff
tracks the input, a compiled kernel with forward-mode tangents (:mod:`._gbloch_kernel`).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch

from crbnet.physics import sequences as seqs
from crbnet.physics.models import _gbloch_kernel, _numba
from crbnet.physics.models import gbloch_steady_state as gss
from crbnet.physics.models.base import ModelError, ModelOption, ParameterSpec, SignalModel

#: Semi-solid lineshapes the model offers (``--model-option lineshape=...``).
LINESHAPES = ("super_lorentzian", "lorentzian", "gaussian")


def default_sequence() -> seqs.SegmentedSequence:
    """One segment made from crbnet's designed hybrid-state MT train (666 TRs of 4.5 ms): flip
    angles α = 2θ with the same pulse durations, the first pulse replaced by an inversion
    pulse (π in 500 µs, 23.5 µT)."""
    mt = seqs.default_mt_sequence()
    alpha, trf = 2 * np.abs(mt.theta), mt.TRF.copy()
    alpha[0], trf[0] = math.pi, 500e-6
    return seqs.SegmentedSequence(alpha=alpha[None], TRF=trf[None], TR=mt.TR)


class MTGeneralizedBloch(SignalModel):
    """Two-pool MT, linear approximation of the generalized Bloch model (super-Lorentzian,
    Lorentzian or Gaussian semi-solid lineshape), with B1 and off-resonance ω0."""

    name = "mt_generalized_bloch"
    sequence_kind = "segmented"
    specs = (
        ParameterSpec("m0s", "", (0.0, 0.7), (0.02, 0.35), 0.15, False,
                      "semi-solid (macromolecular) pool fraction"),
        ParameterSpec("T1f", "s", (0.05, 10.0), (0.4, 4.0), 1.8, True,
                      "longitudinal relaxation time of the free pool"),
        ParameterSpec("T2f", "s", (0.005, 3.0), (0.02, 0.2), 0.075, True,
                      "transverse relaxation time of the free pool"),
        ParameterSpec("Rx", "1/s", (0.0, 300.0), (5.0, 40.0), 16.0, False,
                      "exchange rate between the pools"),
        ParameterSpec("T1s", "s", (0.05, 10.0), (0.15, 1.5), 0.34, True,
                      "longitudinal relaxation time of the semi-solid pool"),
        ParameterSpec("T2s", "s", (5e-6, 25e-6), (7e-6, 18e-6), 12e-6, False,
                      "transverse relaxation time of the semi-solid pool"),
        ParameterSpec("B1", "", (0.3, 1.5), (0.6, 1.3), 1.0, False,
                      "relative transmit field (multiplies every flip angle)",
                      map_name="TB1map"),
        ParameterSpec("omega0", "rad/s", (-1e4, 1e4), (-1e3, 1e3), 0.0, False,
                      "off-resonance frequency (bounded by ±π/TR for the sequence's TR)"),
    )
    default_fixed: dict[str, float] = {}
    options = (
        ModelOption("lineshape", str, "super_lorentzian",
                    "semi-solid lineshape: super_lorentzian, lorentzian or gaussian"),
        ModelOption("TR", float, 0.0, "repetition time (s) for sequence files that give "
                    "none; 0: the sequence's own"),
    )
    training_defaults = {"data": {"batch_size": 256, "batches_per_epoch": 100, "pool_size": 4096,
                                  "pool_refresh": 256, "val_size": 512},
                         "net": {"width": 256, "depth": 4},
                         "optim": {"epochs": 40, "lr": 1e-3}}
    #: Voxels per pass of the tensor route (its [N, T, 6, 6] temporaries must stay small).
    chunk_size = 32
    crb_chunk_size = 32
    #: The compiled CPU kernel where no autodiff tracks the input; False: tensor code only.
    use_compiled_kernel = True

    def __init__(self, sequence: seqs.SegmentedSequence | None = None, fixed=None,
                 lineshape: str = "super_lorentzian", TR: float = 0.0) -> None:
        if lineshape not in LINESHAPES:
            raise ModelError(f"unknown lineshape {lineshape!r}; choose one of "
                             f"{', '.join(LINESHAPES)}")
        self.lineshape, self.TR = lineshape, float(TR)
        if sequence is None:
            sequence = self.default_sequence()
        sequence = seqs.resolve_tr(sequence, self.TR)
        tr = sequence.require_tr()
        bound = math.pi / tr
        # ω0's bounds depend on the sequence's TR, so this instance carries its own specs.
        self.specs = tuple(
            replace(s, bounds=(-bound, bound), train_range=(-bound, bound))
            if s.name == "omega0" else s for s in type(self).specs)
        super().__init__(sequence, fixed)

    @classmethod
    def default_sequence(cls) -> seqs.SegmentedSequence:
        return default_sequence()

    # ---- R2sl -------------------------------------------------------------------------------
    def r2sl_tensor(self, alpha: torch.Tensor, TRF: torch.Tensor, B1: torch.Tensor,
                    T2s: torch.Tensor) -> torch.Tensor:
        """R2sl (1/s) for pulses (α rad, TRF s) and voxels (B1, T2s s), broadcast, in plain
        tensor operations (differentiable in every argument)."""
        if self.lineshape == "lorentzian":
            # The generalized Bloch model of a Lorentzian line is the Bloch model itself.
            return (1 / T2s) * torch.ones_like(alpha * TRF * B1)
        from crbnet.physics import r2sl

        return r2sl.r2sl_torch(r2sl.get_table(self.lineshape), TRF, alpha, B1, T2s)

    # ---- physics ---------------------------------------------------------------------------
    def _rates(self, p: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Voxel parameters as [N, 1] columns, relaxation times as rates (the names of the
        compiled kernel's directions, ``_gbloch_kernel.DIRECTIONS``)."""
        col = {k: v[:, None] for k, v in p.items()}
        return {"m0s": col["m0s"], "R1f": 1 / col["T1f"], "R2f": 1 / col["T2f"],
                "Rx": col["Rx"], "R1s": 1 / col["T1s"], "T2s": col["T2s"], "B1": col["B1"],
                "omega0": col["omega0"]}

    def _simulate(self, p: dict[str, torch.Tensor]) -> torch.Tensor:
        if self._compiled_applies(*p.values()):
            # Computed in float64 whatever the dtype (it costs the kernel nothing extra).
            cdtype = torch.complex128 if p["m0s"].dtype == torch.float64 else torch.complex64
            return self._run_kernel(p)[0].to(cdtype)
        n = p["m0s"].shape[0]
        dtype, device = p["m0s"].dtype, p["m0s"].device
        seq = self.sequence
        played = {k: torch.as_tensor(getattr(seq, k), dtype=dtype, device=device)
                  for k in ("alpha", "TRF")}
        chunks = [self._signal({k: v[i:i + self.chunk_size] for k, v in p.items()}, played)
                  for i in range(0, n, self.chunk_size)]
        return torch.cat(chunks) if chunks else self._signal(p, played)

    def _signal(self, p: dict[str, torch.Tensor], played: dict[str, torch.Tensor]
                ) -> torch.Tensor:
        """Signal [N, S·n] of the full parameter set ``p`` on sequence arrays ``played``."""
        seq = self.sequence
        rates = self._rates(p)
        inversion = torch.as_tensor(seq.inversion, device=played["alpha"].device)
        out = []
        for s in range(played["alpha"].shape[0]):
            alpha, trf = played["alpha"][s], played["TRF"][s]
            R2sl = self.r2sl_tensor(alpha.abs(), trf, rates["B1"], rates["T2s"])
            out.append(gss.segment_signal(alpha, trf, inversion[s], seq.TR, R2sl,
                                          seq.rf_phase_increment, rates))
        return torch.cat(out, 1)

    def signal_for_sequence(self, theta: torch.Tensor, played) -> torch.Tensor:
        """The signal [N, T] at ``theta`` for sequence arrays ``played`` (``alpha``, ``TRF``,
        [S, n] like the model's sequence; inversion flags, TR and phase increment are the
        model's own), differentiable in both."""
        p = self.full_parameters(theta)
        return self._signal(p, {"alpha": played["alpha"], "TRF": played["TRF"]})

    # ---- compiled CPU route ------------------------------------------------------------------
    def explicit_signal_and_jacobian(self, theta: torch.Tensor
                                     ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Signal [N, T] and Jacobian columns [P, N, T] (complex128) from the compiled kernel
        (:mod:`._gbloch_kernel`): CPU, float64, outside autodiff only; None otherwise (then
        crbnet.crb differentiates :meth:`simulate` with torch.func). ``use_compiled_kernel =
        False`` forces that route."""
        out = self._explicit(theta, jacobian=True)
        return None if out is None else (out[0], out[1])

    def explicit_fisher_information(self, theta: torch.Tensor) -> torch.Tensor | None:
        """The Fisher matrix [N, P+2, P+2] (σ = 1, M0 = 1, complex M0 last) from the compiled
        kernel, the Jacobian never stored; None where :meth:`explicit_signal_and_jacobian` is."""
        out = self._explicit(theta, fisher=True)
        return None if out is None else out[2]

    def explicit_signal_and_fisher(self, theta: torch.Tensor
                                   ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The signal and the Fisher matrix of :meth:`explicit_fisher_information` from one
        kernel pass (what ``crbnet apply`` needs)."""
        out = self._explicit(theta, fisher=True, signal=True)
        return None if out is None else (out[0], out[2])

    def _explicit(self, theta: torch.Tensor, **outputs: bool) -> tuple | None:
        if theta.dtype != torch.float64 or not self._compiled_applies(theta):
            return None
        return self._run_kernel(self.full_parameters(theta.detach()), **outputs)

    def _compiled_applies(self, *tensors: torch.Tensor) -> bool:
        """Whether the compiled kernel may replace the tensor code for these inputs: enabled,
        numba installed, CPU tensors that no autodiff tracks."""
        return (self.use_compiled_kernel and _gbloch_kernel.available()
                and _numba.untracked_cpu(*tensors))

    #: Kernel direction of each parameter (times −R² for relaxation times: ∂/∂T = −R²·∂/∂R).
    _DIRECTION = {"m0s": 0, "T1f": 1, "T2f": 2, "Rx": 3, "T1s": 4, "T2s": 5, "B1": 6,
                  "omega0": 7}
    #: Voxels per kernel call: bounds the [N, S, n] R2sl arrays.
    _KERNEL_CHUNK = 256

    def _run_kernel(self, p: dict[str, torch.Tensor], jacobian: bool = False,
                    fisher: bool = False, signal: bool = False) -> tuple:
        """(signal [N, T] — None when only the Fisher matrix is asked for —, Jacobian
        [P, N, T] or None, Fisher [N, P+2, P+2] or None), complex128 / float64, from the full
        parameter set ``p`` (detached CPU tensors)."""
        seq = self.sequence
        p = {k: v.detach().to(torch.float64) for k, v in p.items()}
        n, T = p["m0s"].shape[0], seq.n_timepoints
        names = self.parameters
        want_signal = signal or not fisher or jacobian
        signal = torch.empty(n, T, dtype=torch.complex128) if want_signal else None
        jac = torch.empty(len(names), n, T, dtype=torch.complex128) if jacobian else None
        F = torch.empty(n, len(names) + 2, len(names) + 2, dtype=torch.float64) if fisher \
            else None
        columns = self._rates(p)
        rates = torch.cat([columns[k] for k in _gbloch_kernel.DIRECTIONS], 1)
        factor = {"T1f": -rates[:, 1] ** 2, "T2f": -rates[:, 2] ** 2, "T1s": -rates[:, 4] ** 2}
        scale = torch.stack([factor.get(k, torch.ones(n, dtype=torch.float64)) for k in names],
                            1) if names else torch.zeros(n, 0, dtype=torch.float64)
        dirs = np.array([self._DIRECTION[k] for k in names], dtype=np.int64)
        alpha, trf = (np.ascontiguousarray(getattr(seq, k), dtype=np.float64)
                      for k in ("alpha", "TRF"))
        inversion = np.ascontiguousarray(seq.inversion, dtype=np.uint8)
        for i in range(0, n, self._KERNEL_CHUNK):
            part = slice(i, i + self._KERNEL_CHUNK)
            r2sl = self.r2sl_arrays(p["B1"][part], p["T2s"][part], jacobian or fisher)
            _gbloch_kernel.run(
                rates[part].contiguous().numpy(), scale[part].contiguous().numpy(),
                *(a.contiguous().numpy() for a in r2sl), alpha, trf, inversion, seq.TR,
                seq.rf_phase_increment, dirs,
                None if signal is None else torch.view_as_real(signal[part]).numpy(),
                None if jac is None else torch.view_as_real(jac[:, part]).numpy(),
                None if F is None else F[part].numpy())
        return signal, jac, F

    def r2sl_arrays(self, B1: torch.Tensor, T2s: torch.Tensor, derivatives: bool = True
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """R2sl (1/s) of every pulse for voxels (B1 [N], T2s [N] s) and its derivatives in T2s
        and B1 (zeros with ``derivatives=False``), each [N, S, n] float64 — the kernel's only
        contact with the lineshape."""
        seq = self.sequence
        shape = (B1.shape[0],) + seq.alpha.shape
        if self.lineshape == "lorentzian":
            rate = (1 / T2s)[:, None, None].expand(shape)
            return rate, -rate ** 2, torch.zeros(shape, dtype=torch.float64)
        from crbnet.physics import r2sl

        rate, d_t2s, d_b1 = r2sl.r2sl_for_pulses(
            r2sl.get_table(self.lineshape), seq.alpha.reshape(-1), seq.TRF.reshape(-1),
            B1.numpy(), T2s.numpy(), derivatives)
        return tuple(torch.from_numpy(a).reshape(shape) for a in (rate, d_t2s, d_b1))

