"""A training loss of one's own: the mean relative absolute error (docs/models.md).

    L = mean_{i,p} |θ̂_ip − θ_ip| / max(|θ_ip|, floor)

Relative errors weigh every parameter alike whatever its unit; the absolute value makes the
loss less sensitive to a few large errors than a squared one. ``floor`` (an option of the loss,
in the trainer's scaled units: θ over the width of its training range) keeps the ratio finite
where a parameter's true value is zero.

Use it from the command line without installing anything:

    crbnet train --model t2_decay --loss examples/relative_l1_loss.py:relative_l1 \\
        --loss-option floor=0.01 --snr 50 --out runs/relative_l1
"""

from __future__ import annotations

import torch

from crbnet.learning.losses import Loss, LossInputs, LossOption


def relative_l1_value(inputs: LossInputs) -> torch.Tensor:
    """``mean |estimate − truth| / max(|truth|, floor)`` over every entry (scalar)."""
    floor = float(inputs.options["floor"])
    scale = inputs.target.abs().clamp_min(floor)
    return ((inputs.estimate - inputs.target).abs() / scale).mean()


relative_l1 = Loss(
    name="relative_l1",
    compute=relative_l1_value,
    description="mean of |estimate - truth| / max(|truth|, floor)",
    options=(LossOption("floor", float, 1e-6,
                        "smallest |truth| a relative error divides by (scaled units)"),),
)
