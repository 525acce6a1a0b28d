"""The training objective: a registered loss (:mod:`crbnet.learning.losses`) evaluated in scaled units.

Losses are computed on θ/scale and CRB/scale², with scale the width of each parameter's training
range (SI): CRB ratios are unchanged and float32 stays well conditioned. The MSE weights
(1/SI², default 1/width²) are converted to the same units. A loss that measures each noiseless
sample R times (``repeated``, the bias-reduced loss) gets R = ``loss.realizations``.
"""

from __future__ import annotations

import torch

from crbnet.learning import losses
from crbnet.learning.batches import NoisyBatch
from crbnet.learning.training_config import LossConfig
from crbnet.physics.models.base import SignalModel
from crbnet.stats.sampling import ParameterSampler


class TrainingObjective:
    """``objective(net, batch) -> scalar loss`` for one run.

    Args:
        config: the ``[loss]`` section.
        model: the model (parameter names and order).
        sampler: the training distribution (its ranges give the scales).
        device: where the network computes.
    """

    def __init__(self, config: LossConfig, model: SignalModel, sampler: ParameterSampler,
                 device: torch.device) -> None:
        self.config = config
        self.loss = losses.get(config.name)
        self.options = self.loss.option_values(config.options)
        self.device = device
        lo = torch.tensor(sampler.low, dtype=torch.float64)
        hi = torch.tensor(sampler.high, dtype=torch.float64)
        self.scale = (hi - lo).to(device)
        params = model.parameters
        weights = torch.tensor(losses.mse_weights(params, dict(zip(params, self.scale.tolist())),
                                                  config.mse_weights),
                               dtype=torch.float64, device=device)
        self.weights = (weights * self.scale ** 2).to(torch.float32)   # in scaled units

    @property
    def repeats(self) -> int:
        """Noise draws per noiseless sample: R for a loss that measures each sample R times."""
        return self.config.realizations if self.loss.repeated else 1

    def __call__(self, net: torch.nn.Module, batch: NoisyBatch) -> torch.Tensor:
        scale = self.scale
        est = net(batch.signals.to(self.device)) / scale.to(torch.float32)
        target = (batch.theta.to(self.device) / scale).to(torch.float32)
        crb = batch.crb.to(self.device) / scale ** 2
        return self.loss.compute(losses.LossInputs(est, target, crb, self.weights,
                                                   K=self.repeats, lam=self.config.lam,
                                                   delta=self.config.delta,
                                                   options=self.options))


__all__ = ["TrainingObjective"]
