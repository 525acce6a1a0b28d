"""What a training run has done so far, as plain data: the trainer fills a :class:`RunRecord`
epoch by epoch, :mod:`crbnet.learning.run_files` writes the run directory from it and a
figure of the curves (``crbnet.reporting.training``) is drawn from it. Neither reads the
trainer itself."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from crbnet.learning.training_config import TrainConfig
from crbnet.physics.models.base import SignalModel


@dataclass
class RunRecord:
    """The record of one training run.

    Attributes:
        model: the signal model trained for (sequence and fixed parameters included).
        config: the training configuration.
        device: where the network trains ("cpu", "cuda:0", ...).
        world_size: processes training together (1 without torchrun).
        init: the checkpoint fine-tuned from (``--init``), or None.
        subspace: what the subspace fit reported (rank, energy kept, CRB inflation).
        network_parameters: trainable weights of the network.
        val_crb_over_prior_variance: per parameter, median CRB of the validation set over the
            variance of the training prior (None off the main process).
        val_singular_samples: validation samples with a non-finite CRB.
        metrics: one row of metrics.csv per epoch done (earlier invocations included).
        stopped_by: "epochs" or "time" (``max_minutes`` reached).
        setup_seconds: set-up time of this invocation, s.
        elapsed_seconds: training time so far, earlier invocations included, s.
    """

    model: SignalModel
    config: TrainConfig
    device: str
    world_size: int = 1
    init: str | None = None
    subspace: dict = field(default_factory=dict)
    network_parameters: int = 0
    val_crb_over_prior_variance: dict[str, float] | None = None
    val_singular_samples: int = 0
    metrics: list[dict] = field(default_factory=list)
    stopped_by: str = "epochs"
    setup_seconds: float = 0.0
    elapsed_seconds: float = 0.0

    @property
    def parameters(self) -> tuple[str, ...]:
        return tuple(self.model.parameters)


@dataclass
class TrainingState:
    """What a checkpoint needs besides the record: the network, the optimizer, the schedule,
    this process's data generator, and what inference needs (sampling, basis)."""

    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Any
    generator: torch.Generator
    sampling: dict
    basis: torch.Tensor | None


__all__ = ["RunRecord", "TrainingState"]
