"""Training and test data: parameter sampling, random M0, complex Gaussian noise.

Statistics only — the physics lives in ``models/``, the learning in ``train.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

import torch

from crbnet.errors import InputError
from crbnet.physics.models.base import SignalModel
from crbnet.stats.subspace import project  # noqa: F401  (re-exported: data.project is public)

DISTRIBUTIONS = ("uniform", "log-uniform")

#: The one definition of SNR (docs/statistics.md §1); outputs that report an SNR print it,
#: adding only what |M0| is in their context.
SNR_DEFINITION = ("SNR = |M0| / sigma, sigma the standard deviation of the real and of the "
                  "imaginary part of the noise")


@dataclass
class ParameterSampler:
    """Independent draws of each estimated parameter from a range and a distribution.

    Args:
        model: the signal model (its ``parameters`` give the column order).
        ranges: ``{name: (low, high)}`` in SI; missing names use the model's training range.
        distributions: ``{name: 'uniform' | 'log-uniform'}``; missing names use the model's
            default for that parameter.
    """

    model: SignalModel
    ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    distributions: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in list(self.ranges) + list(self.distributions):
            if name not in self.model.parameters:
                raise InputError(f"unknown parameter {name!r} in sampling spec; estimated: "
                                 f"{', '.join(self.model.parameters)}")
        self.low, self.high, self.log = [], [], []
        for p in self.model.parameters:
            spec = self.model.spec(p)
            lo, hi = (float(v) for v in self.ranges.get(p, spec.train_range))
            dist = self.distributions.get(p, "log-uniform" if spec.log_uniform else "uniform")
            if dist not in DISTRIBUTIONS:
                raise InputError(f"distribution of {p} must be one of {DISTRIBUTIONS}, got {dist!r}")
            if not (spec.bounds[0] <= lo < hi <= spec.bounds[1]):
                raise InputError(f"range of {p} [{lo:g}, {hi:g}] must be increasing and inside "
                                 f"the bounds [{spec.bounds[0]:g}, {spec.bounds[1]:g}]")
            if dist == "log-uniform" and lo <= 0:
                raise InputError(f"log-uniform range of {p} must be positive")
            self.low.append(lo)
            self.high.append(hi)
            self.log.append(dist == "log-uniform")

    def spec_dict(self) -> dict:
        """JSON-ready description (stored in checkpoints)."""
        return {p: {"range": [lo, hi], "distribution": "log-uniform" if lg else "uniform"}
                for p, lo, hi, lg in zip(self.model.parameters, self.low, self.high, self.log)}

    def sample(self, n: int, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu") -> torch.Tensor:
        """[n, P] parameters."""
        u = torch.rand(n, len(self.low), generator=generator, dtype=torch.float64)
        cols = []
        for j, (lo, hi, lg) in enumerate(zip(self.low, self.high, self.log)):
            if lg:
                cols.append(torch.exp(math.log(lo) + u[:, j] * (math.log(hi) - math.log(lo))))
            else:
                cols.append(lo + u[:, j] * (hi - lo))
        return torch.stack(cols, 1).to(dtype=dtype, device=device)


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


# ---------------------------------------------------------------------------------------------
# Training data (issue 3). Everything below builds on the three functions above.
#
# Measurement model (docs/statistics.md §1): y = M0·f(θ) + n with σ per real/imaginary part and
# SNR = |M0|/σ. A training sample therefore needs θ, the noiseless f (or its subspace
# coefficients Uᴴf, with white noise of the same σ), the CRB for σ = 1, |M0| = 1 and a draw of
# (M0, SNR, n). The CRB at the sample's own noise level is crb_unit·σ²/|M0|² = crb_unit/SNR²,
# whatever the magnitude of M0.


def sampler_from_spec(model: SignalModel, spec: Mapping[str, object] | None) -> ParameterSampler:
    """Build a :class:`ParameterSampler` from a config mapping.

    ``spec`` maps a parameter name to ``{"range": [low, high], "distribution": "uniform" |
    "log-uniform"}`` (either key optional) — the form of the ``[sampling]`` table of a training
    config and of :meth:`ParameterSampler.spec_dict`.
    """
    ranges: dict[str, tuple[float, float]] = {}
    dists: dict[str, str] = {}
    for name, entry in (spec or {}).items():
        if not isinstance(entry, Mapping):
            raise InputError(f"sampling.{name} must be a table with 'range' and/or "
                             f"'distribution', got {entry!r}")
        unknown = set(entry) - {"range", "distribution"}
        if unknown:
            raise InputError(f"sampling.{name}: unknown key(s) {', '.join(sorted(unknown))}")
        if "range" in entry:
            rng = entry["range"]
            try:
                lo, hi = (float(v) for v in rng)  # type: ignore[union-attr]
            except (TypeError, ValueError):
                raise InputError(f"sampling.{name}.range must be [low, high], got {rng!r}") from None
            ranges[name] = (lo, hi)
        if "distribution" in entry:
            dists[name] = str(entry["distribution"])
    return ParameterSampler(model, ranges, dists)


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


@dataclass
class CleanBatch:
    """Noiseless training samples.

    Attributes:
        theta: [N, P] parameters (SI, float64).
        coefficients: [N, k] complex noiseless signal for M0 = 1 in the compressed space
            (``f @ U.conj()``), or the full signal when there is no basis.
        crb: [N, P] CRB of the full (uncompressed) data for σ = 1, |M0| = 1 (float64).
    """

    theta: torch.Tensor
    coefficients: torch.Tensor
    crb: torch.Tensor

    def __len__(self) -> int:
        return int(self.theta.shape[0])

    def select(self, index: torch.Tensor | slice) -> "CleanBatch":
        return CleanBatch(self.theta[index], self.coefficients[index], self.crb[index])

    @staticmethod
    def concat(batches: "list[CleanBatch]") -> "CleanBatch":
        return CleanBatch(torch.cat([b.theta for b in batches]),
                          torch.cat([b.coefficients for b in batches]),
                          torch.cat([b.crb for b in batches]))


def simulate_clean(model: SignalModel, theta: torch.Tensor, basis: torch.Tensor | None = None,
                   with_crb: bool = True, chunk_size: int = 1024,
                   coefficient_dtype: torch.dtype = torch.complex64,
                   crb_basis: torch.Tensor | None = None) -> CleanBatch:
    """Simulate noiseless signals (float64), project them on ``basis`` and compute their CRBs.

    The CRB is that of the full data (σ = 1, |M0| = 1), the reference every estimator is
    measured against — or, with ``crb_basis``, that of the coefficients in that basis (when the
    data *are* coefficients, as with a user's basis); voxels with a singular Fisher matrix get
    ``inf`` (no warning here — the training losses ignore them and report how many there were).
    """
    import warnings

    from crbnet.stats.crb import SingularFisherWarning, crb

    theta = theta.to(torch.float64)
    coefs, crbs = [], []
    for start in range(0, theta.shape[0], chunk_size):
        th = theta[start:start + chunk_size]
        coefs.append(project(model.simulate(th), basis).to(coefficient_dtype))
        if with_crb:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", SingularFisherWarning)
                crbs.append(crb(model, th, basis=crb_basis, warn=False))
    crb_all = torch.cat(crbs) if with_crb else torch.full_like(theta, float("nan"))
    return CleanBatch(theta, torch.cat(coefs), crb_all.to(theta.device))


@dataclass
class NoisyBatch:
    """Measurements made from a :class:`CleanBatch`.

    Attributes:
        signals: [N, k] complex ``M0·f + n`` (in the compressed space when there is a basis).
        theta: [N, P] true parameters (SI).
        crb: [N, P] CRB at each sample's own noise level: ``crb_unit · σ²/|M0|²``.
        snr: [N] |M0|/σ.
        m0: [N] complex M0.
    """

    signals: torch.Tensor
    theta: torch.Tensor
    crb: torch.Tensor
    snr: torch.Tensor
    m0: torch.Tensor


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


def make_noisy(clean: CleanBatch, snr: float | tuple[float, float] | list[float],
               m0_magnitude: tuple[float, float] = (1.0, 1.0),
               generator: torch.Generator | None = None, repeats: int = 1) -> NoisyBatch:
    """Draw M0 (uniform magnitude in ``m0_magnitude``, uniform phase), an SNR per sample and
    complex Gaussian noise with σ = |M0|/SNR.

    ``repeats`` = K > 1 repeats every clean sample K times (consecutive rows) with its own M0
    and SNR but K independent noise draws — the input of the bias-reduced loss.
    """
    n = len(clean)
    snr_values = sample_snr(n, snr, generator)
    m0 = random_m0(n, m0_magnitude, generator, dtype=torch.complex128)
    if repeats > 1:
        clean = clean.select(torch.arange(n, device=clean.theta.device).repeat_interleave(repeats))
        snr_values = snr_values.repeat_interleave(repeats)
        m0 = m0.repeat_interleave(repeats)
    sigma = m0.abs() / snr_values
    coef = clean.coefficients
    signals, _ = noisy_measurements(coef, sigma.to(torch.float64 if coef.dtype == torch.complex128
                                                   else torch.float32), generator, m0=m0)
    crb_train = clean.crb / snr_values.to(clean.crb.device, clean.crb.dtype)[:, None] ** 2
    return NoisyBatch(signals=signals, theta=clean.theta, crb=crb_train,
                      snr=snr_values, m0=m0)


def derived_generator(seed: int, *labels: object) -> torch.Generator:
    """A CPU generator seeded from ``seed`` and labels, e.g. ``(seed, "pool", 3, rank)``.

    Independent streams for independent purposes (validation set, basis, pool generations,
    ranks) make every piece reproducible on its own — the key to an exact ``--resume``.
    """
    import hashlib

    digest = hashlib.sha256(repr((int(seed),) + labels).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


class OnlineSource:
    """Training data drawn on the fly from the sampling distribution ("online" mode).

    Two regimes, chosen by ``pool_size``:

    * ``pool_size == 0`` — every batch draws fresh θ, simulates, and computes CRBs. Exactly the
      textbook online mode; right for models whose CRB is cheap (``t2_decay``, ``ir_t1``).
    * ``pool_size > 0`` — a pool of noiseless samples with their CRBs; each epoch replaces the
      oldest ``pool_refresh`` samples by fresh draws. Batches pick pool samples at random, and
      M0, SNR and noise are always fresh, so the noise — the part the estimator must learn to
      cope with — is never reused. This bounds the CRB cost (the expensive part for
      ``mt_hybrid_state`` and ``fisp_mrf``) at ``pool_refresh`` CRBs per epoch.

    The pool is made of blocks of ``pool_refresh`` samples; block generation g is drawn from its
    own generator ``derived_generator(seed, "pool", g, rank)``, so the pool at any epoch can be
    rebuilt exactly (used by ``--resume``) without replaying the history.

    Args:
        model, sampler: physics and the parameter distribution.
        basis: [T, k] subspace (None: full signals).
        batch_size: noiseless samples per batch.
        batches_per_epoch: batches in one epoch.
        pool_size, pool_refresh: see above (``pool_refresh`` defaults to ``pool_size // 10``
            and is capped at ``pool_size``).
        seed, rank: reproducibility; each DDP rank draws different data.
        device: where the samples are produced (simulation and CRB run there).
        crb_basis: compute the CRBs of the coefficients in this basis (a user's basis) instead
            of those of the full data.
    """

    def __init__(self, model: SignalModel, sampler: ParameterSampler,
                 basis: torch.Tensor | None, batch_size: int, batches_per_epoch: int,
                 pool_size: int = 0, pool_refresh: int = 0, seed: int = 0, rank: int = 0,
                 device: torch.device | str = "cpu", crb_basis: torch.Tensor | None = None
                 ) -> None:
        self.model, self.sampler, self.basis = model, sampler, basis
        self.crb_basis = crb_basis
        self.batch_size, self.batches_per_epoch = int(batch_size), int(batches_per_epoch)
        self.pool_size = int(pool_size)
        refresh = int(pool_refresh) if pool_refresh else max(1, self.pool_size // 10)
        self.pool_refresh = max(1, min(refresh, self.pool_size))
        self.seed, self.rank, self.device = int(seed), int(rank), torch.device(device)
        self.pool: CleanBatch | None = None
        self._pool_epoch = -1

    @property
    def n_blocks(self) -> int:
        return math.ceil(self.pool_size / self.pool_refresh)

    def _block(self, generation: int, size: int) -> CleanBatch:
        gen = derived_generator(self.seed, "pool", generation, self.rank)
        theta = self.sampler.sample(size, gen, device=self.device)
        return simulate_clean(self.model, theta, self.basis, crb_basis=self.crb_basis)

    def _block_sizes(self) -> list[int]:
        sizes = [self.pool_refresh] * self.n_blocks
        sizes[-1] = self.pool_size - self.pool_refresh * (self.n_blocks - 1)
        return sizes

    def start_epoch(self, epoch: int) -> None:
        """Bring the pool to its state for ``epoch`` (0-based): the initial blocks 0..B-1, then
        at the start of epoch e ≥ 1 block (e−1) mod B is replaced by generation B+e−1."""
        if not self.pool_size or self._pool_epoch == epoch:
            return
        B, sizes = self.n_blocks, self._block_sizes()

        def generation_of(slot: int, ep: int) -> int:
            # The latest replacement of `slot` at or before epoch `ep`.
            replaced = [e for e in range(max(1, ep - B + 1), ep + 1) if (e - 1) % B == slot]
            return B + replaced[-1] - 1 if replaced else slot

        if self.pool is None or self._pool_epoch != epoch - 1:
            blocks = [self._block(generation_of(s, epoch), sizes[s]) for s in range(B)]
            self._blocks = blocks
        else:
            slot = (epoch - 1) % B
            self._blocks[slot] = self._block(generation_of(slot, epoch), sizes[slot])
        self.pool = CleanBatch.concat(self._blocks)
        self._pool_epoch = epoch

    def batches(self, epoch: int, generator: torch.Generator):
        """Yield the epoch's :class:`CleanBatch` es (noise is added by the caller)."""
        self.start_epoch(epoch)
        for _ in range(self.batches_per_epoch):
            if self.pool is None:
                theta = self.sampler.sample(self.batch_size, generator, device=self.device)
                yield simulate_clean(self.model, theta, self.basis, crb_basis=self.crb_basis)
            else:
                index = torch.randint(len(self.pool), (self.batch_size,), generator=generator)
                yield self.pool.select(index.to(self.pool.theta.device))

    def samples_per_epoch(self) -> int:
        return self.batch_size * self.batches_per_epoch
