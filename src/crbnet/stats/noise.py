"""The noise model: complex white Gaussian noise, random M0, and the one SNR definition.

SNR = |M0|/σ with σ the standard deviation of the real and of the imaginary part of the noise (docs/statistics.md §1).
"""

from __future__ import annotations

import math

import torch

from crbnet.errors import InputError

#: The one definition of SNR (docs/statistics.md §1); outputs that report an SNR print it,
#: adding only what |M0| is in their context.
SNR_DEFINITION = ("SNR = |M0| / sigma, sigma the standard deviation of the real and of the "
                  "imaginary part of the noise")


def random_m0(n: int, magnitude: tuple[float, float] = (1.0, 1.0),
              generator: torch.Generator | None = None, dtype: torch.dtype = torch.complex128,
              device: torch.device | str = "cpu") -> torch.Tensor:
    """Complex M0 with magnitude uniform in ``magnitude`` and phase uniform in [0, 2π), [n]."""
    lo, hi = magnitude
    mag = lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64)
    phase = 2 * math.pi * torch.rand(n, generator=generator, dtype=torch.float64)
    return torch.polar(mag, phase).to(dtype=dtype, device=device)


def add_noise(signals: torch.Tensor, sigma: float | torch.Tensor,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """Add complex white Gaussian noise, std ``sigma`` on the real and on the imaginary part.

    ``sigma`` is a scalar or [N] (one value per voxel). The noise is drawn on the CPU with
    ``generator`` (reproducible across devices) and moved to the signals' device.
    """
    real_dtype = torch.float64 if signals.dtype == torch.complex128 else torch.float32
    noise = torch.randn(*signals.shape, 2, generator=generator, dtype=real_dtype)
    noise = torch.view_as_complex(noise).to(signals.device)
    sig = torch.as_tensor(sigma, dtype=real_dtype, device=signals.device)
    if sig.ndim == 1:
        sig = sig[:, None]
    return signals + sig * noise


def check_snr(snr: float | tuple[float, float] | list[float]) -> tuple[float, float]:
    """Validate a training SNR (a value or ``[low, high]``); returns ``(low, high)``."""
    if isinstance(snr, (int, float)):
        lo = hi = float(snr)
    else:
        try:
            lo, hi = (float(v) for v in snr)
        except (TypeError, ValueError):
            raise InputError(f"SNR must be a number or [low, high], got {snr!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi):
        raise InputError(f"SNR must be positive and finite with low <= high, got {snr!r}")
    return lo, hi


def sample_snr(n: int, snr: float | tuple[float, float] | list[float],
               generator: torch.Generator | None = None) -> torch.Tensor:
    """[n] SNR values (|M0|/σ): the value itself, or log-uniform in ``[low, high]``.

    Log-uniform because SNR is a scale: each factor of 2 in the range gets the same share.
    """
    lo, hi = check_snr(snr)
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    if lo == hi:
        return torch.full((n,), lo, dtype=torch.float64)
    return torch.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))


def noisy_measurements(clean: torch.Tensor, sigma: float | torch.Tensor,
                       generator: torch.Generator | None = None,
                       m0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``y = M0·f + n`` for each row ``f`` of ``clean`` [N, k] (a signal or its coefficients).

    ``m0`` [N] complex is given, or drawn here with |M0| = 1 and a uniform phase — the test sets
    of evaluation and comparison, where σ = 1/SNR. ``n`` is complex white Gaussian noise of std
    ``sigma`` (scalar or [N]) on the real and on the imaginary part. Every noisy set in crbnet
    (training, validation, evaluation, comparison) is made here. Returns ``(signals, m0)``.
    """
    if m0 is None:
        m0 = random_m0(clean.shape[0], generator=generator)
    dtype = torch.promote_types(clean.dtype, torch.complex64)
    scaled = clean * m0.to(device=clean.device, dtype=dtype)[:, None]
    return add_noise(scaled, sigma, generator), m0
