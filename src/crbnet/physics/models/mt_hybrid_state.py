"""Two-pool magnetization transfer in the hybrid state of free precession (docs/physics.md §1).

Free pool (fraction 1 − m0s) is tracked by its radius ``r_f`` along the instantaneous
steady-state direction, the semi-solid pool by its longitudinal ``z_s``. The sequence control θ
is the polar angle of the spin-locked free-pool magnetization — half the flip angle α of the
alternating pulses (θ = α/2; the RF amplitude is ω1 = 2θ/TRF), not the flip angle itself.
Within one TR θ and the pulse duration TRF are constant, so ``y = (r_f, z_s)`` obeys an affine 2×2 ODE
``dy/dt = A y + b``:

    A = [[-(c²/T1f + s²/T2f + c²·Rx·m0s),  Rx·(1−m0s)·c            ],
         [ Rx·m0s·c,                       -(1/T1s + Rx·(1−m0s) + W)]]
    b = [(1−m0s)·c/T1f,  m0s/T1s],   c = cos(B1·θ), s = sin(B1·θ)
    W = k_RF · (B1·θ)² · T2s / (TRF · TR)

Its flow over a time h is ``y(h) = E (y(0) − y∞) + y∞`` with ``E = exp(A h)`` and
``y∞ = −A⁻¹ b``. Write ``A h = μ I + M`` with ``μ = tr(A) h / 2`` and M traceless; then
``M² = x I`` with ``x = ((A11 − A22) h / 2)² + A12·A21·h²``. The off-diagonal product
``Rx²·m0s·(1−m0s)·c²`` is ≥ 0, so x ≥ 0, A has real eigenvalues and, with r = √x,

    E = e^μ (cosh(r) I + sinh(r)/r · M)

— a closed form instead of a generic matrix exponential. ``det A > 0`` always (both pools
relax), so ``y∞`` exists.

Time convention: θ_n, TRF_n hold on [n·TR, (n+1)·TR); sample n is
``M0 · r_f((n + ½)·TR) · sin(B1·θ_n)`` (echo at TR/2). A cycle is the whole train; at its start
an inversion pulse of duration T_inv maps ``r_f → −r_f`` and
``z_s → z_s · (1 − π²·T2s/T_inv)``.

Periodic steady state, solved exactly: the state at mid-TR n is affine in the state ``z₀`` at
mid-TR 0, ``y_n = L_n z₀ + v_n``; the prefix maps ``(L_n, v_n)`` come from a scan over the
train, the cycle closes through the inversion, and ``z₀`` solves a 2×2 linear system. No cycles
are iterated.

Implementation (speed only; the physics is all above): the periodic steady state and its
derivatives in plain tensor operations (any device, every autodiff mode) are in
:mod:`crbnet.physics.models.mt_steady_state`, on the prefix scans of 2×2 affine maps in
:mod:`._mt_scan`. On CPU, where no autodiff is tracking the input, ``simulate``, the Jacobian
and the CRB take a compiled route instead (kernel in :mod:`._mt_kernel`; see
:meth:`MTHybridState.explicit_signal_and_jacobian`): the same value pass and forward-mode
rule, one voxel at a time with the state and its tangents in registers, along the eight
voxel rows, beta and B1, chained to the parameters by
:meth:`MTHybridState._voxel_row_derivatives`. The tensor version streams ``[T, N]`` tangents
through memory and is bound by that; for the CRB the kernel is ~12× faster. Both are tested
against each other. ``use_compiled_kernel = False`` forces the tensor code.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from crbnet.physics import sequences as seqs
from crbnet.physics.models import _mt_kernel, _mt_segments, _numba
from crbnet.physics.models.base import ModelOption, ParameterSpec, SignalModel
from crbnet.physics.models.mt_steady_state import _FreePoolSteadyState, steady_state_signal


class MTHybridState(SignalModel):
    """Two-pool MT in the hybrid state; the sequence's θ is half the flip angle (the polar angle
    of the spin-locked free-pool magnetization).

    It plays 'mt' sequences (θ, TRF per TR; one cycle) and 'segmented' ones (α, TRF per pulse,
    several segments). Each segment is simulated as its own hybrid-state cycle and the signals
    are concatenated in segment order; a segment maps to an 'mt' cycle by θ = α/2 per pulse,
    its first pulse — which must be its only inversion, an ideal π pulse — becomes the cycle's
    inversion with T_inv = that pulse's TRF, and the inversion's own TR takes the following
    pulse's θ and TRF: the model's inversion is instantaneous and flips the spin-locked free
    pool along its own axis, so the spin lock continues through that TR. k_RF is the default
    (docs/physics.md, "Segmented sequences"). The RF phase must alternate (increment π). The
    option ``TR`` supplies the repetition time of a segmented sequence that gives none.
    """

    name = "mt_hybrid_state"
    sequence_kind = "mt"
    sequence_kinds = ("mt", "segmented")
    options = (ModelOption("TR", float, 0.0,
                           "repetition time (s) of a segmented sequence whose file gives none "
                           "(e.g. 3.5e-3); 0: the sequence's own"),)
    # Training ranges deliberately leave out the phantom's CSF (m0s = 0, T1f ≈ 4 s, T2f ≈ 2 s):
    # with no semi-solid pool the signal does not depend on Rx, T1s or T2s, the Fisher matrix
    # is singular and their CRB infinite, so neither a CRB-normalized loss nor a CRB-based
    # evaluation is defined there. CSF voxels come out flagged (at the range edge) by apply.
    specs = (
        ParameterSpec("m0s", "", (0.0, 0.7), (0.02, 0.3), 0.15, False,
                      "semi-solid (macromolecular) pool fraction"),
        ParameterSpec("T1f", "s", (0.05, 10.0), (0.5, 3.0), 1.2, True,
                      "longitudinal relaxation time of the free pool"),
        ParameterSpec("T2f", "s", (0.005, 3.0), (0.02, 0.2), 0.07, True,
                      "transverse relaxation time of the free pool"),
        ParameterSpec("Rx", "1/s", (0.0, 300.0), (5.0, 60.0), 30.0, False,
                      "exchange rate between the pools"),
        ParameterSpec("T1s", "s", (0.05, 10.0), (0.3, 3.0), 1.0, True,
                      "longitudinal relaxation time of the semi-solid pool"),
        ParameterSpec("T2s", "s", (1e-6, 1e-3), (5e-6, 20e-6), 12e-6, False,
                      "transverse relaxation time of the semi-solid pool"),
        ParameterSpec("B1", "", (0.3, 2.0), (0.7, 1.3), 1.0, False,
                      "relative transmit scale (multiplies θ and the flip angle 2θ)", map_name="TB1map"),
    )
    default_fixed = {"B1": 1.0}
    # Found by measurement (docs/training.md lists what was tried).
    training_defaults = {"data": {"batch_size": 256, "batches_per_epoch": 200, "pool_size": 8192,
                                  "pool_refresh": 512, "val_size": 1024},
                         "net": {"width": 256, "depth": 4},
                         "optim": {"epochs": 40, "lr": 1e-3}}
    # Voxels per pass of :meth:`_simulate` and per chunk in crbnet.crb: the [T, N] temporaries
    # (×(P+1) under forward-mode autodiff) must stay cache-sized; larger chunks are several times
    # slower on CPU. Results do not depend on either.
    chunk_size = 512
    crb_chunk_size = 512
    # The compiled CPU kernel for simulate, the Jacobian and the CRB where no autodiff is
    # tracking the input (see _compiled_applies); False: always the tensor code.
    use_compiled_kernel = True

    def __init__(self, sequence: seqs.MTSequence | seqs.SegmentedSequence | None = None,
                 fixed=None, TR: float = 0.0) -> None:
        super().__init__(sequence, fixed)
        # The sequence carries the TR in use: a recorded model rebuilds from it alone.
        self.sequence = seqs.resolve_tr(self.sequence, TR)
        self.TR = float(TR)
        self._cache: dict[tuple, tuple] = {}
        #: One model per segment of a segmented sequence (each an 'mt' cycle), else None.
        self._segments: list[MTHybridState] | None = None
        if self.sequence.kind == "segmented":
            self._segments = [MTHybridState(part, fixed=self.fixed) for part in
                              _mt_segments.segment_sequences(self.sequence, self.name)]

    def _segment_models(self) -> list["MTHybridState"]:
        """The per-segment models, with this model's numerical settings."""
        for part in self._segments:
            part.use_compiled_kernel, part.chunk_size = self.use_compiled_kernel, self.chunk_size
        return self._segments

    @classmethod
    def default_sequence(cls) -> seqs.MTSequence:
        return seqs.default_mt_sequence()

    def _sequence_columns(self, dtype: torch.dtype, device: torch.device
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(θ, θ²/TRF)`` as [T, 1] columns, cached per (sequence, dtype, device)."""
        seq = self.sequence
        key = (id(seq), dtype, device)
        entry = self._cache.get(key)
        if entry is not None and entry[0] is seq:           # (a new object may reuse an id)
            return entry[1]
        # Made outside any inference_mode so that autograd can use the cache later on.
        with torch.inference_mode(False):
            tensors = tuple(torch.as_tensor(col[:, None], dtype=dtype, device=device)
                            for col in (seq.theta, seq.theta ** 2 / seq.TRF))
        self._cache = {key: (seq, tensors)}                 # a model runs on one device at a time
        return tensors

    def _simulate(self, p: dict[str, torch.Tensor]) -> torch.Tensor:
        if self._segments is not None:
            return torch.cat([part._simulate(p) for part in self._segment_models()], -1)
        if self._compiled_applies(*p.values()):
            # Computed in float64 whatever the dtype (it costs the kernel nothing extra).
            signal = self._run_kernel(p)[0].to(p["m0s"].dtype)
            return torch.complex(signal, torch.zeros_like(signal))
        n = p["m0s"].shape[0]
        if n <= self.chunk_size:
            return self._simulate_chunk(p)
        return torch.cat([self._simulate_chunk({k: v[i:i + self.chunk_size] for k, v in p.items()})
                          for i in range(0, n, self.chunk_size)])

    def _simulate_chunk(self, p: dict[str, torch.Tensor]) -> torch.Tensor:
        rows, beta = self._voxel_rows(p)
        theta, w0 = self._sequence_columns(rows[0].dtype, rows[0].device)
        if "B1" in self.fixed:
            B1 = torch.full((1, 1), self.fixed["B1"], dtype=theta.dtype, device=theta.device)
        else:
            B1 = p["B1"][None, :]
        # [T, N], mid-TR 0 .. T-1
        r_f = _FreePoolSteadyState.apply(*rows, beta, B1, theta, w0, "B1" not in self.fixed)[0]
        signal = (r_f * torch.sin(theta * B1)).T                         # [N, T]
        return torch.complex(signal, torch.zeros_like(signal))

    def explicit_signal_and_jacobian(self, theta: torch.Tensor
                                     ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Signal [N, T] and Jacobian columns [P, N, T] from the compiled kernel
        (:mod:`._mt_kernel`): CPU, float64, outside autodiff only; None otherwise (then
        crbnet.crb takes the torch.func route through :meth:`simulate`). Set
        ``use_compiled_kernel = False`` to force that route. The signal is real, so both come
        back as real float64 tensors (the imaginary parts are zero)."""
        out = self._explicit(theta, jacobian=True)
        return None if out is None else (out[0], out[1])

    def explicit_real_gram(self, theta: torch.Tensor) -> torch.Tensor | None:
        """Gram matrix [N, P+1, P+1] of (∂f/∂θ_1, …, ∂f/∂θ_P, f) from the compiled kernel, the
        Jacobian never stored; None where :meth:`explicit_signal_and_jacobian` is None."""
        out = self._explicit(theta, gram=True)
        return None if out is None else out[2]

    def _explicit(self, theta: torch.Tensor, **outputs: bool) -> tuple | None:
        """:meth:`_run_kernel` for estimated parameters ``theta`` in float64, or None where the
        compiled route does not apply."""
        if theta.dtype != torch.float64 or not self._compiled_applies(theta):
            return None
        if self._segments is not None:
            return _mt_segments.concatenated(
                [part._explicit(theta, **outputs) for part in self._segment_models()],
                _mt_segments.KERNEL_OUTPUTS)
        return self._run_kernel(self.full_parameters(theta.detach()), **outputs)

    def _compiled_applies(self, *tensors: torch.Tensor) -> bool:
        """Whether the compiled kernel may replace the tensor code for these inputs: enabled,
        numba installed, CPU tensors that no autodiff is tracking (autograd, forward-mode dual
        tensors, torch.func transforms — the kernel's numbers carry no derivative)."""
        return (self.use_compiled_kernel and _mt_kernel.available()
                and _numba.untracked_cpu(*tensors))

    def _run_kernel(self, p: dict[str, torch.Tensor], jacobian: bool = False,
                    gram: bool = False) -> tuple:
        """(signal [N, T] — None when only the Gram matrix is asked for —, Jacobian [P, N, T]
        or None, Gram [N, P+1, P+1] or None), float64, from the full parameter set ``p``
        (detached CPU tensors)."""
        seq = self.sequence
        p = {k: v.detach().to(torch.float64) for k, v in p.items()}
        n, n_par, T = p["m0s"].shape[0], self.n_parameters, seq.n_timepoints
        # The Gram route does not need the signal itself: [N, T] would be a large temporary.
        signal = torch.empty(n, T, dtype=torch.float64) if not gram or jacobian else None
        jac = torch.empty(n_par, n, T, dtype=torch.float64) if jacobian else None
        G = torch.empty(n, n_par + 1, n_par + 1, dtype=torch.float64) if gram else None
        if n == 0:
            return signal, jac, G
        rows, beta = self._voxel_rows(p)
        b1_free = "B1" not in self.fixed
        # How the rows, beta and B1 move along each estimated parameter.
        chain = torch.zeros(n, _mt_kernel.N_DIRECTIONS, n_par, dtype=torch.float64)
        if jacobian or gram:
            d_rows = self._voxel_row_derivatives(p)              # [N, 9, 7]
            for j, name in enumerate(self.parameters):
                chain[:, :9, j] = d_rows[:, :, self._ALL.index(name)]
            if b1_free:
                chain[:, 9, self.parameters.index("B1")] = 1.0
        _mt_kernel.signal_and_jacobian(
            torch.cat(rows).T.contiguous().numpy(), beta.contiguous().numpy(),
            p["B1"].contiguous().numpy(), chain.numpy(), *self._kernel_sequence(), b1_free,
            None if signal is None else signal.numpy(), None if jac is None else jac.numpy(),
            None if G is None else G.numpy())
        return signal, jac, G

    def _kernel_sequence(self) -> tuple[np.ndarray, np.ndarray]:
        """The cached sequence columns ``(θ, θ²/TRF)`` as float64 arrays [T] for the kernel."""
        theta, w0 = self._sequence_columns(torch.float64, torch.device("cpu"))
        return theta[:, 0].numpy(), w0[:, 0].numpy()

    _ALL = ("m0s", "T1f", "T2f", "Rx", "T1s", "T2s", "B1")

    def _voxel_row_derivatives(self, p: dict[str, torch.Tensor]) -> torch.Tensor:
        """∂(rows, beta)/∂(m0s, T1f, T2f, Rx, T1s, T2s, B1) per voxel, [N, 9, 7]: the
        derivatives of the expressions in :meth:`_voxel_rows` (B1 enters only through the
        sequence columns, so its column is zero; checked against autodiff in the tests)."""
        seq = self.sequence
        h = 0.5 * seq.TR
        m0s, T1f, T2f, Rx, T1s, T2s = (p[k] for k in self._ALL[:6])
        out = torch.zeros(m0s.shape[0], 9, 7, dtype=m0s.dtype, device=m0s.device)
        M0S, T1F, T2F, RX, T1S, T2S = range(6)
        out[:, 0, M0S], out[:, 0, T1F], out[:, 0, RX] = -Rx * h, h / T1f ** 2, -m0s * h  # k_c2
        out[:, 1, T2F] = h / T2f ** 2                                                   # k_s2
        out[:, 2, T2S] = -seq.k_RF * h / seq.TR                                         # k_w
        out[:, 3, M0S], out[:, 3, RX], out[:, 3, T1S] = -Rx * h, (1 - m0s) * h, -h / T1s ** 2
        out[:, 4, M0S], out[:, 4, RX] = -Rx * h, (1 - m0s) * h                          # x_f
        out[:, 5, M0S], out[:, 5, RX] = Rx * h, m0s * h                                 # x_s
        out[:, 6, M0S], out[:, 6, T1F] = -h / T1f, -(1 - m0s) * h / T1f ** 2             # k_b
        out[:, 7, M0S], out[:, 7, T1S] = h / T1s, -m0s * h / T1s ** 2                    # b2
        out[:, 8, T2S] = -math.pi ** 2 / seq.T_inv                                      # beta
        return out

    def _voxel_rows(self, p: dict[str, torch.Tensor]):
        """Per-voxel rows [1, N] whose products with the sequence columns make ``A h`` and
        ``b h`` over half a TR (see :func:`_entries`), and the inversion's z_s factor beta [N].

        ``a11 = k_c2·cos²α + k_s2·sin²α``, ``a22 = k_w·w − k_0``, ``a12 = x_f·cos α``,
        ``a21 = x_s·cos α``, ``b1 = k_b·cos α``, b2 per voxel; α = B1·θ, w = α²/TRF."""
        seq = self.sequence
        h = 0.5 * seq.TR                                   # half a TR: TR start -> echo -> TR end
        m0s, T1f, T2f, Rx, T1s, T2s = (p[k][None, :] for k in
                                       ("m0s", "T1f", "T2f", "Rx", "T1s", "T2s"))
        x_f = Rx * (1 - m0s) * h                           # exchange, times h
        rows = (-(1 / T1f + Rx * m0s) * h,                 # k_c2
                -h / T2f,                                  # k_s2
                -seq.k_RF * h / seq.TR * T2s,              # k_w: W = k_RF·α²·T2s/(TRF·TR)
                h / T1s + x_f,                             # k_0
                x_f,
                Rx * m0s * h,                              # x_s
                (1 - m0s) * h / T1f,                       # k_b
                m0s * h / T1s)                             # b2
        beta = 1 - math.pi ** 2 * T2s[0] / seq.T_inv
        return rows, beta

    # ---- sequence design (SignalModel.signal_for_sequence; docs/design.md) ---------------
    real_signal_phase = 1.0

    def signal_for_sequence(self, theta: torch.Tensor, played) -> torch.Tensor:
        """The signal [N, T] (complex, imaginary part zero) at ``theta`` [N, P] when the model
        plays θ and TRF from ``played`` (tensors [T], rad and s; TR, T_inv and k_RF are the
        model's sequence's) — or, on a segmented sequence, α and TRF ([S, n], mapped per
        segment as :mod:`._mt_segments` does; the inversions are the sequence's) — by
        :func:`steady_state_signal`: plain tensor operations, differentiable in both."""
        if self._segments is not None:
            parts = []
            for s, part in enumerate(self._segment_models()):
                angle, trf = _mt_segments.cycle_trains(played["alpha"][s], played["TRF"][s])
                parts.append(part.signal_for_sequence(theta, {"theta": angle, "TRF": trf}))
            return torch.cat(parts, -1)
        p = self.full_parameters(theta)
        rows, beta = self._voxel_rows(p)
        angle = played["theta"][:, None]
        signal = steady_state_signal(rows, beta, p["B1"][None, :], angle,
                                     angle ** 2 / played["TRF"][:, None])
        return torch.complex(signal, torch.zeros_like(signal))
