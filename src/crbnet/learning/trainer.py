"""The training loop of a CRB-informed network.

One epoch = ``batches_per_epoch`` batches online, one pass over the training rows offline.
After every epoch a fixed validation set (fixed θ, M0 and noise) is evaluated in CRB units per
parameter — ``mean (θ̂−θ)²/CRB`` — whatever the training loss, and the run files are rewritten
(:mod:`crbnet.learning.run_files`).

Reproducibility and ``--resume``: every random piece has its own seeded stream
(:func:`crbnet.stats.sampling.derived_generator`): network initialization, subspace, validation set,
online pool blocks, and one data generator per process whose state is saved each epoch with the
weights, Adam state, schedule step and epoch. A resumed run therefore continues bit-for-bit
like an uninterrupted one (same device, thread count and process count).

The pieces: configuration in :mod:`~crbnet.learning.training_config`, data in
:mod:`~crbnet.learning.training_data`, schedule in :mod:`~crbnet.learning.schedule`, processes
in :mod:`~crbnet.learning.distributed`, ``--init`` in :mod:`~crbnet.learning.fine_tune`.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch

from crbnet.errors import ComputationError, InputError
from crbnet.learning import losses
from crbnet.learning.batches import NoisyBatch, make_noisy
from crbnet.learning.distributed import (
    DistInfo,
    barrier,
    broadcast_flag,
    gather,
    init_distributed,
    leave,
    state_fingerprint,
    wrap_for_training,
)
from crbnet.learning.fine_tune import InitCheckpoint
from crbnet.learning.nets import ParameterNet, count_parameters, output_ranges
from crbnet.learning.objective import TrainingObjective
from crbnet.learning.run_files import RunFiles, checkpoint_payload, run_summary
from crbnet.learning.run_record import RunRecord, TrainingState
from crbnet.learning.schedule import WarmupCosine
from crbnet.learning.training_config import TrainConfig
from crbnet.learning.training_data import TrainingData, prepare_data, subspace_report
from crbnet.physics.models import _numba
from crbnet.physics.models.base import SignalModel
from crbnet.progress import ProgressFactory, silent
from crbnet.stats.sampling import derived_generator

VALIDATION_CHUNK = 4096
_log = logging.getLogger(__name__)


class Trainer:
    """Trains a :class:`~crbnet.learning.nets.ParameterNet` for ``model`` and writes RUN_DIR.

    Args:
        model: signal model (sequence and fixed parameters included).
        config: :class:`~crbnet.learning.training_config.TrainConfig`.
        run_dir: output directory (checkpoint.pt, metrics.csv, summary.json; loss.png when
            ``loss_figure`` is given).
        device: torch device for the network (and online simulation).
        max_minutes: stop at the first epoch end after this many minutes of this invocation.
        resume: continue from RUN_DIR/checkpoint.pt (the config must be the same).
        init: start from the weights of this trained checkpoint (file or run directory) instead
            of a random initialization — fine-tuning, e.g. a bias-reduced network from a
            CRB-loss one (:mod:`crbnet.learning.fine_tune` says what must match). Its basis
            replaces the subspace fit. The optimizer and schedule start afresh.
        progress: one bar per epoch (:mod:`crbnet.progress`; None: none).
        log: receives each progress line (set-up, one per epoch, resume notes); None: they go
            to the ``crbnet.learning.trainer`` logger at INFO level.
        loss_figure: draws the training curves from the run's record into the given path
            (``crbnet.reporting.training.draw_loss_curves``); None: no loss.png.
        basis: a user's basis U [T, K]: the network reads coefficients in it and trains against
            their CRBs.
    """

    def __init__(self, model: SignalModel, config: TrainConfig, run_dir: str | Path,
                 device: torch.device | str = "cpu", max_minutes: float | None = None,
                 resume: bool = False, progress: ProgressFactory | None = None,
                 log: Callable[[str], None] | None = None, basis: torch.Tensor | None = None,
                 init: str | Path | None = None,
                 loss_figure: Callable[[RunRecord, Path], None] | None = None) -> None:
        if max_minutes is not None and not max_minutes > 0:
            raise InputError("--max-minutes must be positive")
        for name, given in (("progress", progress), ("log", log), ("loss_figure", loss_figure)):
            if given is not None and not callable(given):
                raise InputError(f"Trainer {name} must be a callable or None, got {given!r}")
        # What the caller asked for.
        self.model, self.config = model, config
        self.user_basis = None if basis is None else basis.to(torch.complex128)
        self.init = None if init is None else Path(init)
        self.run_dir = Path(run_dir)
        self.device = torch.device(device)
        self.max_minutes = max_minutes
        self.resume = resume
        self.progress = progress
        self.log = log
        self.loss_figure = loss_figure
        # Set up by fit(): processes, files, data, network and optimizer.
        self.dist = DistInfo()
        self.files = RunFiles(self.run_dir, say=self._say)
        self.fine_tune: InitCheckpoint | None = None
        self.data: TrainingData | None = None
        self.net: ParameterNet | None = None
        self.ddp_net: torch.nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.schedule: WarmupCosine | None = None
        self.generator: torch.Generator | None = None
        self.objective: TrainingObjective | None = None
        # What the run has done (restored on --resume); the run files are written from it.
        self.record = RunRecord(model, config, str(self.device),
                                init=None if init is None else str(Path(init)))
        self.first_batch_fingerprint: float | None = None
        self.elapsed_before = 0.0
        self.t_start = 0.0

    # ---- main --------------------------------------------------------------------------------
    def fit(self) -> dict:
        """Train; returns the summary (also in RUN_DIR/summary.json)."""
        self.t_start = time.perf_counter()
        # PyTorch steps follow kernel calls here: numba's OpenMP workers would spin on the
        # cores the steps need (crbnet.physics.models._numba)
        _numba.prefer_workqueue()
        resumed = self._start()
        try:
            self._build()
            start_epoch = (self._restore(resumed) if resumed is not None
                           else self._fresh_start())
            self.record.setup_seconds = time.perf_counter() - self.t_start
            if self.dist.is_main:
                self._say(setup_line(self))
            summary = self._run_epochs(start_epoch)
            if self.dist.active:
                summary = self._finish_distributed(summary)
        finally:
            leave(self.dist)
        return summary

    def _start(self) -> dict | None:
        """Join the process group, check the config and the run directory, read the checkpoint
        to resume from or the one to fine-tune. Returns the checkpoint to resume (or None).

        RUN_DIR is created by the first (atomic) write, after epoch 1: bad input found during
        set-up leaves nothing behind."""
        self.dist, self.device = init_distributed(self.device)
        self.record.device, self.record.world_size = str(self.device), self.dist.world
        self.files.is_main = self.dist.is_main
        self.config.validate()
        self.files.check_start(self.resume)
        resumed = None
        if self.resume:
            resumed = self.files.load_resume(self.config, self.model, self.dist.world)
        if self.init is not None and resumed is None:
            self.fine_tune = InitCheckpoint(self.init, self.model)
        return resumed

    def _build(self) -> None:
        """Data, network (wrapped for DDP under a process group), optimizer, schedule, and this
        process's data generator."""
        self.data = prepare_data(self.model, self.config, self.dist, self.device,
                                 self.user_basis, self.fine_tune)
        self.net, self.ddp_net = wrap_for_training(self._build_network(), self.dist, self.device,
                                                   self.config.net.norm == "batch")
        o = self.config.optim
        # foreach: one multi-tensor update per step instead of one per weight tensor — the
        # same arithmetic (bit-for-bit, tested), a fraction of the per-operation overhead.
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=o.lr,
                                          weight_decay=o.weight_decay, foreach=True)
        steps_per_epoch = self.data.source.batches_per_epoch
        self.schedule = WarmupCosine(self.optimizer, o.lr, o.lr_min,
                                     int(round(o.warmup_epochs * steps_per_epoch)),
                                     o.epochs * steps_per_epoch)
        self.generator = derived_generator(self.config.seed, "train-data", self.dist.rank)
        self.objective = TrainingObjective(self.config.loss, self.model, self.data.sampler,
                                           self.device)
        self.record.network_parameters = count_parameters(self.net)
        self.record.val_crb_over_prior_variance = self.data.prior_ratio
        self.record.val_singular_samples = self.data.val_singular

    def _build_network(self) -> ParameterNet:
        cfg, model, data = self.config, self.model, self.data
        k = data.subspace.k if data.subspace is not None else model.n_timepoints
        low, high, log = output_ranges(data.sampler.spec_dict(), model.bounds,
                                       cfg.net.output_margin)
        # torch.nn initializes from the global CPU generator: seed it inside a fork so that
        # the weights depend on the config's seed only and the caller's RNG state is untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derived_generator(cfg.seed, "init").initial_seed())
            net = ParameterNet(k, model.parameters, low, high, log, cfg.net)
        net.set_input_statistics(data.stats_inputs)
        if self.fine_tune is not None:
            self.fine_tune.load_weights(net)
        return net.to(self.device)

    def _restore(self, resumed: dict) -> int:
        """Continue a run from its checkpoint; returns the epochs already done."""
        r = resumed["resume"]
        self.net.load_state_dict(resumed["network"]["state_dict"])
        self.optimizer.load_state_dict(r["optimizer"])
        self.schedule.load_state_dict(r["scheduler"])
        # Training draws only from its own generators: torch's global RNG (which a checkpoint
        # of an earlier version also holds) is the caller's and is left alone.
        self.generator.set_state(r["rng"]["data"][self.dist.rank])
        self.record.metrics = list(resumed["training"]["metrics"])
        self.elapsed_before = float(r["elapsed_s"])
        self.record.subspace = resumed["subspace"]
        start_epoch = int(r["epoch"])
        self._say(f"resuming {self.run_dir} after epoch {start_epoch}")
        return start_epoch

    def _fresh_start(self) -> int:
        self.record.subspace = subspace_report(self.model, self.data, self.config,
                                               self.dist.is_main)
        return 0

    def _run_epochs(self, start_epoch: int) -> dict:
        """Train, validate and write the run files epoch by epoch; returns the last summary."""
        epochs = self.config.optim.epochs
        summary = run_summary(self._record_now(), start_epoch)
        epoch = start_epoch
        while epoch < epochs:
            train_loss, samples, seconds = self._train_epoch(epoch)
            epoch += 1
            stop = False
            if self.dist.is_main:
                row = self._metrics_row(epoch, train_loss, samples, seconds)
                self.record.metrics.append(row)
                self._say(epoch_line(row, self.model.parameters, epochs))
                stop = self._out_of_time() and epoch < epochs
            stop = broadcast_flag(stop, self.dist, self.device)
            if stop:
                self.record.stopped_by = "time"
            summary = self._write_files(epoch, final=stop or epoch == epochs)
            if stop:
                break
        if start_epoch == epochs:
            summary = self._write_files(epoch, final=True)
        return summary

    def _out_of_time(self) -> bool:
        return (self.max_minutes is not None
                and time.perf_counter() - self.t_start >= 60 * self.max_minutes)

    def _metrics_row(self, epoch: int, train_loss: float, samples: int, seconds: float) -> dict:
        """One row of metrics.csv: training loss, validation MSE/CRB, learning rate, speed."""
        val = self.evaluate(self.net).tolist()
        row = {"epoch": epoch, "train_loss": train_loss, "val_crb_loss_mean": sum(val) / len(val)}
        row.update({f"val_crb_loss_{p}": v for p, v in zip(self.model.parameters, val)})
        row.update({"lr": self.optimizer.param_groups[0]["lr"], "samples": samples,
                    "epoch_seconds": seconds, "samples_per_s": samples / seconds,
                    "elapsed_seconds": self.elapsed()})
        return row

    def _finish_distributed(self, summary: dict) -> dict:
        """Record what shows that the processes drew different data but ended with the same
        weights."""
        fingerprints = gather(self.first_batch_fingerprint, self.dist)
        weights = gather(state_fingerprint(self.net.state_dict()), self.dist)
        summary["distributed"] = {"world_size": self.dist.world, "backend": self.dist.backend,
                                  "first_batch_theta_sum": fingerprints,
                                  "weights_fingerprint": weights}
        self.files.write_summary(summary)
        barrier(self.dist)
        return summary

    # ---- one epoch --------------------------------------------------------------------------
    def _train_epoch(self, epoch: int) -> tuple[float, int, float]:
        """One epoch of optimizer steps; returns (mean loss, samples over all processes, s)."""
        cfg = self.config
        self.ddp_net.train()
        bars = self.progress if self.progress is not None and self.dist.is_main else silent
        with bars(total=self.data.source.batches_per_epoch,
                  desc=f"epoch {epoch + 1}/{cfg.optim.epochs}", unit="batch") as bar:
            total, count, samples, seconds = self._epoch_batches(epoch, bar)
        return total / max(count, 1), samples * self.dist.world, seconds

    def _epoch_batches(self, epoch: int, bar: Any) -> tuple[float, int, int, float]:
        """The optimizer steps of one epoch; returns (loss sum, steps, samples, s)."""
        cfg = self.config
        total, count, samples = 0.0, 0, 0
        t0 = time.perf_counter()
        for b, clean in enumerate(self.data.source.batches(epoch, self.generator)):
            noisy = make_noisy(clean, cfg.data.snr, tuple(cfg.data.m0_magnitude),
                               self.generator, repeats=self.objective.repeats)
            if self.first_batch_fingerprint is None:
                self.first_batch_fingerprint = float(clean.theta.double().sum())
            value = self._step(noisy)
            if not math.isfinite(value):
                raise ComputationError(f"training loss became {value} at epoch {epoch + 1}, "
                                       f"batch {b + 1}; lower optim.lr or enable "
                                       "optim.grad_clip")
            total += value
            count += 1
            samples += len(noisy.theta)
            bar.update(1)
            if b % 10 == 0:
                bar.set_postfix(loss=f"{total / count:.4g}")
        return total, count, samples, time.perf_counter() - t0

    def _step(self, batch: NoisyBatch) -> float:
        """One optimizer step on ``batch``; returns the loss value."""
        loss = self.objective(self.ddp_net, batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.ddp_net.parameters(), self.config.optim.grad_clip)
        self.optimizer.step()
        self.schedule.step()
        return float(loss.detach())

    @torch.inference_mode()
    def evaluate(self, net: torch.nn.Module) -> torch.Tensor:
        """[P] validation MSE/CRB per parameter (fixed noise)."""
        net.eval()
        val = self.data.val
        out = []
        for start in range(0, len(val.theta), VALIDATION_CHUNK):
            chunk = val.signals[start:start + VALIDATION_CHUNK].to(self.device)
            out.append(net(chunk).double().cpu())
        est = torch.cat(out)
        return losses.crb_ratio_per_parameter(est, val.theta.cpu(), val.crb.cpu())

    # ---- what the run files hold -----------------------------------------------------------
    def elapsed(self) -> float:
        """Seconds of training so far, earlier invocations (before --resume) included."""
        return self.elapsed_before + (time.perf_counter() - self.t_start)

    def _record_now(self) -> RunRecord:
        """The run's record with the elapsed time brought up to date."""
        self.record.elapsed_seconds = self.elapsed()
        return self.record

    def _write_files(self, epoch: int, final: bool) -> dict:
        record = self._record_now()
        summary = run_summary(record, epoch)
        state = TrainingState(self.net, self.optimizer, self.schedule, self.generator,
                              self.data.sampler.spec_dict(),
                              None if self.data.subspace is None else self.data.subspace.basis)
        # on every process: gathers the generator states
        payload = checkpoint_payload(record, state, epoch, summary, self.dist)
        figure = self.loss_figure
        plot = None if figure is None else (lambda path: figure(record, path))
        self.files.write(payload, summary, record.metrics, final, plot)
        return summary

    def _say(self, text: str) -> None:
        if not self.dist.is_main:
            return
        if self.log is None:
            _log.info(text)
        else:
            self.log(text)


def setup_line(trainer: Trainer) -> str:
    """The line announcing a run: model, loss, SNR, data, subspace, network, processes."""
    s, cfg, model = trainer.record.subspace, trainer.config, trainer.model
    src = (f"offline {cfg.data.dataset}" if cfg.data.mode == "offline" else
           f"online, pool {cfg.data.pool_size}" if cfg.data.pool_size else "online, fresh")
    comp = "none" if s["k"] is None else f"k={s['k']} of {model.n_timepoints}"
    if s.get("crb_inflation"):
        comp += " (CRB ×" + ", ".join(f"{p} {v:.4f}" for p, v in
                                     s["crb_inflation"].items()) + ")"
    return (f"crbnet train: {model.name} [{', '.join(model.parameters)}], "
            f"loss {cfg.loss.name}, SNR {cfg.data.snr} (|M0|/sigma), data {src}, "
            f"subspace {comp}, network {count_parameters(trainer.net)} weights, "
            f"{trainer.dist.world} process(es), setup {trainer.record.setup_seconds:.1f} s")


def epoch_line(row: dict, parameters: tuple[str, ...], epochs: int) -> str:
    """The line after an epoch: losses, validation MSE/CRB per parameter, time, speed."""
    per = "  ".join(f"{p} {row[f'val_crb_loss_{p}']:.3g}" for p in parameters)
    return (f"epoch {row['epoch']:>3}/{epochs}  train {row['train_loss']:.4g}"
            f"  val MSE/CRB mean {row['val_crb_loss_mean']:.4g} ({per})  "
            f"{row['epoch_seconds']:.1f} s, {row['samples_per_s']:.0f} samples/s")


def train(model: SignalModel, config: TrainConfig, run_dir: str | Path, **kwargs: Any) -> dict:
    """Convenience wrapper: ``Trainer(model, config, run_dir, **kwargs).fit()``."""
    return Trainer(model, config, run_dir, **kwargs).fit()


__all__ = ["Trainer", "train", "setup_line", "epoch_line"]
