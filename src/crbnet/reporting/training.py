"""``crbnet train``: the figure ``loss.png`` of a run's training curves, drawn from its record."""

from __future__ import annotations

from pathlib import Path

from crbnet.errors import InputError
from crbnet.learning import losses
from crbnet.learning.run_record import RunRecord
from crbnet.plots.training import plot_training_curves


def draw_loss_curves(record: RunRecord, path: str | Path) -> None:
    """Training loss and validation MSE/CRB per parameter, per epoch (pass it to
    :class:`~crbnet.learning.trainer.Trainer` as ``loss_figure``)."""
    cfg = record.config
    try:   # a loss from a file or plugin is found the way training found it
        crb_units = losses.get(cfg.loss.name).crb_units
    except InputError:
        crb_units = False
    plot_training_curves(record.metrics, list(record.parameters), path,
                         loss_name=cfg.loss.name, crb_units=crb_units,
                         title=f"{record.model.name}, {cfg.loss.name} loss, SNR {cfg.data.snr}")


__all__ = ["draw_loss_curves"]
