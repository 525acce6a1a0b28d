"""The run directory of a training: what it holds, how it is written, and resuming from it.

RUN_DIR holds ``checkpoint.pt`` (weights, model, sampling, basis, config, metrics and the state
needed to resume: Adam, schedule step, epoch, each process's generator states), ``metrics.csv``
(one row per epoch), ``summary.json`` and — when the caller draws one — ``loss.png``. All are
rewritten after every epoch, each atomically (temporary file, then rename); loss.png at most
every 30 s and at the end. What is written comes from a
:class:`~crbnet.learning.run_record.RunRecord`, never from the trainer itself.
RUN_DIR appears with the first complete set of files or not at all.
"""

from __future__ import annotations

import csv
import io as _io
import math
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from crbnet import files as cio
from crbnet.errors import InputError
from crbnet.learning.checkpoint import NORMALIZATION, basis_to_real, model_to_dict, read, save
from crbnet.learning.distributed import DistInfo, gather
from crbnet.learning.run_record import RunRecord, TrainingState
from crbnet.learning.training_config import TrainConfig
from crbnet.physics.models.base import SignalModel
from crbnet.stats.noise import SNR_DEFINITION

FILES = ("checkpoint.pt", "metrics.csv", "summary.json", "loss.png")
PLOT_INTERVAL_S = 30.0


class RunFiles:
    """Writes and reads one run directory; only the main process writes.

    Args:
        run_dir: the directory.
        is_main: whether this process writes (rank 0).
        say: where one-line messages go.
    """

    def __init__(self, run_dir: str | Path, is_main: bool = True,
                 say: Callable[[str], None] = lambda text: None) -> None:
        self.run_dir = Path(run_dir)
        self.is_main = is_main
        self.say = say
        self.checkpoint = self.run_dir / "checkpoint.pt"
        self._last_plot = -math.inf

    def check_start(self, resume: bool) -> None:
        """Refuse to overwrite an earlier run unless resuming, and a folder that cannot be
        written (a file there, no permission) before any work starts."""
        if not self.is_main:
            return
        if self.checkpoint.exists() and not resume:
            raise InputError(f"{self.checkpoint} exists; use --resume to continue it or choose "
                             "a new --out directory")
        cio.check_output_folder(self.run_dir)

    def load_resume(self, config: TrainConfig, model: SignalModel, world: int) -> dict | None:
        """The checkpoint to resume from (None: none there, start from scratch); refuses one
        written with another configuration, model or process count."""
        if self.is_main:
            # A run killed while writing leaves a temporary file beside the intact one.
            for tmp in cio.remove_stale_temporaries(self.run_dir):
                self.say(f"removed {tmp.name}, left by the interrupted run")
        if not self.checkpoint.exists():
            self.say(f"no checkpoint in {self.run_dir}: starting from scratch")
            return None
        payload = read(self.checkpoint)
        _check_same_config(payload["training"]["config"], config.to_dict())
        if payload["model"] != model_to_dict(model):
            raise InputError("--resume: the model (sequence, fixed parameters) differs from the "
                             "checkpoint's")
        if payload["resume"] is None or payload["resume"]["world_size"] != world:
            raise InputError(f"--resume: the run used {payload['resume']['world_size']} "
                             f"process(es); resume it with the same number")
        return payload

    def write(self, payload: Mapping[str, Any], summary: Mapping[str, Any],
              metrics: list[dict], final: bool,
              plot: Callable[[Path], None] | None = None) -> None:
        """Write the epoch's files (main process only). If a write fails (disk full, ...), the
        files and folders it would have created are removed again; files of an earlier epoch
        stay (each is replaced atomically, so they are complete). ``plot(path)`` draws
        loss.png (None: no figure)."""
        if not self.is_main:
            return
        fresh = [self.run_dir / n for n in FILES if not (self.run_dir / n).exists()]
        created = cio.make_folders(self.run_dir)
        try:
            save(self.checkpoint, payload)
            self._write_metrics_csv(metrics)
            cio.write_json(self.run_dir / "summary.json", summary)
            now = time.perf_counter()
            if plot is not None and (final or now - self._last_plot > PLOT_INTERVAL_S):
                plot(self.run_dir / "loss.png")
                self._last_plot = now
        except BaseException:
            for path in fresh:
                path.unlink(missing_ok=True)
            cio.remove_created_folders(created)
            raise

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        if self.is_main:
            cio.write_json(self.run_dir / "summary.json", summary)

    def _write_metrics_csv(self, metrics: list[dict]) -> None:
        if not metrics:
            return
        buf = _io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(metrics[0]))
        writer.writeheader()
        writer.writerows(metrics)
        cio.write_text(self.run_dir / "metrics.csv", buf.getvalue())


def checkpoint_payload(record: RunRecord, state: TrainingState, epoch: int,
                       summary: Mapping[str, Any], dist: DistInfo) -> dict:
    """checkpoint.pt: what inference needs (model, sampling, basis, normalization, network),
    the training record, and the state that resumes the run. Call it on every process: it
    gathers each process's data-generator state.

    Training draws every random number from its own generators, never from torch's global
    one, so the global state is neither saved nor restored (a resume leaves the caller's
    global RNG alone)."""
    net = state.net

    def gathered(rng_state: torch.Tensor) -> list[torch.Tensor]:
        return [torch.as_tensor(s) for s in gather(rng_state.clone(), dist)]

    return {
        "model": model_to_dict(record.model),
        "sampling": state.sampling,
        "basis": basis_to_real(state.basis),
        "subspace": record.subspace,
        "normalization": dict(NORMALIZATION),
        "network": {"description": net.describe(),
                    "state_dict": {k: v.detach().cpu().clone()
                                   for k, v in net.state_dict().items()}},
        "training": {"config": record.config.to_dict(), "metrics": list(record.metrics),
                     "summary": summary},
        "resume": {"epoch": epoch, "optimizer": state.optimizer.state_dict(),
                   "scheduler": state.schedule.state_dict(),
                   "rng": {"data": gathered(state.generator.get_state())},
                   "world_size": dist.world, "elapsed_s": record.elapsed_seconds},
    }


def run_summary(record: RunRecord, epoch: int) -> dict:
    """summary.json after ``epoch`` epochs."""
    model, cfg, metrics = record.model, record.config, record.metrics
    params = list(model.parameters)
    last = metrics[-1] if metrics else {}
    train_time = sum(m["epoch_seconds"] for m in metrics)
    samples = sum(m["samples"] for m in metrics)
    return {
        "model": model.name,
        "parameters": params,
        "fixed": dict(model.fixed),
        "loss": cfg.loss.name,
        "snr": cfg.data.snr,
        "snr_definition": SNR_DEFINITION,
        "mode": cfg.data.mode,
        "epochs": epoch,
        "epochs_planned": cfg.optim.epochs,
        "stopped_by": record.stopped_by,
        "val_crb_loss": {p: last.get(f"val_crb_loss_{p}") for p in params},
        "val_crb_loss_mean": last.get("val_crb_loss_mean"),
        "val_definition": "mean over the fixed validation set of (estimate - truth)^2 / CRB, "
                          "CRB of the full data at each sample's noise level",
        "val_size": cfg.data.val_size,
        "val_crb_over_prior_variance": record.val_crb_over_prior_variance,
        "val_singular_samples": record.val_singular_samples,
        "best_val_crb_loss_mean": min((m["val_crb_loss_mean"] for m in metrics), default=None),
        "wall_time_s": record.elapsed_seconds,
        "train_time_s": train_time,
        "samples": samples,
        "samples_per_s": samples / train_time if train_time > 0 else None,
        "setup_time_s": record.setup_seconds,
        "subspace": record.subspace,
        "network_parameters": record.network_parameters,
        "world_size": record.world_size,
        "device": record.device,
        "config": cfg.to_dict(),
        "init": record.init,
    }


def _check_same_config(stored: Mapping[str, Any], mine: Mapping[str, Any]) -> None:
    if stored == mine:
        return
    diffs = [f"{s}.{k}" for s in mine if isinstance(mine[s], dict)
             for k in mine[s] if stored.get(s, {}).get(k) != mine[s][k]]
    if stored.get("seed") != mine.get("seed"):
        diffs.append("seed")
    raise InputError(f"--resume: the configuration differs from the checkpoint's "
                     f"({', '.join(diffs) or 'structure'}); give the same options")


__all__ = ["RunFiles", "FILES", "checkpoint_payload", "run_summary"]
