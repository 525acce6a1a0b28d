"""Training curves: training loss and validation MSE/CRB per parameter, per epoch."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from crbnet.learning import losses
from crbnet.plots import save_figure, subplots


def plot_training_curves(metrics: Sequence[Mapping[str, float]], parameters: Sequence[str],
                         path: str | Path, loss_name: str = "crb", title: str = "",
                         crb_units: bool | None = None) -> None:
    """Two log-scale panels: (left) training loss; (right) validation MSE/CRB per parameter and
    their mean, with the ideal value 1 (an efficient unbiased estimator) as a dashed line.

    ``metrics`` are the rows of metrics.csv (``epoch``, ``train_loss``, ``val_crb_loss_mean``,
    ``val_crb_loss_<param>``). ``crb_units``: whether the training loss is in CRB units (then
    the validation mean and the ideal 1 share its panel); None: looked up by ``loss_name`` in
    the loss registry.
    """
    from matplotlib.ticker import MaxNLocator

    if crb_units is None:
        crb_units = loss_name in losses.REGISTRY and losses.REGISTRY[loss_name].crb_units
    epochs = [m["epoch"] for m in metrics]
    fig, (ax_train, ax_val) = subplots(1, 2, figsize=(11, 4.2))
    ax_train.plot(epochs, [m["train_loss"] for m in metrics], "k-o", ms=3, label="training loss")
    if crb_units:
        ax_train.plot(epochs, [m["val_crb_loss_mean"] for m in metrics], "C3-s", ms=3,
                      label="validation MSE/CRB (mean)")
        ax_train.axhline(1.0, color="gray", ls="--", lw=1, label="ideal = 1")
        ax_train.set_ylabel("loss (CRB units)")
    else:
        ax_train.set_ylabel(f"{loss_name} loss (scaled units)")
    ax_train.set_yscale("log")
    ax_train.set_xlabel("epoch")
    ax_train.set_title(f"training ({loss_name} loss)")
    ax_train.legend(fontsize=8)
    for ax in (ax_train, ax_val):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))    # epochs are whole
    ax_train.grid(True, which="both", alpha=0.3)

    for i, p in enumerate(parameters):
        ax_val.plot(epochs, [m[f"val_crb_loss_{p}"] for m in metrics], f"C{i % 10}-", lw=1.2,
                    label=p)
    if len(parameters) > 1:
        ax_val.plot(epochs, [m["val_crb_loss_mean"] for m in metrics], "k-", lw=2.2,
                    label="mean")
    ax_val.axhline(1.0, color="gray", ls="--", lw=1, label="ideal = 1")
    ax_val.set_yscale("log")
    ax_val.set_xlabel("epoch")
    ax_val.set_ylabel("validation MSE / CRB")
    ax_val.set_title("validation, fixed noise (CRB at each sample's SNR)")
    ax_val.legend(fontsize=8, ncol=2)
    ax_val.grid(True, which="both", alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


__all__ = ["plot_training_curves"]
