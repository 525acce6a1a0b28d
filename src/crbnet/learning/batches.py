"""Training and test batches in memory: clean signals with their CRBs (:class:`CleanBatch`),
noisy copies (:class:`NoisyBatch`), and the online source that simulates them as training goes
(:class:`OnlineSource`, with its pool).

The offline source, a file, is :mod:`crbnet.learning.hdf5_dataset`; what a run assembles from
either is :mod:`crbnet.learning.training_data`. Sampling and the noise model are statistics and
live in :mod:`crbnet.stats.sampling` and :mod:`crbnet.stats.noise`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from crbnet.physics.models.base import SignalModel
from crbnet.stats.noise import noisy_measurements, random_m0, sample_snr
from crbnet.stats.sampling import ParameterSampler, derived_generator
from crbnet.stats.subspace import project

# ---------------------------------------------------------------------------------------------
# Training data (issue 3), built on the sampling and noise functions imported above.
#
# Measurement model (docs/statistics.md §1): y = M0·f(θ) + n with σ per real/imaginary part and
# SNR = |M0|/σ. A training sample therefore needs θ, the noiseless f (or its subspace
# coefficients Uᴴf, with white noise of the same σ), the CRB for σ = 1, |M0| = 1 and a draw of
# (M0, SNR, n). The CRB at the sample's own noise level is crb_unit·σ²/|M0|² = crb_unit/SNR²,
# whatever the magnitude of M0.


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
