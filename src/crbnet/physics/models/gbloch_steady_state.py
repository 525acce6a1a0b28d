"""The periodic steady state of the generalized-Bloch linear approximation, in plain tensor
operations (any device, any autodiff): the reference route of :mod:`.mt_generalized_bloch`,
the one that runs on CUDA and that sequence design differentiates.

State per voxel ``m = (xf, yf, zf, xs, zs, 1)``: the free pool's three components, the
semi-solid pool's x and z (it has no y), and a constant 1 that turns relaxation towards
thermal equilibrium into a linear map (an affine 6 × 6 propagator). Thermal equilibrium is
``zf = 1 − m0s``, ``zs = m0s``. Generator, for an RF amplitude ``w = B1·ω1`` about +y and an
off-resonance ``ω0`` about z (acting on the free pool only)::

    xf' = −R2f·xf − ω0·yf + w·zf
    yf' =  ω0·xf − R2f·yf
    zf' = −w·xf − (R1f + Rx·m0s)·zf + Rx·(1−m0s)·zs + R1f·(1−m0s)
    xs' = −R2sl·xs + w·zs
    zs' =  Rx·m0s·zf − w·xs − (R1s + Rx·(1−m0s))·zs + R1s·m0s

One TR of pulse n, applied to the state at the previous echo: free precession for
``(TR − TRF_n)/2`` then ``xs := 0`` (spoiled), the RF phase advance (a rotation of (xf, yf) by
the increment), the pulse (generator above with ``ω1 = α_n/TRF_n`` and the pulse's R2sl, for
TRF_n), free precession again and ``xs := 0``. The echo (sample n, ``xf + i·yf``) is at TR/2
after the pulse's centre. An inversion pulse acts instantaneously on the free pool
(``xf → sin²(β/2)·xf``, ``yf → −sin²(β/2)·yf``, ``zf → cos β·zf``, β = B1·α: the crushers
leave only the longitudinal and refocused parts) while the semi-solid pool evolves for TRF
under ``[[−R2sl, w], [−w, 0]]`` on (xs, zs); the free precession around it lasts TR/2 on each
side. A segment is periodic: its state at the first echo equals its state one segment later,
``m₁ = A m₁`` with A the product of the segment's TR maps starting after pulse 1.
"""

from __future__ import annotations

import torch

# Indices of the state vector.
XF, YF, ZF, XS, ZS, ONE = range(6)


def hamiltonian(w: torch.Tensor, omega0: torch.Tensor, m0s: torch.Tensor, R1f: torch.Tensor,
                R2f: torch.Tensor, Rx: torch.Tensor, R1s: torch.Tensor, R2s: torch.Tensor
                ) -> torch.Tensor:
    """The affine 6 × 6 generator [..., 6, 6] (1/s) of the module docstring; arguments
    broadcast against each other (rad/s, 1/s)."""
    shape = torch.broadcast_shapes(*(t.shape for t in (w, omega0, m0s, R1f, R2f, Rx, R1s, R2s)))
    w, omega0, m0s, R1f, R2f, Rx, R1s, R2s = (t.expand(shape) for t in
                                              (w, omega0, m0s, R1f, R2f, Rx, R1s, R2s))
    zero = torch.zeros_like(w)
    m0f = 1 - m0s
    rows = (
        (-R2f, -omega0, w, zero, zero, zero),
        (omega0, -R2f, zero, zero, zero, zero),
        (-w, zero, -R1f - Rx * m0s, zero, Rx * m0f, R1f * m0f),
        (zero, zero, zero, -R2s, w, zero),
        (zero, zero, Rx * m0s, -w, -R1s - Rx * m0f, R1s * m0s),
        (zero, zero, zero, zero, zero, zero),
    )
    return torch.stack([torch.stack(r, -1) for r in rows], -2)


def _spoil_xs(E: torch.Tensor) -> torch.Tensor:
    """``xs := 0`` after the map E [..., 6, 6]."""
    keep = torch.ones(6, dtype=E.dtype, device=E.device)
    keep[XS] = 0
    return E * keep[:, None]


def free_precession(duration: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    """Free precession for ``duration`` (s) followed by ``xs := 0`` [..., 6, 6]."""
    zero = torch.zeros_like(duration)
    H = hamiltonian(zero, p["omega0"], p["m0s"], p["R1f"], p["R2f"], p["Rx"], p["R1s"], zero)
    return _spoil_xs(torch.linalg.matrix_exp(H * duration[..., None, None]))


def rf_pulse(alpha: torch.Tensor, TRF: torch.Tensor, R2sl: torch.Tensor,
             p: dict[str, torch.Tensor]) -> torch.Tensor:
    """A rectangular pulse of flip angle ``alpha`` (rad, before B1) and duration ``TRF`` (s)
    with the semi-solid relaxation ``R2sl`` (1/s) [..., 6, 6]."""
    w = p["B1"] * alpha / TRF
    H = hamiltonian(w, p["omega0"], p["m0s"], p["R1f"], p["R2f"], p["Rx"], p["R1s"], R2sl)
    return torch.linalg.matrix_exp(H * TRF[..., None, None])


def inversion_pulse(alpha: torch.Tensor, TRF: torch.Tensor, R2sl: torch.Tensor,
                    p: dict[str, torch.Tensor]) -> torch.Tensor:
    """An inversion pulse (instantaneous on the free pool, TRF on the semi-solid pool)."""
    beta = p["B1"] * alpha
    w = beta / TRF
    zero = torch.zeros_like(w + R2sl)
    semi = torch.stack((torch.stack((-R2sl + zero, w + zero), -1),
                        torch.stack((-w + zero, zero), -1)), -2)
    Es = torch.linalg.matrix_exp(semi * TRF[..., None, None])
    s2 = torch.sin(beta / 2) ** 2 + zero
    one = torch.ones_like(zero)
    rows = (
        (s2, zero, zero, zero, zero, zero),
        (zero, -s2, zero, zero, zero, zero),
        (zero, zero, torch.cos(beta) + zero, zero, zero, zero),
        (zero, zero, zero, Es[..., 0, 0], Es[..., 0, 1], zero),
        (zero, zero, zero, Es[..., 1, 0], Es[..., 1, 1], zero),
        (zero, zero, zero, zero, zero, one),
    )
    return torch.stack([torch.stack(r, -1) for r in rows], -2)


def phase_advance(increment: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The RF phase advance between pulses as a rotation of (xf, yf) by ``increment`` [6, 6]."""
    c, s = torch.cos(torch.tensor(increment, dtype=torch.float64)), \
        torch.sin(torch.tensor(increment, dtype=torch.float64))
    R = torch.eye(6, dtype=torch.float64)
    R[XF, XF], R[XF, YF], R[YF, XF], R[YF, YF] = c, -s, s, c
    return R.to(dtype=dtype, device=device)


def tr_maps(alpha: torch.Tensor, TRF: torch.Tensor, inversion: torch.Tensor, TR: float,
            R2sl: torch.Tensor, increment: float, p: dict[str, torch.Tensor]) -> torch.Tensor:
    """The maps from one echo to the next, one per pulse [N, n_pulses, 6, 6].

    ``alpha``, ``TRF`` [n_pulses] (rad, s), ``inversion`` [n_pulses] bool, ``R2sl``
    [N, n_pulses] (1/s); voxel parameters ``p`` as [N, 1] columns."""
    inv = inversion.to(torch.bool)
    half = torch.where(inv, torch.full_like(TRF, TR / 2), (TR - TRF) / 2)
    F = free_precession(half, p)
    pulse = rf_pulse(alpha, TRF, R2sl, p)
    if inv.any():
        # Only the inversion pulses' own maps (a few per segment), copied into their places.
        at = torch.nonzero(inv)[:, 0]
        pulse = pulse.index_copy(-3, at, inversion_pulse(alpha[at], TRF[at], R2sl[:, at], p))
    rotation = phase_advance(increment, F.dtype, F.device)
    return F @ pulse @ rotation @ F


def _prefix_products(P: torch.Tensor) -> torch.Tensor:
    """``Q_k = P_k ⋯ P_0`` along dim −3 (later maps on the left), in ⌈log₂ n⌉ batched steps."""
    n, shift = P.shape[-3], 1
    while shift < n:
        P = torch.cat((P[..., :shift, :, :], P[..., shift:, :, :] @ P[..., :-shift, :, :]), -3)
        shift *= 2
    return P


def periodic_echoes(P: torch.Tensor) -> torch.Tensor:
    """The state at every echo of a periodic segment [N, n_pulses, 6] from its TR maps
    ``P`` [N, n_pulses, 6, 6] (``P[:, k]`` maps echo k−1 to echo k; echo −1 is the last)."""
    Q = _prefix_products(P[:, 1:])                         # echo 0 -> echoes 1 .. n−1
    A = P[:, 0] @ Q[:, -1] if P.shape[1] > 1 else P[:, 0]  # echo 0 -> echo 0, one period on
    eye = torch.eye(5, dtype=P.dtype, device=P.device)
    # An explicit inverse, not torch.linalg.solve: torch 2.13's second derivatives of solve
    # (reverse over forward, which sequence design takes) are wrong; inv's are right.
    m0 = (torch.linalg.inv(eye - A[:, :5, :5]) @ A[:, :5, 5:6])[..., 0]
    m0 = torch.cat((m0, torch.ones_like(m0[:, :1])), 1)
    later = (Q @ m0[:, None, :, None])[..., 0]
    return torch.cat((m0[:, None], later), 1)


def segment_signal(alpha: torch.Tensor, TRF: torch.Tensor, inversion: torch.Tensor, TR: float,
                   R2sl: torch.Tensor, increment: float, p: dict[str, torch.Tensor]
                   ) -> torch.Tensor:
    """Complex signal ``xf + i·yf`` at every echo of one periodic segment [N, n_pulses]."""
    m = periodic_echoes(tr_maps(alpha, TRF, inversion, TR, R2sl, increment, p))
    return torch.complex(m[..., XF], m[..., YF])
