"""What a training run learns from, assembled from its configuration: the parameter sampler,
the input subspace, the batch source (online simulation, :mod:`crbnet.learning.batches`, or an
offline HDF5 dataset, :mod:`crbnet.learning.hdf5_dataset`), the fixed validation set and the
signals the network's input statistics come from.

Every random piece has its own seeded stream (:func:`crbnet.stats.sampling.derived_generator`): subspace,
validation set and its noise, input statistics; the batch sources are seeded by the config's
seed and the process's rank.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from crbnet.errors import InputError
from crbnet.learning import losses
from crbnet.learning.batches import (
    CleanBatch,
    NoisyBatch,
    OnlineSource,
    make_noisy,
    project,
    simulate_clean,
)
from crbnet.learning.distributed import DistInfo
from crbnet.learning.fine_tune import InitCheckpoint
from crbnet.learning.training_config import TrainConfig
from crbnet.physics.models.base import SignalModel
from crbnet.stats.sampling import ParameterSampler, derived_generator, sampler_from_spec
from crbnet.stats.subspace import (
    Subspace,
    basis_hash,
    basis_record,
    choose_k,
    crb_inflation,
    fit_subspace,
    user_subspace,
)


@dataclass
class TrainingData:
    """The data side of a run.

    Attributes:
        sampler: training distribution of the parameters.
        subspace: the network's input basis (None: the full signal).
        source: batches of noiseless samples (``batches(epoch, generator)``,
            ``batches_per_epoch``).
        val: the fixed noisy validation set (rank 0 only; None elsewhere).
        val_singular: validation samples with a non-finite CRB.
        prior_ratio: per parameter, median CRB / variance of the training prior (rank 0).
        stats_inputs: noisy network inputs the input normalization is computed from.
        dataset: the offline dataset (None online).
    """

    sampler: ParameterSampler
    subspace: Subspace | None
    source: Any
    val: NoisyBatch | None
    val_singular: int
    prior_ratio: dict[str, float] | None
    stats_inputs: torch.Tensor
    dataset: Any = None


def clean_batch_size(config: TrainConfig) -> int:
    """Noiseless samples per batch: all of the batch, or batch_size // R for a loss that
    measures each R times (the bias-reduced loss)."""
    if losses.get(config.loss.name).repeated:
        return config.data.batch_size // config.loss.realizations
    return config.data.batch_size


def prepare_data(model: SignalModel, config: TrainConfig, dist: DistInfo,
                 device: torch.device, user_basis: torch.Tensor | None = None,
                 init: InitCheckpoint | None = None) -> TrainingData:
    """Sampler, subspace, batch source, validation set and input statistics of a run.

    ``user_basis``: the user's basis U [T, K] (the network reads coefficients in it and trains
    against their CRBs); ``init``: the ``--init`` checkpoint, whose basis is this run's.
    """
    if config.data.mode == "offline":
        parts = _offline(model, config, dist, device, user_basis, init)
    else:
        parts = _online(model, config, dist, device, user_basis, init)
    sampler, subspace, source, val_clean, stats_clean, dataset = parts
    d, seed = config.data, config.seed
    # Only rank 0 validates; the others skip the (CRB-heavy) validation set.
    val = None if val_clean is None else make_noisy(
        val_clean, d.snr, tuple(d.m0_magnitude), derived_generator(seed, "validation-noise"))
    stats_inputs = make_noisy(stats_clean, d.snr, tuple(d.m0_magnitude),
                              derived_generator(seed, "input-statistics")).signals
    return TrainingData(
        sampler=sampler, subspace=subspace, source=source, val=val,
        val_singular=0 if val is None else int((~torch.isfinite(val.crb)).any(1).sum()),
        prior_ratio=None if val is None else crb_over_prior(model, val),
        stats_inputs=stats_inputs, dataset=dataset)


def _online(model: SignalModel, config: TrainConfig, dist: DistInfo, device: torch.device,
            user_basis: torch.Tensor | None, init: InitCheckpoint | None) -> tuple:
    cfg, seed = config, config.seed
    sampler = sampler_from_spec(model, cfg.data.sampling)
    theta_fit = sampler.sample(cfg.subspace.n_fit, derived_generator(seed, "basis"))
    signals_fit = model.simulate(theta_fit)
    if init is not None:
        init.check_user_basis(user_basis)
        subspace = init.subspace()
    elif user_basis is not None:
        subspace = user_subspace(user_basis, signals_fit)
    elif cfg.subspace.enabled:
        k = cfg.subspace.k or None
        if k is not None and k > min(signals_fit.shape):
            raise InputError(f"subspace.k={k} exceeds min(n_fit, T) = {min(signals_fit.shape)}")
        subspace = fit_subspace(signals_fit, k=k, energy=cfg.subspace.energy)
    else:
        subspace = None
    basis = None if subspace is None else subspace.basis
    source = OnlineSource(model, sampler, basis, clean_batch_size(cfg), cfg.data.batches_per_epoch,
                          cfg.data.pool_size, cfg.data.pool_refresh, seed=seed, rank=dist.rank,
                          device=device, crb_basis=user_basis)
    theta_val = sampler.sample(cfg.data.val_size, derived_generator(seed, "validation"))
    val_clean = (simulate_clean(model, theta_val, basis, crb_basis=user_basis)
                 if dist.is_main else None)
    stats_clean = CleanBatch(theta_fit, project(signals_fit, basis).to(torch.complex64),
                             torch.full_like(theta_fit, float("nan")))
    return sampler, subspace, source, val_clean, stats_clean, None


def _offline(model: SignalModel, config: TrainConfig, dist: DistInfo, device: torch.device,
             user_basis: torch.Tensor | None, init: InitCheckpoint | None) -> tuple:
    from crbnet.learning.hdf5_dataset import Dataset, HDF5Source, check_compatible

    cfg = config
    ds = Dataset(cfg.data.dataset)
    check_compatible(ds, model)
    if cfg.data.sampling:
        raise InputError("offline training uses the dataset's sampling distribution; "
                         "remove the [sampling] overrides")
    sampler = sampler_from_spec(model, ds.sampling)
    n_train = ds.n - cfg.data.val_size
    if n_train < cfg.data.batch_size:
        raise InputError(f"dataset has {ds.n} rows: not enough for val_size="
                         f"{cfg.data.val_size} plus one batch")
    subspace = offline_subspace(ds, n_train, config, user_basis)
    if init is not None:
        init.check_basis(subspace)
    k = None if subspace is None else subspace.k
    basis_for_signals = (None if ds.storage == "coefficients" or subspace is None
                         else subspace.basis)
    source = HDF5Source(ds, 0, n_train, clean_batch_size(cfg), k=k, basis=basis_for_signals,
                        block_rows=cfg.data.block_rows,
                        blocks_in_memory=cfg.data.blocks_in_memory, seed=cfg.seed,
                        rank=dist.rank, world=dist.world, device=device)
    val_clean = ds.read(n_train, ds.n, k, basis_for_signals) if dist.is_main else None
    stats_clean = ds.read(0, min(n_train, cfg.subspace.n_fit), k, basis_for_signals)
    return sampler, subspace, source, val_clean, stats_clean, ds


def offline_subspace(ds: Any, n_train: int, config: TrainConfig,
                     user_basis: torch.Tensor | None) -> Subspace | None:
    """The input subspace for a dataset: the user's basis it was made in (which must be the
    one given), a truncation of the coefficients it stores, or an SVD of its first rows."""
    s = config.subspace
    stored_user = ds.subspace is not None and ds.subspace.source == "user"
    if user_basis is not None or stored_user:
        given = None if user_basis is None else basis_hash(user_basis)
        stored = None if not stored_user else basis_hash(ds.subspace.basis)
        if given != stored:
            have = f"coefficients in basis {stored}" if stored else "no user basis"
            want = f"basis {given}" if given else "no basis (give --basis)"
            raise InputError(f"dataset {ds.path} holds {have}, training was asked for "
                             f"{want}: dataset and training need the same --basis")
        return ds.subspace
    if ds.storage == "coefficients":
        if not s.enabled:
            raise InputError("this dataset stores subspace coefficients; subspace.enabled "
                             "= false needs a dataset made with --storage signals")
        stored = ds.subspace
        k = s.k or min(choose_k(stored.singular_values, s.energy), stored.k)
        if k > stored.k:
            raise InputError(f"subspace.k={k} exceeds the dataset's k={stored.k}")
        return stored.truncate(k)
    if not s.enabled:
        return None
    fit = ds.read(0, min(n_train, s.n_fit))
    return fit_subspace(fit.coefficients.to(torch.complex128), k=s.k or None, energy=s.energy)


def subspace_report(model: SignalModel, data: TrainingData, config: TrainConfig,
                    is_main: bool) -> dict:
    """The input compression: k, energy kept, the basis record and (main process, if
    ``subspace.n_check``) the CRB inflation it costs, per parameter."""
    s = data.subspace
    if s is None:
        return {"k": None, "energy": 1.0, "crb_inflation": None}
    report: dict[str, Any] = {"k": s.k, "energy": s.energy, "n_timepoints": model.n_timepoints,
                              "crb_inflation": None, "basis": basis_record(s.basis),
                              "source": s.source}
    if config.subspace.n_check and is_main:
        theta = data.sampler.sample(config.subspace.n_check,
                                    derived_generator(config.seed, "crb-check"))
        report["crb_inflation"] = crb_inflation(model, theta, s.basis)
        report["crb_inflation_definition"] = ("median over the training distribution of "
                                              "CRB(compressed) / CRB(full), per parameter")
    return report


def crb_over_prior(model: SignalModel, val: NoisyBatch) -> dict[str, float]:
    """Per parameter, median over the validation set of CRB / Var(training prior).

    Near or above ~0.1 the training range itself says about as much as the data: a network
    can then score MSE/CRB < 1 only by shrinking towards the prior (being biased) — the
    bound holds for unbiased estimators."""
    out = {}
    for j, p in enumerate(model.parameters):
        var = val.theta[:, j].double().var()
        c = val.crb[:, j].double()
        c = c[torch.isfinite(c)]
        out[p] = float((c / var).median()) if c.numel() else float("inf")
    return out


__all__ = ["TrainingData", "prepare_data", "clean_batch_size", "offline_subspace", "subspace_report",
           "crb_over_prior"]
