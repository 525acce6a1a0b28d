"""What sequence design may change, and how the optimizer's variables map onto a sequence that
respects the hardware limits exactly.

Controls know the sequence kind and the hardware limits, nothing of a model's physics: the
signal comes from the model's ``signal_for_sequence`` (the design contract, docs/design.md),
called with the arrays :meth:`Controls.played` makes.

The optimizer sees a vector ``x`` of numbers in [0, 1] (box bounds only). Each sequence kind has
a :class:`Controls` that maps ``x`` to the played sequence by differentiable tensor operations
built so that *every* ``x`` in the box gives a sequence within the limits — the limits hold by
construction, not by a penalty:

- a flip angle is a fraction of the largest angle the peak-B1 limit allows for its pulse
  duration (ω1 = α/TRF ≤ γ·B1max), capped by the angle bound;
- when the mean RF power exceeds its limit, all flip angles are scaled down by the one factor
  that puts it on the limit (power is quadratic in the angles, so this is exact); segmented
  sequences keep the limit per segment, each its own cycle.

Registered by sequence kind in :data:`CONTROLS`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from crbnet.design.cost import played_signal_and_jacobian
from crbnet.errors import InputError
from crbnet.physics import sequences as seqs
from crbnet.physics.hardware import FISP_DEFAULT_TRF, GAMMA, HardwareLimits
from crbnet.physics.models.base import SignalModel

# Kept off the limits by this relative margin, so that round-off never pushes a designed
# sequence over one.
_MARGIN = 1e-9


def hann_matrix(n_control: int, n_out: int) -> np.ndarray:
    """The linear map [n_out, n_control] of :func:`crbnet.physics.sequences.hann_interpolate`. Its
    rows are convex weights (non-negative, summing to 1), so a box or a linear inequality that
    holds at every control point holds along the whole train."""
    return np.stack([seqs.hann_interpolate(col, n_out) for col in np.eye(n_control)], 1)


def _power_scale(omega1_sq_trf: torch.Tensor, duration: float, power_max: float) -> torch.Tensor:
    """The factor (≤ 1) on every flip angle that brings the mean RF power
    ``Σ ω1²·TRF / duration`` down to ``power_max`` where it is above."""
    power = omega1_sq_trf.sum() / duration
    return torch.clamp(torch.sqrt(power_max / power.clamp_min(1e-300)), max=1.0)


def _pulse_duration(u, limits: HardwareLimits):
    """Pulse durations (s) at fractions ``u`` ∈ [0, 1] of the allowed range, kept off its ends
    by the margin."""
    lo, hi = limits.trf_min * (1 + _MARGIN), limits.trf_max * (1 - _MARGIN)
    return lo + u * max(hi - lo, 0.0)


@dataclass
class DesignSpace:
    """Options shared by every kind: limits, control points, flip-angle cap (rad), whether
    TR is optimized (FISP) and its range (s)."""

    limits: HardwareLimits
    n_control: int = 64
    max_flip: float | None = None
    optimize_tr: bool = False
    tr_range: tuple[float, float] | None = None


class Controls:
    """Base: the optimizer's variables of one sequence kind."""

    kind = ""

    def __init__(self, start: seqs.Sequence, space: DesignSpace) -> None:
        self.start, self.space = start, space

    @property
    def n_variables(self) -> int:
        raise NotImplementedError

    def initial(self) -> np.ndarray:
        """The start sequence's variables, clipped into the box (where the start exceeds a
        limit, the result plays a feasible version of it)."""
        raise NotImplementedError

    def random(self, rng: np.random.Generator) -> np.ndarray:
        """Random variables for a start: uniform in the box."""
        return rng.uniform(0.0, 1.0, self.n_variables)

    def played(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The played sequence's arrays (differentiable in x)."""
        raise NotImplementedError

    def sequence(self, x: np.ndarray) -> seqs.Sequence:
        """The sequence object for variables ``x``."""
        raise NotImplementedError

    def signal_and_jacobian(self, model: SignalModel, played: dict[str, torch.Tensor],
                            points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's signal [N, T] and Jacobian columns [P, N, T] at ``points`` on the played
        sequence, differentiable in ``played`` (the model's ``signal_for_sequence``)."""
        return played_signal_and_jacobian(model, played, points)

    def control_points(self, x: np.ndarray) -> dict[str, list[float]]:
        """The variables in physical units, for the report."""
        raise NotImplementedError


class MTControls(Controls):
    """Hybrid-state MT: θ and TRF at ``n_control`` control points per cycle, Hann-interpolated
    onto the start's TRs (as in the control-point CSV format); TR, number of TRs, inversion and
    k_RF are the start's. Variables: per control point the pulse duration (as a fraction of the
    allowed range) and θ as a fraction of its largest allowed value
    ``min(π/2, ω1max·TRF/2)``."""

    kind = "mt"

    def __init__(self, start: seqs.MTSequence, space: DesignSpace) -> None:
        super().__init__(start, space)
        lim = space.limits
        if lim.trf_max > start.TR:
            raise InputError(f"the longest pulse ({lim.trf_max:g} s) must fit in the TR "
                             f"({start.TR:g} s)")
        if not 2 <= space.n_control <= start.n_timepoints:
            raise InputError(f"--control-points must be between 2 and the number of TRs "
                             f"({start.n_timepoints}), got {space.n_control}")
        self.hann = torch.tensor(hann_matrix(space.n_control, start.n_timepoints))
        self.theta_max = min(math.pi / 2, (space.max_flip or math.pi) / 2) * (1 - _MARGIN)
        self.omega_max = lim.omega_max * (1 - _MARGIN)
        self.power_max = lim.rf_power_max * (1 - _MARGIN)

    @property
    def n_variables(self) -> int:
        return 2 * self.space.n_control

    def _theta_cap(self, trf: torch.Tensor | np.ndarray):
        cap = self.omega_max * trf / 2
        if isinstance(trf, torch.Tensor):
            return torch.clamp(cap, max=self.theta_max)
        return np.minimum(cap, self.theta_max)

    def _trf(self, u):
        return _pulse_duration(u, self.space.limits)

    def initial(self) -> np.ndarray:
        lim = self.space.limits
        H = self.hann.numpy()
        # Least-squares control points of the start's trains.
        theta_cp, trf_cp = np.linalg.lstsq(H, np.stack((np.abs(self.start.theta),
                                                         self.start.TRF), 1), rcond=None)[0].T
        u = np.clip((trf_cp - lim.trf_min) / max(lim.trf_max - lim.trf_min, 1e-300), 0, 1)
        s = np.clip(theta_cp / self._theta_cap(self._trf(u)), 0, 1)
        return np.concatenate((u, s))

    def _trains(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """θ and TRF at the control points and along the train, as played."""
        k = self.space.n_control
        trf_cp = self._trf(x[:k])
        theta_cp = x[k:] * self._theta_cap(trf_cp)
        H = self.hann.to(x.dtype)
        theta, trf = H @ theta_cp, H @ trf_cp
        # ω1 = 2θ/TRF: Σ ω1²·TRF = Σ 4θ²/TRF. Scaling the control points scales the train.
        scale = _power_scale(4 * theta ** 2 / trf, self.start.cycle_duration, self.power_max)
        return theta_cp * scale, trf_cp, theta * scale, trf

    def played(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        _, _, theta, trf = self._trains(x)
        return {"theta": theta, "TRF": trf}

    def sequence(self, x: np.ndarray) -> seqs.MTSequence:
        with torch.no_grad():
            arrays = self.played(torch.as_tensor(x, dtype=torch.float64))
        return seqs.MTSequence(TR=self.start.TR, theta=arrays["theta"].numpy(),
                               TRF=arrays["TRF"].numpy(), T_inv=self.start.T_inv,
                               k_RF=self.start.k_RF)

    def control_points(self, x: np.ndarray) -> dict[str, list[float]]:
        with torch.no_grad():
            theta_cp, trf_cp, _, _ = self._trains(torch.as_tensor(x, dtype=torch.float64))
        return {"theta": theta_cp.tolist(), "TRF": trf_cp.tolist()}


class FISPControls(Controls):
    """FISP MRF: the flip angle of every TR (a fraction of the largest allowed angle), and with
    ``optimize_tr`` every TR within ``tr_range`` with a total no longer than the start's; TE,
    TI and the number of TRs are the start's.
    The largest angle is ``max_flip`` (default: the start's largest), capped by the peak-B1
    limit for the schedule's pulse duration."""

    kind = "fisp"

    def __init__(self, start: seqs.FISPSequence, space: DesignSpace) -> None:
        super().__init__(start, space)
        self.trf = FISP_DEFAULT_TRF if start.TRF is None else start.TRF
        max_flip = float(np.max(np.abs(start.flip))) if space.max_flip is None else space.max_flip
        if not 0 < max_flip <= math.pi:
            raise InputError(f"--max-flip must be in (0, π] rad, got {max_flip:g}")
        self.flip_max = min(max_flip, space.limits.omega_max * (1 - _MARGIN) * self.trf)
        self.power_max = space.limits.rf_power_max * (1 - _MARGIN)
        lo, hi = space.tr_range or (float(start.TR.min()), float(start.TR.max()))
        if space.optimize_tr and not start.TE < lo <= hi:
            raise InputError(f"the TR range [{lo:g}, {hi:g}] s must be increasing and above "
                             f"TE = {start.TE:g} s")
        if space.optimize_tr and lo * start.n_timepoints > np.sum(start.TR):
            raise InputError(f"with TRs of at least {lo:g} s the schedule would be longer than "
                             f"the start's {np.sum(start.TR):g} s")
        self.tr_range = (lo, hi)

    @property
    def n_variables(self) -> int:
        return self.start.n_timepoints * (2 if self.space.optimize_tr else 1)

    def random(self, rng: np.random.Generator) -> np.ndarray:
        """A smooth random schedule (white-noise flip trains start the optimizer among many
        poor local minima): uniform values at T/10 points, Hann-interpolated."""
        n = self.start.n_timepoints
        smooth = [seqs.hann_interpolate(rng.uniform(0.0, 1.0, max(2, n // 10)), n)
                  for _ in range(self.n_variables // n)]
        return np.concatenate(smooth)

    def initial(self) -> np.ndarray:
        flips = np.clip(np.abs(self.start.flip) / self.flip_max, 0, 1)
        if not self.space.optimize_tr:
            return flips
        lo, hi = self.tr_range
        trs = np.clip((self.start.TR - lo) / (hi - lo) if hi > lo else 0.5, 0, 1)
        return np.concatenate((flips, np.broadcast_to(trs, flips.shape)))

    def played(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        n = self.start.n_timepoints
        flip = x[:n] * self.flip_max
        if self.space.optimize_tr:
            lo, hi = self.tr_range
            tr = lo + x[n:] * (hi - lo)
            # No longer than the start: above its duration, every TR's excess over the range's
            # low end shrinks by the one factor that meets it (stays within the range).
            excess, allowed = tr.sum() - n * lo, float(np.sum(self.start.TR)) - n * lo
            tr = lo + (tr - lo) * torch.clamp(allowed / excess.clamp_min(1e-300), max=1.0)
        else:
            tr = torch.as_tensor(self.start.TR, dtype=x.dtype)
        duration = self.start.TI + tr.sum()
        flip = flip * _power_scale(flip ** 2 / self.trf, duration, self.power_max)
        return {"flip": flip, "TR": tr}

    def sequence(self, x: np.ndarray) -> seqs.FISPSequence:
        with torch.no_grad():
            arrays = self.played(torch.as_tensor(x, dtype=torch.float64))
        return seqs.FISPSequence(flip=arrays["flip"].numpy(), TR=arrays["TR"].numpy(),
                                 TE=self.start.TE, TI=self.start.TI, TRF=self.trf)

    def control_points(self, x: np.ndarray) -> dict[str, list[float]]:
        with torch.no_grad():
            arrays = self.played(torch.as_tensor(x, dtype=torch.float64))
        return {k: v.tolist() for k, v in arrays.items()}


class SegmentedControls(Controls):
    """Segmented rectangular-pulse trains (kind 'segmented'), every segment designed jointly:
    per segment, α and TRF at ``n_control`` control points Hann-interpolated onto that
    segment's pulses. TR, the numbers of segments and pulses, the inversion pulses (α and TRF
    wherever the start flags one) and the RF phase increment are the start's.

    Variables: per segment and control point the pulse duration (a fraction of the allowed
    range) and α as a fraction of its largest allowed value ``min(max_flip, ω1max·TRF)`` (the
    peak-B1 limit at nominal B1). α is designed non-negative: with the RF phase increment π the
    pulses alternate in sign as played, so a non-negative α is a balanced train — the
    hybrid-state convention (θ ≥ 0 in mt_hybrid_state); a sign change within the train is
    outside the design space. Each segment is its own cycle (N·TR) and keeps the RF-power
    limit on its own, its inversion pulses counted: above it, the segment's designed pulses
    are scaled by the one factor that puts it on the limit."""

    kind = "segmented"

    def __init__(self, start: seqs.SegmentedSequence, space: DesignSpace) -> None:
        super().__init__(start, space)
        lim = space.limits
        TR = start.require_tr()
        if lim.trf_max > TR:
            raise InputError(f"the longest pulse ({lim.trf_max:g} s) must fit in the TR "
                             f"({TR:g} s)")
        n = start.pulses_per_segment
        if not 2 <= space.n_control <= n:
            raise InputError(f"--control-points must be between 2 and the number of pulses "
                             f"per segment ({n}), got {space.n_control}")
        self.hann = torch.tensor(hann_matrix(space.n_control, n))          # [N, k]
        self.alpha_max = min(space.max_flip or math.pi, math.pi) * (1 - _MARGIN)
        self.omega_max = lim.omega_max * (1 - _MARGIN)
        self.power_max = lim.rf_power_max * (1 - _MARGIN)
        self.duration = TR * n                                             # one segment
        inv = start.inversion
        self.inversion = torch.tensor(inv)
        self.fixed_alpha = torch.tensor(np.where(inv, start.alpha, 0.0))
        self.fixed_trf = torch.tensor(np.where(inv, start.TRF, 1.0))
        self.fixed_power = np.where(inv, start.alpha ** 2 / start.TRF, 0.0).sum(1) / self.duration
        self._check_inversion_pulses()

    def _check_inversion_pulses(self) -> None:
        """The start's inversion pulses, which are kept, must be within the limits (with the
        tolerance of :func:`crbnet.physics.hardware.violations`) and leave room in each
        segment's RF power."""
        lim, start, inv = self.space.limits, self.start, self.start.inversion
        if not inv.any():
            return
        omega = np.abs(start.alpha[inv]) / start.TRF[inv]
        trf = start.TRF[inv]
        if omega.max() > lim.omega_max * (1 + 1e-9):
            raise InputError(f"the start's inversion pulses (kept by design) exceed the peak-B1 "
                             f"limit: {omega.max() / GAMMA * 1e6:.1f} µT > "
                             f"{lim.peak_b1 * 1e6:.1f} µT")
        if trf.min() < lim.trf_min * (1 - 1e-9) or trf.max() > lim.trf_max * (1 + 1e-9):
            raise InputError(f"the start's inversion pulses (kept by design) last "
                             f"{trf.min() * 1e6:.0f}–{trf.max() * 1e6:.0f} µs, outside the "
                             f"pulse-duration range {lim.trf_min * 1e6:.0f}–"
                             f"{lim.trf_max * 1e6:.0f} µs")
        if self.fixed_power.max() >= self.power_max:
            raise InputError(f"the start's inversion pulses alone use RF power "
                             f"{self.fixed_power.max():.3g} (rad/s)² in a segment, not below "
                             f"the limit {lim.rf_power_max:.3g}")

    @property
    def n_variables(self) -> int:
        return 2 * self.start.n_segments * self.space.n_control

    def _alpha_cap(self, trf: torch.Tensor | np.ndarray):
        cap = self.omega_max * trf
        if isinstance(trf, torch.Tensor):
            return torch.clamp(cap, max=self.alpha_max)
        return np.minimum(cap, self.alpha_max)

    def initial(self) -> np.ndarray:
        lim, start = self.space.limits, self.start
        H = self.hann.numpy()
        # Least-squares control points of each segment's trains, inversion pulses left out.
        alpha_cp, trf_cp = np.stack([
            np.linalg.lstsq(H[~inv], np.stack((np.abs(a[~inv]), t[~inv]), 1), rcond=None)[0].T
            for a, t, inv in zip(start.alpha, start.TRF, start.inversion)], 1)
        u = np.clip((trf_cp - lim.trf_min) / max(lim.trf_max - lim.trf_min, 1e-300), 0, 1)
        s = np.clip(alpha_cp / self._alpha_cap(_pulse_duration(u, lim)), 0, 1)
        return np.concatenate((u.ravel(), s.ravel()))

    def _trains(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """α and TRF at the control points [S, k] and as played [S, N]."""
        shape = (self.start.n_segments, self.space.n_control)
        half = x.shape[0] // 2
        trf_cp = _pulse_duration(x[:half], self.space.limits).reshape(shape)
        alpha_cp = x[half:].reshape(shape) * self._alpha_cap(trf_cp)
        H = self.hann.to(x.dtype)
        alpha, trf = alpha_cp @ H.T, trf_cp @ H.T
        # RF power per segment: Σ ω1²·TRF / (N·TR) = Σ α²/TRF / (N·TR), the inversions fixed.
        designed = torch.where(self.inversion, 0.0, alpha ** 2 / trf).sum(1) / self.duration
        room = torch.as_tensor(self.power_max - self.fixed_power, dtype=x.dtype)
        scale = torch.clamp(torch.sqrt(room / designed.clamp_min(1e-300)), max=1.0)[:, None]
        alpha_cp, alpha = alpha_cp * scale, alpha * scale
        return (alpha_cp, trf_cp,
                torch.where(self.inversion, self.fixed_alpha.to(x.dtype), alpha),
                torch.where(self.inversion, self.fixed_trf.to(x.dtype), trf))

    def played(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        _, _, alpha, trf = self._trains(x)
        return {"alpha": alpha, "TRF": trf}

    def sequence(self, x: np.ndarray) -> seqs.SegmentedSequence:
        with torch.no_grad():
            arrays = self.played(torch.as_tensor(x, dtype=torch.float64))
        start = self.start
        return seqs.SegmentedSequence(alpha=arrays["alpha"].numpy(), TRF=arrays["TRF"].numpy(),
                                      TR=start.TR, inversion=start.inversion,
                                      rf_phase_increment=start.rf_phase_increment)

    def control_points(self, x: np.ndarray) -> dict[str, list[list[float]]]:
        with torch.no_grad():
            alpha_cp, trf_cp, _, _ = self._trains(torch.as_tensor(x, dtype=torch.float64))
        return {"alpha": alpha_cp.tolist(), "TRF": trf_cp.tolist()}


#: Design controls by sequence kind.
CONTROLS: dict[str, type[Controls]] = {
    cls.kind: cls for cls in (MTControls, FISPControls, SegmentedControls)}


def controls_for(model: SignalModel, space: DesignSpace) -> Controls:
    """The controls of the kind of the model's sequence (a model may play several kinds),
    starting from that sequence. A model must implement ``signal_for_sequence``."""
    if type(model).signal_for_sequence is SignalModel.signal_for_sequence:
        raise InputError(f"model {model.name!r} cannot be designed: it does not implement "
                         "signal_for_sequence (docs/design.md, 'What a model must offer')")
    kind = model.sequence.kind
    cls = CONTROLS.get(kind)
    if cls is None:
        raise InputError(f"sequence design supports sequences of kind {', '.join(CONTROLS)}; "
                         f"{model.name!r} plays {kind!r}")
    return cls(model.sequence, space)
